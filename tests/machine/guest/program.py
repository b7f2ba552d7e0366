"""The console user's big program, as the machine tier runs it in the VM.

    python3 program.py FILL_MIB WAIT_S

Allocates FILL_MIB and fills it (from the memfd in $HOLDINGPEN_MEMORY_FD
when gatekeeper --fd passed one, else anonymous memory), says so, waits
WAIT_S, then reads every page again. Prints two JSON lines on stdout:
{"filled": ...} at once, and the measurements at the end.

Guest side: Debian's python3 only, no holdingpen import (it must work
with or without holdingpen installed).
"""

import json
import mmap
import os
import sys
import time

PAGE_BYTES = mmap.PAGESIZE


def status_kib(path, key):
    """A "Key:   123 kB" field of a /proc status-like file, in KiB (0 if absent)."""
    with open(path) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def allocate(size_bytes):
    """The memory to fill: the loan's memfd if there is one, else anonymous."""
    fd = os.environ.get("HOLDINGPEN_MEMORY_FD")
    if fd is None:
        return mmap.mmap(-1, size_bytes), False
    return mmap.mmap(int(fd), size_bytes, mmap.MAP_SHARED), True


def main():
    fill_mib, wait_s = int(sys.argv[1]), float(sys.argv[2])
    size_bytes = fill_mib << 20
    pages = size_bytes // PAGE_BYTES
    started = time.monotonic()
    memory, from_fd = allocate(size_bytes)
    view = memoryview(memory)
    block = b"\x5a" * (1 << 20)
    for offset in range(0, size_bytes, len(block)):
        view[offset:offset + len(block)] = block
    fill_s = time.monotonic() - started
    with open("/proc/self/cgroup") as f:
        cgroup = f.read().strip()       # where a protected loan's units are
    print(json.dumps({"filled": True, "fill_s": fill_s, "pid": os.getpid(), "cgroup": cgroup}),
          flush=True)

    time.sleep(wait_s)
    # Measured before the re-read faults anything back in. VmSwap counts only
    # private pages; a memfd's swapped pages show in smaps_rollup's Swap.
    vm_swap_kib = status_kib("/proc/self/status", "VmSwap")
    swap_kib = status_kib("/proc/self/smaps_rollup", "Swap")

    started = time.monotonic()
    intact_pages = bytes(view[::PAGE_BYTES]).count(0x5a)   # one byte of every page
    reread_s = time.monotonic() - started
    print(json.dumps({"fill_s": fill_s, "reread_s": reread_s, "vm_swap_kib": vm_swap_kib,
                      "swap_kib": swap_kib, "from_fd": from_fd, "cgroup": cgroup,
                      "pages": pages, "intact_pages": intact_pages}), flush=True)


if __name__ == "__main__":
    main()
