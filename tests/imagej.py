"""Run ImageJ 1.x macros (Debian package `imagej`) from tests and read what they print.

ImageJ exits 0 whatever happens, so a run is judged only by its printed lines: run_macro
appends an end marker and fails when it is missing, when an error marker shows up, or
when the run times out. A macro error (and any IJ.error inside run(...)) opens a modal
dialog on the virtual display that waits forever; when `xwininfo` (x11-utils) is
installed, run_macro spots that window and fails at once instead of at the timeout.

    lines = run_macro(describe_image_macro(f"open({ij_str(path)});", [(1, 0, 0)]))
    info = parse_kv(lines)   # {"width": 1024, "nSlices": 3, "unit": "microns", ...}
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence

__all__ = [
    "IJ_JAR",
    "ij_str",
    "run_macro",
    "describe_image_macro",
    "parse_kv",
]

IJ_JAR = "/usr/share/java/ij.jar"
_DONE = "__ngffmount_macro_done__"
# What ImageJ prints instead of a dialog in -batch mode: IJ.error() from open() and
# friends, Java exceptions, and the out-of-memory notice.
_ERROR_MARKERS = (
    "Exception",
    "Error:",
    "File not found",
    "not in a supported format",
    "not supported",
    "Macro or script not found",
    "Unsupported",
    "Out of memory",  # open() of a stack larger than the heap loads only part of it
)


def ij_str(s: str) -> str:
    """A Python string as an ImageJ macro string literal (paths may hold quotes or backslashes)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dialog_title(display_file: str) -> str | None:
    """Title of a window ImageJ opened on our display: in -batch mode that is always a
    modal dialog (macro error, IJ.error inside run(...)) that nobody will close."""
    try:
        display, xauth = open(display_file).read().split()
        tree = subprocess.run(["xwininfo", "-display", display, "-root", "-children"],
                              capture_output=True, text=True, timeout=10,
                              env={**os.environ, "XAUTHORITY": xauth}).stdout
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    for m in re.finditer(r'^\s*0x\w+ "([^"]*)": \("ij-ImageJ"', tree, re.M):
        if m.group(1) != "ij-ImageJ":  # AWT's own 1x1 helper window
            return m.group(1)
    return None


def run_macro(macro: str, arg: str = "", timeout: float = 120, heap: str = "2g") -> list[str]:
    """Run `macro` in a fresh ImageJ under Xvfb; return the lines it print()ed.

    Do not end the macro with exit: the appended end marker must run. getArgument()
    returns `arg`. Safe to call concurrently (each call has its own display and JVM).
    """
    with tempfile.TemporaryDirectory(prefix="ngffmount-ij-") as tmp:
        # -batch resolves a relative macro path against the ImageJ folder, not the cwd.
        path = os.path.join(tmp, "macro.ijm")
        with open(path, "w", encoding="utf-8") as f:
            f.write(macro + f'\nprint("{_DONE}");\n')
        display_file = os.path.join(tmp, "display")
        # -a picks a free display number; the sh step records it for the dialog watchdog.
        # -Xmx caps each JVM (default: 1/4 of RAM); open() needs a heap larger than the
        # whole stack, virtual stacks do not. UTF-8 so "µm" survives any locale.
        cmd = ["timeout", "-k", "5", str(timeout), "xvfb-run", "-a",
               "sh", "-c", 'echo "$DISPLAY $XAUTHORITY" > "$0" && exec "$@"', display_file,
               "java", f"-Xmx{heap}", "-Dsun.stdout.encoding=UTF-8", "-Dsun.stderr.encoding=UTF-8",
               "-jar", IJ_JAR, "-batch", path] + ([arg] if arg else [])
        # TMPDIR: xvfb-run leaves its mktemp dir behind when killed; keep it in ours.
        env = {**os.environ, "TMPDIR": tmp}
        watch = shutil.which("xwininfo") is not None
        dialog = None
        with open(os.path.join(tmp, "out"), "w+b") as out, \
                open(os.path.join(tmp, "err"), "w+b") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    env=env, start_new_session=True)
            deadline = time.monotonic() + timeout + 15
            while proc.poll() is None:
                if watch and (dialog := _dialog_title(display_file)):
                    proc.terminate()  # timeout(1) passes it on to xvfb-run, Xvfb and java
                if time.monotonic() > deadline or dialog:
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                    break
                time.sleep(0.3)
            rc = proc.returncode
            out.seek(0)
            err.seek(0)
            out_s = out.read().decode("utf-8", "replace")
            err_s = err.read().decode("utf-8", "replace")
    lines = out_s.splitlines()
    report = f"\n--- macro ---\n{macro}\n--- stdout ---\n{out_s}\n--- stderr ---\n{err_s}"
    if dialog:
        raise AssertionError(f"ImageJ opened a dialog {dialog!r} and would wait forever "
                             f"(a macro error, or an error inside run(...)){report}")
    if rc in (124, 137, -signal.SIGKILL):
        raise AssertionError(f"ImageJ timed out after {timeout} s (a macro error dialog?){report}")
    bad = [ln for ln in lines + err_s.splitlines() if any(m in ln for m in _ERROR_MARKERS)]
    if bad or _DONE not in lines:
        raise AssertionError(f"ImageJ reported an error or aborted the macro: {bad}{report}")
    return [ln for ln in lines if ln != _DONE]


