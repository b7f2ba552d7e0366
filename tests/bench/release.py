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
Goal: at most 1.2 times the kernel's close -> MemAvailable. A run where
MemAvailable does not rise within 10 s (seen on a fresh machine, on either
side) is counted and reported, not timed.
"""

import subprocess
import sys
import tempfile
import time

from benchlib import (GiB, Daemon, MemAvailable, Setup, compile_c, free_page_reporting, median,
                      memory_config, percentile, report)

sys.path.insert(0, str(__import__("benchlib").REPO))
from holdingpen.pen import client, protocol  # noqa: E402

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
            printf("%.6f timeout %ld\n", closed - start, at_close - before);
            return 0;   /* what it saw: the caller reports it */
        }
    }
    printf("%.6f %.6f %ld\n", closed - start, now_s() - start, at_close - before);
    return 0;
}
"""


def release_once(d, available):
    """(connect -> reply s, connect -> MemAvailable up s or None if it did not rise in time,
    MemAvailable's rise at the reply in bytes)."""
    before = available()
    start = time.perf_counter()
    sock = client.connect(d.socket)
    try:
        reply, fds = client.ask(sock, protocol.Request(protocol.BORROW, "memory", False))
        answered = time.perf_counter()
        rise_at_reply = available() - before
        if not reply["ok"] or fds:
            raise RuntimeError(f"unexpected reply: {reply}, {len(fds)} descriptors")
        freed = None
        while available() - before < FREED_FRACTION * CHUNK_BYTES:
            if time.perf_counter() - start > POLL_TIMEOUT_S:
                break
        else:
            freed = time.perf_counter() - start
    finally:
        sock.close()          # the loan ends: the daemon reserves again
    return answered - start, freed, rise_at_reply


def run_c(exe):
    """The C baseline once: (close s, close -> MemAvailable up s or None, rise at close bytes),
    or None with what it said if it failed."""
    done = subprocess.run([exe, str(CHUNK_BYTES), str(FREED_FRACTION), str(POLL_TIMEOUT_S)],
                          capture_output=True, text=True)
    out = done.stdout.split()
    if done.returncode != 0 or len(out) != 3:
        print(f"  the C baseline failed (exit {done.returncode}): {done.stderr.strip()}")
        return None
    return float(out[0]), None if out[1] == "timeout" else float(out[1]), int(out[2])


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
                c = run_c(exe)
                if c is not None:
                    c_close.append(c[0])
                    c_freed.append(c[1])
                    c_rises.append(c[2])
    available.close()
    summarize(replied, freed, rises, c_close, c_freed, c_rises)


def summarize(replied, freed, rises, c_close, c_freed, c_rises):
    """Print the figures; runs where MemAvailable did not rise in time are counted, not timed."""
    ms = lambda xs: [x * 1000 for x in xs if x is not None]      # noqa: E731
    gib = lambda xs: [x / GiB for x in xs]                       # noqa: E731
    print(f"release of a 1 GiB chunk in the default mode, {RUNS} alternating runs each:")
    for name, xs in (("C close(filled memfd)", c_close), ("C close -> MemAvailable up", c_freed),
                     ("daemon: connect -> reply", replied),
                     ("daemon: connect -> MemAvailable up", freed)):
        missed = sum(x is None for x in xs)
        if missed:
            print(f"  {name}: MemAvailable did not rise by {FREED_FRACTION:g} of the chunk "
                  f"within {POLL_TIMEOUT_S:g} s in {missed} of {len(xs)} runs")
        if ms(xs):
            report(name, ms(xs))
    if len(c_close) < RUNS:
        print(f"  the C baseline ran {len(c_close)} of {RUNS} times")
    if rises and c_rises:
        print(f"  MemAvailable's rise when the reply arrives: median {median(gib(rises)):.3f} GiB, "
              f"least {min(gib(rises)):.3f} GiB (C, when close returns: median "
              f"{median(gib(c_rises)):.3f} GiB, least {min(gib(c_rises)):.3f} GiB); "
              f"{sum(r >= FREED_FRACTION * CHUNK_BYTES for r in rises)} of {len(rises)} replies "
              f"came with the memory already free")
    timed, c_timed = [x for x in freed if x is not None], [x for x in c_freed if x is not None]
    if timed and c_timed and c_close:
        print(f"  the daemon's release takes {median(timed) / median(c_timed):.2f}x the kernel's "
              f"close -> MemAvailable (goal: at most 1.2), p99 "
              f"{percentile(timed, 99) / percentile(c_timed, 99):.2f}x; "
              f"{median(timed) / median(c_close):.2f}x a bare close()")
    else:
        print("  no ratio to the kernel's release: too few runs where MemAvailable rose in time")
    if free_page_reporting():
        print("  note: this machine's virtio balloon reports free pages to its host, so times "
              "vary from run to run with the host")


if __name__ == "__main__":
    main()
