"""Fill rate: how fast the daemon reserves a 4 GiB memory pool, beside the kernel doing it from C.

The daemon is started on a pool of 4 x 1 GiB, then of 16 x 256 MiB, and
timed two ways: from `holdingpen serve` starting to "ready" in its status
(Python's start-up included), and from its own log (stamped here as each
line arrives): the "started" line to the last "reserved" one, the fill
itself. The baseline is the fastest kernel primitive giving the same
guarantee (every page allocated, owned by a descriptor), timed in C in the
same run: memfd_create + fallocate of the same chunks. First touch of an
anonymous mapping and MAP_POPULATE are shown for context; they allocate the
same memory but give no descriptor to hand over (1 GiB of each, as first
touch is slow). Runs are interleaved, in a shuffled order each round: on a
virtual machine whose balloon reports free pages to the host, how fast
memory is allocated depends on what was freed just before, and both sides
should meet that alike.
Goal: the daemon fills at least 0.8 of memfd + fallocate's rate.
"""

import random
import subprocess
import sys
import tempfile

from benchlib import (GiB, MiB, Daemon, Setup, compile_c, free_page_reporting, median,
                      memory_config, percentile)

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 7
TOTAL_BYTES = 4 * GiB
C_NAMES = {"memfd": "C memfd+fallocate", "touch": "C first touch, anonymous",
           "populate": "C MAP_POPULATE, anonymous"}
CONTEXT = ("C first touch, anonymous 1 x 1G", "C MAP_POPULATE, anonymous 1 x 1G")
LAYOUTS = [(1 * GiB, "1G", 4), (256 * MiB, "256M", 16)]   # chunk bytes, as configured, count

# One measurement per run, printed as seconds; the memory is freed by exit, untimed.
PRIMITIVES_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: primitives memfd|touch|populate CHUNK_BYTES COUNT\n");
        return 64;
    }
    const char *how = argv[1];
    long chunk_bytes = atol(argv[2]);
    int count = atoi(argv[3]);
    long page_bytes = sysconf(_SC_PAGESIZE);
    double start = now_s();
    for (int i = 0; i < count; i++) {
        if (strcmp(how, "memfd") == 0) {
            int fd = memfd_create("bench", MFD_CLOEXEC);
            if (fd < 0 || fallocate(fd, 0, 0, chunk_bytes) != 0) {
                perror("memfd_create + fallocate");
                return 1;
            }
        } else {
            int flags = MAP_PRIVATE | MAP_ANONYMOUS;
            if (strcmp(how, "populate") == 0)
                flags |= MAP_POPULATE;
            char *p = mmap(NULL, chunk_bytes, PROT_READ | PROT_WRITE, flags, -1, 0);
            if (p == MAP_FAILED) {
                perror("mmap");
                return 1;
            }
            if (strcmp(how, "touch") == 0)
                for (long at = 0; at < chunk_bytes; at += page_bytes)
                    p[at] = 1;
        }
    }
    printf("%.6f\n", now_s() - start);
    return 0;
}
"""


def run_c(exe, how, chunk_bytes, count):
    out = subprocess.run([exe, how, str(chunk_bytes), str(count)], check=True,
                         capture_output=True, text=True).stdout
    return float(out)


def run_daemon(s, size, count):
    """(serve -> ready in status, log: started -> last reserved, [per-chunk s]) in seconds."""
    with Daemon(s, memory_config(size, count), stamp_log=True, name=f"fill-{size}") as d:
        ready_at = d.wait_ready(interval_s=0.002)
    started = [t for t, text in d.lines if ": started: " in text]
    reserved = [t for t, text in d.lines if ": reserved: " in text]
    if len(started) != 1 or len(reserved) != count:
        raise RuntimeError(f"unexpected log: {d.logged()}")
    steps = [b - a for a, b in zip(started + reserved, reserved)]
    return ready_at - d.started_at, reserved[-1] - started[0], steps


def line(name, seconds, total_bytes=TOTAL_BYTES):
    def gibps(x):
        return total_bytes / GiB / x
    print(f"  {name:<40} median {median(seconds) * 1000:7.0f} ms {gibps(median(seconds)):5.2f} GiB/s"
          f"   p99 {percentile(seconds, 99) * 1000:7.0f} ms {gibps(percentile(seconds, 99)):5.2f} GiB/s"
          f"   (n={len(seconds)})")


def main():
    times = {}
    steps = {}
    trials = [(how, chunk_bytes, size, count) for how in ("daemon", "memfd")
              for chunk_bytes, size, count in LAYOUTS]
    trials += [("touch", GiB, "1G", 1), ("populate", GiB, "1G", 1)]
    order = random.Random(1)
    with Setup() as s, tempfile.TemporaryDirectory(prefix="holdingpen-bench-c.") as cdir:
        exe = compile_c(PRIMITIVES_C, cdir, "primitives")
        run_c(exe, "memfd", 64 * MiB, 1)                 # warm up
        for _ in range(RUNS):
            order.shuffle(trials)
            for how, chunk_bytes, size, count in trials:
                if how == "daemon":
                    wall, fill, chunk_steps = run_daemon(s, size, count)
                    times.setdefault(f"daemon {count} x {size}: serve -> ready", []).append(wall)
                    times.setdefault(f"daemon {count} x {size}: log, fill", []).append(fill)
                    steps.setdefault(size, []).extend(chunk_steps)
                else:
                    times.setdefault(f"{C_NAMES[how]} {count} x {size}", []).append(
                        run_c(exe, how, chunk_bytes, count))
    print(f"fill rate: reserving 4 GiB of memory, {RUNS} interleaved runs each "
          f"(times, and the rate they give):")
    for name in sorted(times, key=lambda n: (n in CONTEXT, n)):
        line(name, times[name], GiB if name in CONTEXT else TOTAL_BYTES)
    print("  the daemon, per chunk (log: the previous line -> this \"reserved\"):")
    for chunk_bytes, size, count in LAYOUTS:
        xs = steps[size]
        print(f"    {size:<5} median {median(xs) * 1000:7.1f} ms ({chunk_bytes / GiB / median(xs):5.2f} GiB/s)"
              f"   p99 {percentile(xs, 99) * 1000:7.1f} ms   (n={len(xs)})")
    for chunk_bytes, size, count in LAYOUTS:
        base = median(times[f"C memfd+fallocate {count} x {size}"])
        fill = median(times[f"daemon {count} x {size}: log, fill"])
        wall = median(times[f"daemon {count} x {size}: serve -> ready"])
        print(f"  {count} x {size}: the daemon fills at {base / fill:.2f} of memfd+fallocate's rate "
              f"(from its log), {base / wall:.2f} counting its start-up (goal: at least 0.8)")
    if free_page_reporting():
        print("  note: this machine's virtio balloon reports free pages to its host, so the rates "
              "vary from run to run with the host")


if __name__ == "__main__":
    main()
