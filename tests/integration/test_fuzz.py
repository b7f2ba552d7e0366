"""The daemon's live socket under generated requests: nothing crashes, stalls, leaks or goes astray.

Thousands of connections, from a pool of concurrent clients, each sending one
generated case: random bytes, JSON junk, valid requests mutated byte by byte,
NULs, huge lines, lines split over several writes, several lines at once,
descriptors attached (SCM_RIGHTS), partial lines then a hang-up or a
half-close, clients that say nothing. Every case is made from the seed and its
own number, so a failing one is made again by number, whatever the threads
did; set HOLDINGPEN_FUZZ_SEED to try other cases.

What each client must get is computed from what it sent, with the pure
decoder as the oracle (tests/unit/test_protocol_fuzz.py holds that one to the
protocol): the error line with the decoder's code, a success, pool-empty, or
a clean close where it sent no complete line. Throughout, a monitor asks for
the status and must be answered within STATUS_BOUND_S, with consistent
accounting. At the end the daemon holds the descriptors it held before, and
its pools are full and exact.
"""

import array
import collections
import itertools
import json
import os
import random
import socket
import threading
import time

from holdingpen.pen import protocol
from holdingpen.pen.protocol import MAX_LINE_BYTES, ProtocolError, decode_request

from helpers import read_reply, wait_until
from pen import MiB, Pen, connect, write_config

SEED = int(os.environ.get("HOLDINGPEN_FUZZ_SEED", "20261121"))
CONNECTIONS = 30_000
WORKERS = 24
STATUS_BOUND_S = 2.0         # the monitor's status request must be answered within this
TIME_LIMIT_S = 180.0         # the whole flood, on a slow machine; about 20 s on 2 cores
REPLY_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 1.0      # the daemon's, so clients that say nothing are told so soon
SIZE = 8 * MiB
MEMORY_COUNT, DISK_COUNT = 4, 2

KNOWN_CODES = {protocol.BAD_REQUEST, protocol.TOO_LONG, protocol.UNKNOWN_KIND,
               protocol.POOL_EMPTY, protocol.NOT_AUTHORIZED,
               protocol.TIMEOUT, protocol.BUSY, protocol.LIMITED}

READ, SHUT, CLOSE = "read", "half-close", "hang-up"    # how a client ends
OK_STATUS, OK_BORROW, CLOSED, HUNG_UP = "ok status", "ok borrow", "clean close", "hung up"

INVALID_UTF8 = [b"\xff", b"\xfe", b"\x80", b"\xc0\x80", b"\xc3(", b"\xed\xa0\x80",
                b"\xe2\x82", b"\xf0\x9f\x98", b"\xef\xbb\xbf"]
TOKENS = [b'"', b"{", b"}", b"[", b"]", b",", b":", b"true", b"false", b"null", b"1e999", b"NaN",
          b"-0", b'"action"', b'"kind"', b'"fd"', b'"borrow"', b'"status"', b"\\u0000",
          b"\\ud800", b"\\", b" ", b"\r", b"\t", b"\n"]


class Case:
    """One client: what it sends (each piece a write of its own), with how many
    descriptors attached to the first, how it ends, and how long it keeps a loan."""

    __slots__ = ("n", "what", "pieces", "fds", "ending", "hold_s")

    def __init__(self, n, what, pieces, fds=0, ending=READ, hold_s=0.0):
        self.n, self.what, self.pieces, self.fds = n, what, pieces, fds
        self.ending, self.hold_s = ending, hold_s

    def __repr__(self):
        sent = b"".join(self.pieces)
        shown = sent if len(sent) <= 120 else sent[:100] + b"...(%d bytes)" % len(sent)
        return (f"case {self.n} ({self.what}, {len(self.pieces)} writes, {self.fds} fds, "
                f"{self.ending}): {shown!r}")


def valid_lines(disk_dir):
    return [b'{"action":"status"}', b'{"action":"borrow"}', b'{"action":"borrow","fd":true}',
            b'{"action": "borrow", "kind": "memory", "fd": false}',
            b'{"action":"borrow","kind":"disk"}',
            json.dumps({"action": "borrow", "kind": f"disk:{disk_dir}/.", "fd": True}).encode(),
            b'{"action":"borrow","kind":"gpu"}']