def describe_image_macro(open_statement: str,
                         positions: Iterable[Sequence[int]] = ()) -> str:
    """A macro that runs `open_statement` and prints key=value facts about the image.

    `open_statement` is macro code, e.g. f"open({ij_str(p)});",
    f'run("TIFF Virtual Stack...", "open=[" + {ij_str(p)} + "]");' or
    f'File.openSequence({ij_str(d)}, "virtual");'. For each (slice, x, y) in
    `positions` it prints `pixel_<slice>_<x>_<y>` (raw getPixel) and `value_...`
    (calibrated, e.g. for signed 16-bit); a slice past nSlices prints `out_of_range`
    rather than raising a macro error, which would hang ImageJ.
    """
    lines = [
        "setBatchMode(true);",
        open_statement,
        # An opener that fails without IJ.error leaves no image: stop before any image
        # call raises a (hanging) macro error; the missing end marker fails run_macro.
        'if (nImages == 0) { print("no image open"); exit; }',
        "getDimensions(w, h, c, z, t);",
        "getPixelSize(unit, pw, ph, pd);",
        'print("title=" + getTitle());',
        'print("width=" + getWidth());',
        'print("height=" + getHeight());',
        'print("nSlices=" + nSlices);',
        'print("channels=" + c);',
        'print("slices=" + z);',
        'print("frames=" + t);',
        'print("bitDepth=" + bitDepth());',
        'print("virtual=" + is("Virtual Stack"));',
        'print("hyperstack=" + is("hyperstack"));',
        'print("unit=" + unit);',
        # d2s keeps digits that "" + x would round to 4 decimals.
        'print("pixelWidth=" + d2s(pw, 9));',
        'print("pixelHeight=" + d2s(ph, 9));',
        'print("pixelDepth=" + d2s(pd, 9));',
    ]
    for s, x, y in positions:
        k = f"{s}_{x}_{y}"
        lines.append(
            f'if ({s} <= nSlices) {{ setSlice({s}); '
            f'print("pixel_{k}=" + d2s(getPixel({x}, {y}), 9)); '
            f'print("value_{k}=" + d2s(getValue({x}, {y}), 9)); }} '
            f'else print("pixel_{k}=out_of_range");')
    return "\n".join(lines) + "\n"


def _num(v: str):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def parse_kv(lines: Iterable[str]) -> dict:
    """key=value lines to a dict; numbers become int or float ("2.500000000" -> 2.5)."""
    out = {}
    for ln in lines:
        key, sep, val = ln.partition("=")
        if sep:
            v = _num(val)
            out[key] = int(v) if isinstance(v, float) and v.is_integer() and "e" not in val else v
    return out
