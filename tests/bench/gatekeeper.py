"""gatekeeper's overhead over running CMD directly, and 1,000 clients at once.

Overhead: `gatekeeper --strict true` (and with --fd) beside `true` and a
bare Python start (`python3 -I -c pass`), runs interleaved so that a noisy
neighbour slows every command alike; a pool of 4 x 1 MiB, so that each
borrow finds a chunk. Goal: at most 5 ms over a bare Python start (it was
12 ms while gatekeeper imported socket and json; perflock's goal is 10 ms).

Many clients: a pool of 50 x 1 MiB and 1,000 clients. First 1,000 raw
protocol clients from this process, all connected and asking before any
reply is read (all connect, then all ask); each that borrows holds its loan
1 s, then closes. Three
rounds, to see whether the daemon's memory settles or grows. Then 1,000
`gatekeeper --strict -q sleep 1` processes started as fast as we can. Every
client must get an answer (borrowed, or pool-empty); the daemon's descriptor
count must return to what it was, and its RSS should.
"""

import selectors
import socket
import subprocess
import sys
import time

from benchlib import PYTHON, Daemon, Setup, median, memory_config, report, wall_ms

sys.path.insert(0, str(__import__("benchlib").REPO))
from holdingpen.pen import protocol  # noqa: E402

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 200
CLIENTS = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
HOLD_S = 1.0
RAW_ROUNDS = 3


def overhead(s):
    with Daemon(s, memory_config("1M", 4), name="overhead") as d:
        d.wait_full()
        gatekeeper = [s.cmd("gatekeeper"), "--socket", d.socket, "--strict"]
        commands = {
            "true": ["true"],
            "python3 -I -c pass": [PYTHON, "-I", "-c", "pass"],
            "gatekeeper --strict true": [*gatekeeper, "true"],
            "gatekeeper --strict --fd true": [*gatekeeper, "--fd", "true"],
        }
        times = {name: [] for name in commands}
        for argv in commands.values():            # warm the page cache
            wall_ms(argv, 3, s.env)
        for _ in range(RUNS):
            for name, argv in commands.items():
                times[name] += wall_ms(argv, 1, s.env)
    print(f"gatekeeper overhead, {RUNS} interleaved runs each:")
    for name, xs in times.items():
        report(name, xs)
    base = median(times["python3 -I -c pass"])
    for name in ("gatekeeper --strict true", "gatekeeper --strict --fd true"):
        print(f"  {name} adds {median(times[name]) - base:.2f} ms to a bare Python start "
              f"(goal: at most 5 ms), {median(times[name]) - median(times['true']):.2f} ms to `true`")


def outcome_of(reply_line):
    if not reply_line:
        return "no answer"
    reply = protocol.decode_reply(reply_line.rstrip(b"\n"))
    if reply["ok"]:
        return "borrowed"
    return reply.get("error", "?")


def raw_round(d):
    """1,000 protocol clients at once: all connect, then all ask.

    Returns (outcomes, s until the daemon accepted all, s from the first request
    to the last answer, s to all returned, the daemon's descriptors with every
    client connected)."""
    request = protocol.encode_request(protocol.Request(protocol.BORROW, "memory"))
    sel = selectors.DefaultSelector()
    socks = []
    base_fds = d.fd_count(settle_s=0)
    start = time.monotonic()
    for _ in range(CLIENTS):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.connect(d.socket)
        socks.append(sock)
    while (peak_fds := d.fd_count(settle_s=0)) < base_fds + CLIENTS:
        time.sleep(0.001)
    accepted = time.monotonic() - start
    start = time.monotonic()
    for sock in socks:
        sock.sendall(request)
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, [b""])
    outcomes, holding = {}, []
    waiting = CLIENTS
    while waiting:
        for key, _ in sel.select(30):
            data = key.fileobj.recv(65536)
            key.data[0] += data
            if data and not key.data[0].endswith(b"\n"):
                continue
            what = outcome_of(key.data[0])
            outcomes[what] = outcomes.get(what, 0) + 1
            waiting -= 1
            sel.unregister(key.fileobj)
            if what == "borrowed":
                holding.append((time.monotonic() + HOLD_S, key.fileobj))
            else:
                key.fileobj.close()
        for at, sock in [h for h in holding if h[0] <= time.monotonic()]:
            sock.close()
            holding.remove((at, sock))
    answered = time.monotonic() - start
    for at, sock in sorted(holding, key=lambda h: h[0]):
        time.sleep(max(0.0, at - time.monotonic()))
        sock.close()
    d.wait_full(interval_s=0.01)
    returned = time.monotonic() - start
    for sock in socks:
        sock.close()
    return outcomes, accepted, answered, returned, peak_fds


def gatekeeper_round(s, d):
    """1,000 gatekeeper processes: (outcomes, s until all exited, s to the pool full again)."""
    argv = [s.cmd("gatekeeper"), "--socket", d.socket, "--strict", "-q", "sleep", str(HOLD_S)]
    start = time.monotonic()
    procs = [subprocess.Popen(argv, env=s.env, stderr=subprocess.PIPE) for _ in range(CLIENTS)]
    outcomes = {}
    for p in procs:
        _, err = p.communicate()
        if p.returncode == 0:
            what = "borrowed"
        elif f"({protocol.POOL_EMPTY})" in err.decode():
            what = protocol.POOL_EMPTY
        else:
            what = f"exit {p.returncode}: {err.decode().strip()[:80]}"
        outcomes[what] = outcomes.get(what, 0) + 1
    exited = time.monotonic() - start
    d.wait_full(interval_s=0.01)
    return outcomes, exited, time.monotonic() - start


def many_clients(s):
    with Daemon(s, memory_config("1M", 50), name="many") as d:
        d.wait_full()
        fds_before, rss_before = d.fd_count(), d.rss_kib()
        print(f"{CLIENTS} clients, a pool of 50 x 1 MiB, borrowers hold {HOLD_S:.0f} s; "
              f"the daemon before: {fds_before} descriptors, RSS {rss_before} KiB")
        for i in range(RAW_ROUNDS):
            outcomes, accepted, answered, returned, peak_fds = raw_round(d)
            print(f"  raw clients, round {i + 1}: all accepted in {accepted:.3f} s; "
                  f"{sum(outcomes.values())} answered "
                  f"({', '.join(f'{n} {w}' for w, n in sorted(outcomes.items()))}) "
                  f"in {answered:.3f} s, pool full again at {returned:.3f} s; "
                  f"descriptors {peak_fds} with all connected, {d.fd_count()} after; "
                  f"RSS {d.rss_kib()} KiB after")
        outcomes, exited, returned = gatekeeper_round(s, d)
        print(f"  gatekeeper --strict -q sleep 1: {sum(outcomes.values())} ran "
              f"({', '.join(f'{n} {w}' for w, n in sorted(outcomes.items()))}), "
              f"all exited in {exited:.1f} s, pool full again at {returned:.1f} s; "
              f"descriptors {d.fd_count()} after, RSS {d.rss_kib()} KiB after")
        fds_after, rss_after = d.fd_count(), d.rss_kib()
        errors = [line for line in d.logged() if ": lent: " not in line
                  and ": returned: " not in line and ": reserved: " not in line]
    print(f"  the daemon after: {fds_after} descriptors ({fds_after - fds_before:+d}), "
          f"RSS {rss_after} KiB ({rss_after - rss_before:+d} KiB)")
    print(f"  its log besides lent/returned/reserved: {errors}")


def main():
    with Setup() as s:
        overhead(s)
        many_clients(s)


if __name__ == "__main__":
    main()