def junk(rng, depth=0):
    """A random JSON-able value."""
    pick = rng.randrange(9 if depth < 3 else 6)
    if pick == 0:
        return None
    if pick == 1:
        return rng.random() < 0.5
    if pick == 2:
        return rng.choice([0, 1, -1, 2**64, 10**400 if rng.random() < 0.1 else 7, 1.5])
    if pick == 3:
        return rng.choice([float("nan"), float("inf"), -0.0])
    if pick in (4, 5):
        return rng.choice(["", "memory", "disk", "status", "borrow", "\0", "\ud800", "é", "x" * 50,
                           "disk:/", "disk:/../..", "mem\0ory", "\n"])
    if pick == 6:
        return [junk(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["action", "kind", "fd", "uid", "pid", "", "\0", "x"]): junk(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def dumps(rng, value):
    text = json.dumps(value, ensure_ascii=rng.random() < 0.5, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")      # a lone surrogate, raw: not UTF-8


def structured(rng, disk_dir):
    """A request with one field wrong, added or missing."""
    fields = {"action": rng.choice(["borrow", "status"])}
    if rng.random() < 0.7:
        fields["kind"] = rng.choice(["memory", "disk", f"disk:{disk_dir}", f"disk:{disk_dir}/",
                                     "disk:/nowhere"])
    if rng.random() < 0.5:
        fields["fd"] = rng.random() < 0.5
    edit = rng.randrange(4)
    key = rng.choice(["action", "kind", "fd", "uid", "pid", "user", "Action"])
    if edit == 0:
        fields[key] = junk(rng)
    elif edit == 1:
        fields.pop(key, None)
    elif edit == 2:
        fields = {k: fields[k] for k in rng.sample(list(fields), len(fields))}   # reordered
    return dumps(rng, fields)


def mutate(rng, line):
    line = bytearray(line)
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(line))
        op = rng.randrange(7)
        if op == 0 and line:
            line[min(at, len(line) - 1)] = rng.randrange(256)
        elif op == 1:
            del line[at:at + rng.randint(1, 8)]
        elif op == 2:
            line[at:at] = b"\0" * rng.randint(1, 3)
        elif op == 3:
            line[at:at] = rng.choice(INVALID_UTF8)
        elif op == 4:
            line[at:at] = rng.choice(TOKENS)
        elif op == 5:
            line[at:at] = line[:at][-rng.randint(1, 16):]
        elif line:
            i = min(at, len(line) - 1)
            line[i:i + 1] = bytes(line[i:i + 1]).swapcase()
    return bytes(line)


def split(rng, data):
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 4)))) \
        if len(data) > 1 else []
    return [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)])]


