#!/usr/bin/env bash
# The test command of the README: install everything the tests use, then run them all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
exec "${PYTHON:-python3}" -m pytest -q -p no:cacheprovider "$@"
