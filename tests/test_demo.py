"""The README's first command ends in the demo: it must mount and serve a plane."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_check(tmp_path):
    script = Path(__file__).parent.parent / "scripts" / "demo.py"
    result = subprocess.run([sys.executable, str(script), "--check", "--dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{tmp_path}/mnt/s0.tif" in result.stdout
    assert "read one plane through the mount: shape (768, 1024), dtype uint16" in result.stdout
    assert f"unmounted {tmp_path}/mnt" in result.stdout