def make_case(n, disk_dir):
    """Case number n: the same for a given SEED, whichever thread makes it."""
    rng = random.Random(f"{SEED}:{n}")
    valid = valid_lines(disk_dir)
    some_request = lambda: rng.choice([rng.choice(valid), mutate(rng, rng.choice(valid)),
                                       structured(rng, disk_dir)])
    hold_s = rng.choice([0.0, 0.0, 0.002, 0.02])
    roll = rng.random()
    if roll < 0.14:
        return Case(n, "valid", [rng.choice(valid) + b"\n"],
                    ending=CLOSE if rng.random() < 0.1 else READ, hold_s=hold_s)
    if roll < 0.34:
        return Case(n, "mutated", [mutate(rng, rng.choice(valid)) + b"\n"], hold_s=hold_s)
    if roll < 0.44:
        return Case(n, "wrong field", [structured(rng, disk_dir) + b"\n"], hold_s=hold_s)
    if roll < 0.56:
        return Case(n, "random bytes", [rng.randbytes(rng.randint(0, 200)) + b"\n"])
    if roll < 0.64:
        return Case(n, "JSON junk", [dumps(rng, junk(rng)) + b"\n"])
    if roll < 0.68:
        line = rng.choice(valid)
        at = rng.randint(0, len(line))
        nuls = b"\0" * rng.choice([1, 1, 2, 100, 4000])
        return Case(n, "NULs", [line[:at] + nuls + line[at:] + b"\n"])
    if roll < 0.72:
        piece = rng.choice([b"x", b"[", b" ", b"\0", rng.randbytes(64), rng.choice(valid) + b" "])
        size = rng.choice([MAX_LINE_BYTES + 1, MAX_LINE_BYTES + 2, rng.randint(5000, 300_000)])
        data = (piece * (size // len(piece) + 1))[:size]
        if rng.random() < 0.5:
            data = data.replace(b"\n", b" ") + b"\n"
        if rng.random() < 0.3:      # just under the limit, then a newline: one long good line
            data = rng.choice(valid).ljust(MAX_LINE_BYTES, b" ") + b"\n"
        return Case(n, "huge", split(rng, data) if rng.random() < 0.3 else [data], hold_s=hold_s)
    if roll < 0.80:
        line = some_request()
        part = line[:rng.randint(0, max(0, len(line) - 1))].replace(b"\n", b" ")
        return Case(n, "partial, then gone", [part or b"{"], ending=rng.choice([CLOSE, SHUT]))
    if roll < 0.85:
        return Case(n, "split writes", split(rng, some_request() + b"\n"), hold_s=hold_s)
    if roll < 0.92:
        return Case(n, "descriptors", split(rng, some_request() + b"\n"), fds=rng.randint(1, 24),
                    ending=CLOSE if rng.random() < 0.2 else READ, hold_s=hold_s)
    if roll < 0.95:
        lines = b"".join(some_request() + b"\n" for _ in range(rng.randint(2, 5)))
        return Case(n, "several lines", [lines], hold_s=hold_s)
    if roll < 0.97:
        return Case(n, "talk after a borrow", [b'{"action":"borrow"}\n' + some_request() + b"\n"],
                    hold_s=hold_s)
    if roll < 0.997:
        return Case(n, "connect, hang up", [], ending=rng.choice([CLOSE, SHUT]))
    return Case(n, "silent", [b"" if rng.random() < 0.5 else b'{"action":'])


def expected(case, disk_pool):
    """The outcomes allowed for case, or None when it hangs up before it could hear."""
    if case.ending == CLOSE:
        return None
    data = b"".join(case.pieces)
    newline = data.find(b"\n")
    if newline < 0:
        if len(data) > MAX_LINE_BYTES:
            return {protocol.TOO_LONG}
        return {CLOSED} if case.ending == SHUT else {protocol.TIMEOUT}
    if newline > MAX_LINE_BYTES:
        return {protocol.TOO_LONG}
    try:
        request = decode_request(data[:newline])
    except ProtocolError as e:
        return {e.code}
    if request.action == protocol.STATUS:
        return {OK_STATUS}
    kind = request.kind
    if not (kind in ("memory", "disk", disk_pool) or
            kind.startswith("disk:") and "disk:" + os.path.normpath(kind[5:]) == disk_pool):
        return {protocol.UNKNOWN_KIND}
    # A client that half-closes after a borrow has gone, as far as a loan is concerned:
    # it may be closed while its borrow is being authorized, with no answer.
    return {OK_BORROW, protocol.POOL_EMPTY} | ({CLOSED} if case.ending == SHUT else set())


def some_descriptors(count):
    """count descriptors of several sorts, to attach to a request."""
    fds = []
    while len(fds) < count:
        r, w = os.pipe()
        a, b = socket.socketpair()
        fds += [r, w, a.detach(), b.detach(), os.memfd_create("fuzz", os.MFD_CLOEXEC),
                os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC), os.eventfd(0, os.EFD_CLOEXEC)]
    for fd in fds[count:]:
        os.close(fd)
    return fds[:count]


def play(path, case):
    """Run one client; what it got (an outcome name or error code), and the fds with it."""
    sock = connect(path)
    fds_in = []
    try:
        sock.settimeout(REPLY_TIMEOUT_S)
        try:
            for i, piece in enumerate(case.pieces):
                if i == 0 and case.fds:
                    attached = some_descriptors(case.fds)
                    try:
                        sock.sendmsg([piece], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                array.array("i", attached))])
                    finally:
                        for fd in attached:
                            os.close(fd)
                else:
                    sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass                  # the daemon stopped listening: a huge line, say; its reply waits
        if case.ending == CLOSE:
            return HUNG_UP, []
        if case.ending == SHUT:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        try:
            data = read_reply(sock, timeout_s=None, fds=fds_in)
        except ConnectionResetError:
            pass                  # after its reply, if we left bytes unread on its side
        if not data:
            return CLOSED, fds_in
        reply = json.loads(data)
        if reply.get("ok") is True:
            got = OK_STATUS if reply.get("action") == protocol.STATUS else OK_BORROW
            if got == OK_BORROW:
                want_fd = reply.get("fd") is True
                assert len(fds_in) == want_fd, f"{len(fds_in)} descriptors with {reply}"
                if want_fd:
                    assert os.fstat(fds_in[0]).st_size == SIZE
                time.sleep(case.hold_s)          # the loan lasts until we close
            return got, fds_in
        assert reply["ok"] is False and reply["error"] in KNOWN_CODES and reply["message"], reply
        assert data.count(b"\n") == 1, data
        return reply["error"], fds_in
    finally:
        for fd in fds_in:
            os.close(fd)
        sock.close()


