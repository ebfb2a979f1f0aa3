"""The daemon's heap settings: buffers that reads allocate and free cost no new page faults."""

import subprocess
import sys

# A thread started after the setup allocates, fills and frees buffers of 1 to 8 MiB, as the
# daemon's FUSE and decode threads do; prints the page faults that cost. Runs in a fresh
# interpreter: the settings are for the whole process and only reach threads started later.
CHURN = """
import resource, sys, threading
from ngffmount.vfs.command.heap import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
faults = []
def reads():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for mib in range(1, 9):
        buf = b"\\x01" * (mib << 20)  # written through: every page touched
        del buf
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t = threading.Thread(target=reads)
t.start()
t.join()
print(faults[0])
"""


def churn_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_freed_buffers_are_reused_by_other_threads():
    # 36 MiB written in all: ~9,200 pages. glibc's defaults fault in most of them.
    assert churn_faults("default") > 4000
    assert churn_faults("tuned") < 500
