#!/usr/bin/env bash
# Install ngffmount and what it needs on Debian/Ubuntu: `scripts/install.sh` for use,
# `scripts/install.sh --test` also for the test suite (ImageJ, Xvfb, libtiff, GDAL, libvips, HDF5 tools, moto,
# Redis and OpenSSL for the shared cache tier's tests), `scripts/install.sh --bench` also for the benchmark
# and the profile (rclone, tensorstore, obstore, py-spy, perf).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(fuse3 libfuse3-3 libfuse2)
extras=""
if [[ "${1:-}" == "--test" || "${1:-}" == "--bench" ]]; then
  packages+=(imagej xvfb x11-utils libtiff-tools gdal-bin libvips-tools hdf5-tools procps systemd pngcheck redis-server redis-tools openssl)
  extras="[test]"
fi
if [[ "${1:-}" == "--bench" ]]; then
  # scripts/benchmark.py (moto and the test servers, rclone, tensorstore, obstore) and
  # scripts/profile_scroll.py (py-spy, perf).
  packages+=(rclone linux-perf)
  extras="[test,bench]"
fi

missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
pip_flags=(-q)
# Debian's own Python refuses pip installs unless told (PEP 668); a venv or pyenv does not.
if "$python" -c 'import sys, sysconfig, os; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) and sys.prefix == sys.base_prefix else 1)'; then
  pip_flags+=(--break-system-packages)
fi
"$python" -m pip install "${pip_flags[@]}" -e ".${extras}"