class Monitor(threading.Thread):
    """Asks for the status over and over: how long each answer took, and what was wrong."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.latencies_s = []
        self.problems = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            start = time.monotonic()
            try:
                with connect(self.path) as s:
                    s.sendall(b'{"action":"status"}\n')
                    reply = json.loads(read_reply(s, STATUS_BOUND_S * 5))
                self.latencies_s.append(time.monotonic() - start)
                for pool in reply["pools"]:
                    lent = sum(1 for loan in reply["loans"] if loan["kind"] == pool["name"])
                    if pool["held"] + pool["lent"] + pool["reserving"] > pool["count"] or \
                            lent != pool["lent"]:
                        self.problems.append(f"accounting off: {pool}, {lent} loans listed")
            except Exception as e:            # noqa: BLE001 -- every failure is a finding
                self.problems.append(f"status failed after {time.monotonic() - start:.2f} s: {e!r}")
            time.sleep(0.02)


def vm_rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


PEN_CONFIG = {"memory_count": MEMORY_COUNT, "disk": True, "disk_count": DISK_COUNT,
              "size": f"{SIZE // MiB}M",
              "extra": f"[limits]\nrequest_timeout_s = {REQUEST_TIMEOUT_S}\n"}


def whole(pen):
    """Every pool full, nothing lent or being reserved."""
    status = pen.status()
    return not status["loans"] and all(
        p["held"] == p["count"] and p["lent"] == 0 and p["reserving"] == 0 for p in status["pools"])


def test_generated_requests_over_the_live_socket(pen, figure):
    print(f"fuzz seed {SEED} (HOLDINGPEN_FUZZ_SEED)")
    fds_before, rss_before = pen.fd_count(), vm_rss_bytes(pen.pid)
    numbers = itertools.count()
    tally = collections.Counter()          # outcome -> clients
    by_case = collections.Counter()        # what was sent -> clients
    wrong = []
    start = time.monotonic()

    def client():
        while time.monotonic() - start < TIME_LIMIT_S and len(wrong) < 20:
            n = next(numbers)
            if n >= CONNECTIONS:
                return
            case = make_case(n, pen.disk_pool.partition(":")[2])
            allowed = expected(case, pen.disk_pool)
            try:
                got, _ = play(pen.socket, case)
            except Exception as e:            # noqa: BLE001 -- every failure is a finding
                got = f"client failed: {e!r}"
            tally[got] += 1
            by_case[case.what] += 1
            if allowed is not None and got not in allowed:
                wrong.append(f"{case}: got {got}, expected one of {sorted(allowed)}")

    monitor = Monitor(pen.socket)
    monitor.start()
    workers = [threading.Thread(target=client) for _ in range(WORKERS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed_s = time.monotonic() - start
    monitor.done.set()
    monitor.join()

    assert not wrong, "\n".join(wrong)
    assert sum(tally.values()) == CONNECTIONS, f"only {sum(tally.values())} in {TIME_LIMIT_S} s"
    assert pen.proc.poll() is None, "the daemon died"
    assert not monitor.problems, monitor.problems[:10]
    slowest_s = max(monitor.latencies_s)
    assert slowest_s < STATUS_BOUND_S, f"a status request took {slowest_s:.2f} s"
    wait_until(lambda: whole(pen), "every pool to be full again with nothing lent")
    wait_until(lambda: pen.fd_count() == fds_before,
               f"the daemon's descriptors to return to {fds_before}")
    assert pen.held_memfd_bytes() == MEMORY_COUNT * SIZE
    assert "Traceback" not in pen.logged()
    rss_after = vm_rss_bytes(pen.pid)
    figure(f"seed {SEED}: {CONNECTIONS:,} connections from {WORKERS} concurrent clients in "
           f"{elapsed_s:.1f} s: " + ", ".join(f"{n:,} {what}" for what, n in tally.most_common())
           + "; sent: " + ", ".join(f"{n:,} {what}" for what, n in by_case.most_common())
           + f"; status answered {len(monitor.latencies_s):,} times throughout, slowest "
           f"{slowest_s * 1000:.0f} ms, median "
           f"{sorted(monitor.latencies_s)[len(monitor.latencies_s) // 2] * 1000:.1f} ms; "
           f"daemon fds {fds_before} before, {pen.fd_count()} after; RSS "
           f"{rss_before / MiB:.1f} MiB before, {rss_after / MiB:.1f} MiB after; pools exact")


# ---- a client's name is input too ----

# A process names itself (prctl PR_SET_NAME, 15 bytes of anything but NUL); the daemon
# reads that name from /proc/PID/comm when the client connects and again every
# COMMAND_REFRESH_S while it holds a loan.
NAMED = r"""
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"\xff\xfe-not-utf-8", 0, 0, 0)      # PR_SET_NAME
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
if len(sys.argv) > 2:
    s.sendall(sys.argv[2].encode() + b"\n")
    sys.stdout.write(s.recv(4096).decode())
