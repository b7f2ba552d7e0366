"""Release in the default mode: connect -> the chunk counted in MemAvailable again, 1 GiB chunks.

Without --fd the daemon closes its memfd, freeing the memory, before it
answers; so by the time the reply arrives MemAvailable should be up by the
chunk's size. The client (holdingpen.pen.client) connects, borrows, reads
MemAvailable at once and then polls it until it is up by half the chunk,
keeping its loan open meanwhile (closing it would start the
re-reservation). Half, not all: the kernel keeps freed pages in per-CPU
lists (up to a few hundred MiB per CPU where it tunes their size), which
MemFree and MemAvailable do not count, so a 1 GiB free shows as less;
the C baseline shows how much. The baseline is the kernel's own time to free the same
size, timed in C in the same run: close() of a filled 1 GiB memfd, and from
that close to MemAvailable up. Runs alternate; the pool is full (and the
daemon idle) before each.
Goal: at most 1.2 times the kernel's close -> MemAvailable.
"""

import subprocess
import sys
import tempfile
import time

from benchlib import (GiB, Daemon, MemAvailable, Setup, compile_c, free_page_reporting, median,
                      memory_config, percentile, report)

sys.path.insert(0, str(__import__("benchlib").REPO))
from holdingpen.pen import client
from holdingpen.pen import protocol  # noqa: E402

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 40
CHUNK_BYTES = GiB
FREED_FRACTION = 0.5      # "counted again": MemAvailable up by this much of the chunk
POLL_TIMEOUT_S = 10.0

# Fill a memfd (untimed), then time its close, and from it to MemAvailable up by most of it.
FREE_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static long mem_available_bytes(int meminfo)
{
    char text[8192];
    ssize_t n = pread(meminfo, text, sizeof text - 1, 0);
    text[n > 0 ? n : 0] = '\0';
    char *at = strstr(text, "MemAvailable:");
    return at ? atol(at + 13) * 1024 : -1;
}

int main(int argc, char **argv)
{
    long size_bytes = atol(argv[1]);
    double fraction = atof(argv[2]), timeout_s = atof(argv[3]);
    int meminfo = open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
    int fd = memfd_create("bench", MFD_CLOEXEC);
    if (meminfo < 0 || fd < 0 || fallocate(fd, 0, 0, size_bytes) != 0) {
        perror("setup");
        return 1;
    }
    long before = mem_available_bytes(meminfo);
    double start = now_s();
    close(fd);
    double closed = now_s();
    long at_close = mem_available_bytes(meminfo);
    while (mem_available_bytes(meminfo) - before < fraction * size_bytes) {
        if (now_s() - start > timeout_s) {
            fprintf(stderr, "MemAvailable did not rise\n");
            return 1;
        }
    }
    printf("%.6f %.6f %ld\n", closed - start, now_s() - start, at_close - before);
    return 0;
}
"""


def release_once(d, available):
    """(connect -> reply s, connect -> MemAvailable up s, MemAvailable rise at the reply, bytes)."""
    before = available()
    start = time.perf_counter()
    sock = client.connect(d.socket)
    try:
        reply, fds = client.ask(sock, protocol.Request(protocol.BORROW, "memory", False))
        answered = time.perf_counter()
        rise_at_reply = available() - before
        if not reply["ok"] or fds:
            raise RuntimeError(f"unexpected reply: {reply}, {len(fds)} descriptors")
        while available() - before < FREED_FRACTION * CHUNK_BYTES:
            if time.perf_counter() - start > POLL_TIMEOUT_S:
                raise RuntimeError("MemAvailable did not rise after the reply")
        freed = time.perf_counter()
    finally:
        sock.close()          # the loan ends: the daemon reserves again
    return answered - start, freed - start, rise_at_reply


def main():
    replied, freed, rises = [], [], []
    c_close, c_freed, c_rises = [], [], []
    available = MemAvailable()
    with Setup() as s, tempfile.TemporaryDirectory(prefix="holdingpen-bench-c.") as cdir:
        exe = compile_c(FREE_C, cdir, "free")
        with Daemon(s, memory_config("1G", 2), name="release") as d:
            for _ in range(RUNS):
                d.wait_full()
                a, b, rise = release_once(d, available)
                replied.append(a)
                freed.append(b)
                rises.append(rise)
                d.wait_full()
                out = subprocess.run([exe, str(CHUNK_BYTES), str(FREED_FRACTION),
                                      str(POLL_TIMEOUT_S)], check=True, capture_output=True,
                                     text=True).stdout.split()
                c_close.append(float(out[0]))
                c_freed.append(float(out[1]))
                c_rises.append(int(out[2]))
    available.close()
    ms = lambda xs: [x * 1000 for x in xs]      # noqa: E731
    gib = lambda xs: [x / GiB for x in xs]      # noqa: E731
    print(f"release of a 1 GiB chunk in the default mode, {RUNS} alternating runs each:")
    report("C close(filled memfd)", ms(c_close))
    report("C close -> MemAvailable up", ms(c_freed))
    report("daemon: connect -> reply", ms(replied))
    report("daemon: connect -> MemAvailable up", ms(freed))
    print(f"  MemAvailable's rise when the reply arrives: median {median(gib(rises)):.3f} GiB, "
          f"least {min(gib(rises)):.3f} GiB (C, when close returns: median "
          f"{median(gib(c_rises)):.3f} GiB, least {min(gib(c_rises)):.3f} GiB); "
          f"{sum(r >= FREED_FRACTION * CHUNK_BYTES for r in rises)} of {RUNS} replies came "
          f"with the memory already free")
    print(f"  the daemon's release takes {median(freed) / median(c_freed):.2f}x the kernel's "
          f"close -> MemAvailable (goal: at most 1.2), p99 "
          f"{percentile(freed, 99) / percentile(c_freed, 99):.2f}x; "
          f"{median(freed) / median(c_close):.2f}x a bare close()")
    if free_page_reporting():
        print("  note: this machine's virtio balloon reports free pages to its host, so times "
              "vary from run to run with the host")


if __name__ == "__main__":
    main()
