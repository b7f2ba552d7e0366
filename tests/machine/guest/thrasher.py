"""Another user's job that wants all the memory: it touches every page of
MIB in a loop, for ever.

    python3 thrasher.py MIB

Prints "ready" once every page has been touched once, so the scenario can
start the console user's program under pressure. Stop it with a signal.
"""

import mmap
import sys

PAGE_BYTES = mmap.PAGESIZE


def main():
    size_bytes = int(sys.argv[1]) << 20
    view = memoryview(mmap.mmap(-1, size_bytes))
    pages = size_bytes // PAGE_BYTES
    value = 1
    while True:
        view[::PAGE_BYTES] = bytes([value]) * pages   # writes one byte of every page
        if value == 1:
            print("ready", flush=True)
        value = value % 255 + 1


if __name__ == "__main__":
    main()