sys.stdout.write("connected\n")
sys.stdout.flush()
sys.stdin.read()                  # hold on until the test closes our stdin
"""

def test_a_borrower_named_in_invalid_utf8_does_not_crash_the_daemon(bindir, shared_tmp):
    import subprocess
    import sys
    from holdingpen.pen.daemon import COMMAND_REFRESH_S
    pen = Pen(bindir, shared_tmp, write_config(shared_tmp / "pool.toml", memory_count=2,
                                               size="8M"))
    named = None
    try:
        pen.wait_full()
        named = subprocess.Popen([sys.executable, "-c", NAMED, pen.socket, '{"action":"borrow"}'],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert json.loads(named.stdout.readline())["ok"] is True
        time.sleep(COMMAND_REFRESH_S + 0.5)    # the daemon reads the borrower's name again
        assert pen.proc.poll() is None, f"the daemon died:\n{pen.logged()}"
        (loan,) = pen.status()["loans"]
        assert loan["command"].isprintable()
    finally:
        if named is not None:
            named.stdin.close()
            named.wait(10)
        pen.stop()


def test_a_client_named_in_invalid_utf8_is_seen_alive(shared_tmp):
    # Without a start time the peer counts as gone: polkit is never asked, the borrow is refused.
    import subprocess
    import sys
    from holdingpen.pen.peer import peer_of
    path = str(shared_tmp / "listen.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    listener.bind(path)
    listener.listen(1)
    named = subprocess.Popen([sys.executable, "-c", NAMED, path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert named.stdout.readline() == "connected\n"
        sock, _ = listener.accept()
        peer = peer_of(sock)
        try:
            assert (peer.pid, peer.start_time is not None, peer.alive()) == (named.pid, True, True)
            assert peer.comm.isprintable()
        finally:
            peer.close()
            sock.close()
    finally:
        named.stdin.close()
        named.wait(10)
        listener.close()
