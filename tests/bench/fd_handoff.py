"""Hand-off with --fd: connect -> the answer and the memfd received, beside a bare SCM_RIGHTS round trip.

A Python client (holdingpen.pen.client, as gatekeeper uses it) borrows a 64 MiB
chunk as a descriptor, closes it and its connection, and the daemon reserves
a new chunk in the background. The baseline is a tiny C server, started in
the same run, that reads the same request line and answers with the same
reply and a descriptor (SCM_RIGHTS), then closes: the least any server can
do. The same client code asks both, one after the other in each round, so
both meet the same background (the daemon re-reserving, the client having
just freed a chunk).

The daemon can lend no faster than it reserves (about 40 chunks of 64 MiB a
second here), so rounds are paced at 1.1 times the time it takes to make a
chunk again, measured first, with a pool of 8 to absorb jitter; a borrow that finds the pool empty is
counted, and slows the pace by a tenth. Each borrow costs the machine a
64 MiB fallocate and a 64 MiB free, 35 to 60 ms on two cores, so the
default of 2,000 rounds takes under two minutes, and `fd_handoff.py 10000`
about eight.
Goal: median under 1 ms.
"""

import os
import subprocess
import sys
import tempfile
import time

from benchlib import MiB, Daemon, Setup, compile_c, median, memory_config, percentile, report

sys.path.insert(0, str(__import__("benchlib").REPO))
from holdingpen.pen import client
from holdingpen.pen import protocol  # noqa: E402

BORROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000
CHUNK_BYTES = 64 * MiB
COUNT = 8

# Answers every connection with one reply line and a descriptor, after reading one request line.
SERVER_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    const char *reply = argv[2];
    int fd = memfd_create("bench", MFD_CLOEXEC);
    int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
    if (fd < 0 || ftruncate(fd, 4096) != 0 || listener < 0
        || bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listener, 128) != 0) {
        perror("server");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        int conn = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (conn < 0)
            continue;
        char line[4096];
        size_t got = 0;
        while (got < sizeof line) {
            ssize_t n = read(conn, line + got, sizeof line - got);
            if (n <= 0)
                break;
            got += n;
            if (memchr(line, '\n', got))
                break;
        }
        char control[CMSG_SPACE(sizeof(int))] = {0};
        struct iovec iov = {.iov_base = (void *)reply, .iov_len = strlen(reply)};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1,
                             .msg_control = control, .msg_controllen = sizeof control};
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
        sendmsg(conn, &msg, MSG_NOSIGNAL);
        close(conn);
    }
}
"""


def borrow_once(path):
    """(seconds from connect to the reply and its descriptor, reply, descriptors); all closed."""
    start = time.perf_counter()
    sock = client.connect(path)
    reply, fds = client.ask(sock, protocol.Request(protocol.BORROW, "memory", True))
    took = time.perf_counter() - start
    sizes = [os.fstat(fd).st_size for fd in fds]
    for fd in fds:
        os.close(fd)          # for the daemon's chunk, this frees it (outside the timing)
    sock.close()
    return took, reply, sizes


def refill_s(d):
    """Seconds the daemon takes to make one chunk again while we free the one we borrowed:
    borrow the whole pool, then time it back to full."""
    start = time.monotonic()
    for _ in range(COUNT):
        _, answer, _ = borrow_once(d.socket)
        assert answer["ok"], answer
    return (d.wait_full(interval_s=0.001) - start) / COUNT


def main():
    reply = protocol.encode_reply({"ok": True, "action": protocol.BORROW, "kind": "memory",
                                   "size": CHUNK_BYTES, "fd": True}).decode()
    bare, lent = [], []
    outcomes = {"borrowed": 0, "pool-empty": 0, "other error": 0, "no descriptor": 0}
    with Setup() as s, tempfile.TemporaryDirectory(prefix="holdingpen-bench-c.") as cdir:
        exe = compile_c(SERVER_C, cdir, "fdserver")
        bare_path = os.path.join(cdir, "bare.sock")
        server = subprocess.Popen([exe, bare_path, reply], stdout=subprocess.PIPE)
        try:
            server.stdout.readline()
            with Daemon(s, memory_config("64M", COUNT), name="fd-handoff") as d:
                d.wait_full()
                fds_before = d.fd_count()
                for _ in range(20):
                    borrow_once(bare_path)
                pace_s = first_pace_s = 1.1 * refill_s(d)
                started = time.monotonic()
                next_at = started
                for i in range(BORROWS):
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    next_at = max(next_at + pace_s, time.monotonic())
                    took, _, sizes = borrow_once(bare_path)
                    bare.append(took)
                    took, answer, sizes = borrow_once(d.socket)
                    if answer["ok"] and sizes == [CHUNK_BYTES]:
                        outcomes["borrowed"] += 1
                        lent.append(took)
                    elif answer["ok"]:
                        outcomes["no descriptor"] += 1
                    elif answer.get("error") == protocol.POOL_EMPTY:
                        outcomes["pool-empty"] += 1
                        pace_s *= 1.1
                    else:
                        outcomes["other error"] += 1
                elapsed = time.monotonic() - started
                d.wait_full()
                fds_after = d.fd_count()
        finally:
            server.kill()
            server.wait()
    print(f"hand-off with --fd, 64 MiB chunks, a pool of {COUNT}: {BORROWS} rounds in {elapsed:.0f} s, "
          f"paced at {first_pace_s * 1000:.1f} ms a borrow, {pace_s * 1000:.1f} ms at the end")
    print(f"  outcomes: {', '.join(f'{n} {what}' for what, n in outcomes.items())}; "
          f"the daemon holds {fds_before} descriptors before, {fds_after} after")
    report("bare SCM_RIGHTS (C server)", [x * 1000 for x in bare])
    report("holdingpen borrow --fd", [x * 1000 for x in lent])
    print(f"  the daemon's median hand-off is {median(lent) * 1000:.3f} ms (goal: under 1 ms), "
          f"{median(lent) / median(bare):.1f}x the bare round trip's; p99 "
          f"{percentile(lent, 99) / percentile(bare, 99):.1f}x")


if __name__ == "__main__":
    main()
