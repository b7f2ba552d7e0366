"""Faults under real systemd: the daemon SIGKILLed at random a hundred times while
alice borrows, and a hostile environment (its socket file removed under it, its
configuration broken before a reload).

The kills run on a machine of their own (`chaos_ct`, installed as `ct` is, but
in a memory cgroup of its own: the host is shared, and its MemAvailable moves
by gigabytes with other people's jobs, so what the machine holds is read from
its cgroup). The pool is CHAOS_CONFIG, four 64 MiB memory reservations and two
on /var/tmp: every refill after a return takes a while, so kills land mid-fill
as well as mid-lend and mid-return. Throughout, three long-lived gatekeeper
loans stay out (one memory, one memory with --fd, one disk) and two
raw-protocol clients of alice's (CHURN) borrow, hold for up to 0.1 s and
close, half of them with "fd": true.

After each kill (kill -9 of MainPID), once systemd has started the daemon again
and it answers: while it fills, held + lent + reserving <= count for every pool
and every lent place is a listed loan; with the churn paused, held + lent ==
count, the loans are exactly the three long-lived ones with their uid and pid,
and systemd's store holds exactly the held chunks, the loans and "state". At
the end, with both units stopped, the machine's memory and /var/tmp's space are
back where they were before the daemon started, and nothing of the daemon's is
left in /var/tmp, /tmp or any process.

HOLDINGPEN_CHAOS_KILLS=N runs N kills instead of 100; HOLDINGPEN_CHAOS_SEED=S
replays the random delays of a run whose figure line names seed S (the
moments the kills land also depend on the machine's load).

The other tests use the session container `ct` and leave it as the installer
left it: no configuration file, no drop-in, the default pool full, the socket
there.
"""

import json
import os
import random
import re
import stat
import statistics
import time
from contextlib import contextmanager

import pytest

from holdingpen.pen import headroom

from conftest import (BORROWERS, CHECKOUT, SRC_IN_CONTAINER, USERS, install_from_readme,
                      platform_problem, remove_config)
from nspawn import MEMORY_CGROUP_ROOT, Container, sweep_stale
from daemonctl import SERVICE, SETTLE_S, SOCKET, borrowing, counts, events, journal, journal_mark, show, wait_for

DOOR = "/run/holdingpen.socket"
CONFIG_DIR = "/etc/holdingpen"
CONFIG_PATH = f"{CONFIG_DIR}/holdingpen.toml"
DEFAULT_STATUS_TEXT = "memory 1/1 held (256 MiB)"   # no config file
MIB = 1 << 20
CHUNK_BYTES = 64 * MIB
DISK = "disk:/var/tmp"
# Limits far above the churn's pace: the kills are under test here, not the limits.
CHAOS_CONFIG = """\
[memory]
size = "64M"
count = 4

[[disk]]
path = "/var/tmp"
size = "64M"
count = 2

[limits]
borrows_per_second = 1000
borrow_burst = 1000
connections_per_user = 64
"""
CHAOS_COUNTS = {"memory": 4, DISK: 2}
TWO_CHUNKS_CONFIG = '[memory]\nsize = "64M"\ncount = 2\n'
# 100 kills within StartLimitBurst=30 per 60 s would leave the service failed
# (and its store emptied) after the 30th, and RestartSec=1 would make the test
# take minutes: a test-only drop-in in /run lifts the one and shortens the other.
DROP_IN_DIR = "/run/systemd/system/holdingpen.service.d"
DROP_IN_PATH = f"{DROP_IN_DIR}/50-chaos-test.conf"
DROP_IN = "[Unit]\nStartLimitIntervalSec=0\n\n[Service]\nRestartSec=100ms\n"
KILLS = int(os.environ.get("HOLDINGPEN_CHAOS_KILLS", "100"))
KILL_DELAY_MAX_S = 0.5        # after the churn resumes, the kill comes within this
LEAK_TOLERANCE_BYTES = 32 * MIB   # half a chunk: one leaked 64 MiB chunk is over it
POLL_S = 0.02

# A raw-protocol borrower, run as alice: borrows a kind from KINDS at random
# (half with "fd": true), holds it 0-0.1 s, closes, again. Commands on stdin:
# "pause" (it answers "paused" between borrows, holding nothing), then "go" or
# "stop"; at "stop" it prints its counts as one line of JSON.
#
# A daemon SIGKILLed with a loan stored leaves it in systemd's store, so the
# borrower's connection stays open: EOF while holding is a loan the daemon
# forgot ("lost"). EOF or a reset before the reply is a borrow cut short by a
# kill ("cut"): gatekeeper says so and runs CMD without; nothing is lent.
CHURN = r"""
import json, os, random, select, socket, sys, time

kinds = sys.argv[1].split(",")
rng = random.Random(int(sys.argv[2]))
counts = {"borrowed": 0, "with_fd": 0, "refused": {}, "cut": 0, "stalled": 0,
          "lost": 0, "bad_fd": 0, "no_door": 0}
inbox = b""


def command(timeout_s):
    global inbox
    while b"\n" not in inbox:
        if not select.select([0], [], [], timeout_s)[0]:
            return None
        data = os.read(0, 256)
        if not data:
            return "stop"
        inbox += data
    line, inbox = inbox.split(b"\n", 1)
    return line.decode().strip()


def borrow_once():
    kind, want_fd = rng.choice(kinds), rng.random() < 0.5
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect("/run/holdingpen.socket")
    except OSError:
        counts["no_door"] += 1
        time.sleep(0.05)
        return
    fds = []
    try:
        s.sendall(json.dumps({"action": "borrow", "kind": kind, "fd": want_fd}).encode() + b"\n")
        s.settimeout(40)
        data = b""
        try:
            while not data.endswith(b"\n"):
                more, more_fds, _, _ = socket.recv_fds(s, 4096, 4)
                fds += more_fds
                if not more:
                    break
                data += more
        except socket.timeout:
            counts["stalled"] += 1
            return
        except ConnectionResetError:
            data = b""
        if not data.endswith(b"\n"):
            counts["cut"] += 1
            return
        reply = json.loads(data)
        if not reply["ok"]:
            counts["refused"][reply["error"]] = counts["refused"].get(reply["error"], 0) + 1
            time.sleep(0.01)
            return
        counts["borrowed"] += 1
        if want_fd:
            counts["with_fd"] += 1
            if len(fds) != 1 or os.fstat(fds[0]).st_size != reply["size"]:
                counts["bad_fd"] += 1
        if select.select([s], [], [], rng.uniform(0, 0.1))[0]:
            try:
                gone = s.recv(1) == b""
            except OSError:
                gone = True
            counts["lost"] += gone
    finally:
        for fd in fds:
            os.close(fd)
        s.close()


print("ready", flush=True)
while True:
    line = command(0)
    if line == "pause":
        print("paused", flush=True)
        line = command(None)
    if line == "stop":
        break
    borrow_once()
print(json.dumps(counts), flush=True)
"""

# Run as root in the container, one line in, one line out: "look" answers
# {"status": the daemon's status reply or null, "unit": systemctl show's
# properties}, the status first: while no daemon runs, the request waits in
# the socket's backlog, so systemd's view is not older than the answer.
# "kill PID" is kill -9 PID. One process for the whole test: a look costs a
# few milliseconds, not an nsenter and a Python start.
PROBER = r"""
import json, os, signal, socket, subprocess, sys

PROPERTIES = ["MainPID", "ActiveState", "NRestarts", "NFileDescriptorStore"]


def status():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(30)
        s.connect("/run/holdingpen.socket")
        s.sendall(b'{"action": "status"}\n')
        data = b""
        while not data.endswith(b"\n"):
            more = s.recv(65536)
            if not more:
                break
            data += more
        return json.loads(data) if data.endswith(b"\n") else None
    except (OSError, ValueError):
        return None
    finally:
        s.close()


def unit():
    out = subprocess.run(["systemctl", "show", "holdingpen.service",
                          *["-p" + p for p in PROPERTIES]], capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


for line in sys.stdin:
    verb, *args = line.split()
    if verb == "kill":
        os.kill(int(args[0]), signal.SIGKILL)
        print("{}", flush=True)
    else:
        print(json.dumps({"status": status(), "unit": unit()}), flush=True)
"""


# ---- what an admin looks at ----


def status(ct, user="carol"):
    return json.loads(ct.run(["holdingpen", "status", "--json"], user=user).stdout)



def write_config(ct, text):
    ct.path(CONFIG_DIR).mkdir(exist_ok=True)
    ct.path(CONFIG_PATH).write_text(text)


def stop_units(ct):
    """Both units stopped: systemd's store is emptied, and so the pool."""
    ct.run(["systemctl", "stop", SOCKET, SERVICE])
    ct.run(["systemctl", "reset-failed", SERVICE, SOCKET])


def start_units(ct):
    """Socket and service started; returns once the daemon said READY=1 (the pool is full)."""
    ct.run(["systemctl", "start", SOCKET, SERVICE])


@contextmanager
def configured(ct, text, drop_in=None):
    """The daemon serving text (and drop_in, if given) from an empty store; then
    the default again: no config, no drop-in, the default pool full."""
    assert not ct.path(CONFIG_PATH).exists(), f"{CONFIG_PATH} left by an earlier test"
    stop_units(ct)
    try:
        write_config(ct, text)
        if drop_in is not None:
            ct.path(DROP_IN_DIR).mkdir(parents=True, exist_ok=True)
            ct.path(DROP_IN_PATH).write_text(drop_in)
            ct.run(["systemctl", "daemon-reload"])
        start_units(ct)
        yield
    finally:
        ct.path(CONFIG_PATH).unlink(missing_ok=True)
        if ct.path(CONFIG_DIR).exists():
            ct.path(CONFIG_DIR).rmdir()
        if ct.path(DROP_IN_PATH).exists():
            ct.path(DROP_IN_PATH).unlink()
            ct.path(DROP_IN_DIR).rmdir()
            ct.run(["systemctl", "daemon-reload"])
        stop_units(ct)
        start_units(ct)
        wait_for("the default pool again", lambda: show(ct, "StatusText")["StatusText"],
                 lambda text: text == DEFAULT_STATUS_TEXT)
        assert stat.S_ISSOCK(ct.path(DOOR).lstat().st_mode)


# ---- what users run ----

class Churn:
    """A CHURN client in the container, steered through its stdin."""

    def __init__(self, ct, user, kinds, seed):
        self.job = ct.popen(["/usr/bin/python3", "-c", CHURN, ",".join(kinds), str(seed)],
                            user=user)
        assert self.job.read_line() == "ready"

    def tell(self, command):
        self.job.proc.stdin.write(command.encode() + b"\n")

    def paused(self):
        """Returns once the client, told "pause", is between borrows, holding nothing."""
        line = self.job.read_line(timeout_s=60)
        assert line == "paused", line

    def stop(self):
        """Its counts: borrowed, with_fd, refused {code: n}, cut, stalled, lost, bad_fd, no_door."""
        self.tell("stop")
        result = json.loads(self.job.read_line(timeout_s=60))
        self.job.stop()
        return result


class Prober:
    """A PROBER in the container: look() and kill(pid)."""

    def __init__(self, ct):
        self.job = ct.popen(["/usr/bin/python3", "-c", PROBER])

    def look(self):
        """(the daemon's status reply or None, {systemd property: value})."""
        self.job.proc.stdin.write(b"look\n")
        answer = json.loads(self.job.read_line(timeout_s=60))
        return answer["status"], answer["unit"]

    def kill(self, pid):
        self.job.proc.stdin.write(f"kill {pid}\n".encode())
        self.job.read_line()

    def stop(self):
        self.job.stop()


# ---- the machine's memory and space ----

def available_bytes():
    """MemAvailable with the kernel's per-CPU free lists, as the daemon counts it."""
    return headroom.read_meminfo()["MemAvailable"]


def _used_bytes(path):
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _allocated_bytes(tree):
    total = 0
    for parent, _, files in os.walk(tree):
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


# The machine's tmpfs file systems: /var/tmp is the overlay, whose statvfs is
# its upper layer's, a tmpfs holding everything the machine wrote (the disk
# pool and the journal among it).
TMPFS = ("/var/tmp", "/run", "/tmp", "/dev/shm")


def machine_use(ct):
    """What the machine holds: shmem charged to its memory cgroup (memfds and
    tmpfs pages alike), what its tmpfs file systems hold, the journal's files;
    and the host's MemAvailable, which others' jobs move too."""
    return {"shmem": ct.memory_stat()["total_shmem"],
            "tmpfs": sum(_used_bytes(ct.path(p)) for p in TMPFS),
            "var_tmp": _used_bytes(ct.path("/var/tmp")),
            "journal": _allocated_bytes(ct.path("/var/log/journal")),
            "host_available": available_bytes()}


def leaks(before, after):
    """(memory, disk) bytes not given back. Shmem that files on the machine's
    tmpfs account for is theirs (the journal grows with every restart), not
    a memory chunk; so is /var/tmp's growth that the journal accounts for."""
    grew = {key: after[key] - before[key] for key in before}
    return grew["shmem"] - grew["tmpfs"], grew["var_tmp"] - grew["journal"]


def daemon_leftovers(ct):
    """Anything of the daemon's still on the machine: a descriptor or a mapping
    of a memory reservation in any process (PID 1's store included), a file or
    PrivateTmp directory of the service's in /var/tmp or /tmp."""
    return ct.run(["sh", "-c",
                   "find /proc/[0-9]*/fd -lname '/memfd:holdingpen*' 2>/dev/null; "
                   "grep -l 'memfd:holdingpen' /proc/[0-9]*/maps 2>/dev/null; "
                   "find /var/tmp /tmp -name '*holdingpen*' 2>/dev/null"],
                  check=False).stdout.split()


# ---- 1. a hundred SIGKILLs at random moments ----

@pytest.fixture(scope="module")
def chaos_ct():
    """A machine of its own, installed as `ct` is, in a memory cgroup of its own."""
    problem = platform_problem()
    if problem:
        pytest.skip(problem)
    if not MEMORY_CGROUP_ROOT.is_dir():
        pytest.skip(f"no {MEMORY_CGROUP_ROOT}: the machine's memory cannot be told apart "
                    "from the host's")
    sweep_stale()
    with Container(f"pk{os.getpid()}", binds=[f"{CHECKOUT}:{SRC_IN_CONTAINER}"],
                   memory_cgroup=True) as c:
        install_from_readme(c)
        remove_config(c)
        for name, uid in USERS.items():
            groups = ["-G", "holdingpen"] if name in BORROWERS else []
            c.run(["useradd", "-m", "-u", str(uid), *groups, name])
        yield c


def check_filling(reply, where):
    """While it fills: no pool has more places taken than it has, and every
    lent place is a listed loan."""
    for p in reply["pools"]:
        assert p["held"] + p["lent"] + p["reserving"] <= p["count"], (where, p)
        listed = sum(1 for loan in reply["loans"] if loan["kind"] == p["name"])
        assert p["lent"] == listed, (where, p, reply["loans"])


def settled(look, long_lived):
    """Every place held or lent, the loans exactly the long-lived ones, and
    systemd's store exactly the held chunks, the loans and "state"."""
    reply, unit = look
    if reply is None or unit.get("ActiveState") != "active" or not reply["ready"]:
        return False
    pools = reply["pools"]
    if any(p["held"] + p["lent"] != p["count"] or p["reserving"] for p in pools):
        return False
    loans = [(loan["kind"], loan["uid"], loan["pid"]) for loan in reply["loans"]]
    if sorted(loans) != sorted(long_lived):
        return False
    return unit["NFileDescriptorStore"] == str(sum(p["held"] + p["lent"] for p in pools) + 1)


def kill_and_recover(prober, unit, where):
    """kill -9 the daemon; returns (seconds until a new one is active and has
    answered, systemd's view then). Checks check_filling() at every look."""
    killed_at = time.monotonic()
    prober.kill(unit["MainPID"])
    while True:
        reply, now = prober.look()
        if reply is not None:
            check_filling(reply, where)
        if (reply is not None and now["ActiveState"] == "active"
                and int(now["NRestarts"]) > int(unit["NRestarts"])):
            return time.monotonic() - killed_at, now
        assert time.monotonic() - killed_at < SETTLE_S, \
            f"{where}: not back within {SETTLE_S} s; last {now} {reply}"
        time.sleep(POLL_S)


def settle(ct, prober, long_lived, where, mark):
    """Wait until settled(); returns systemd's view then. On a timeout, fails
    with what the last restart said it adopted."""
    deadline = time.monotonic() + SETTLE_S
    while not settled(look := prober.look(), long_lived):
        if time.monotonic() > deadline:
            adopted = journal(ct, "HOLDINGPEN_EVENT=adopted", after=mark)[-1:]
            pytest.fail(f"{where}: not within {SETTLE_S} s: every place held or lent, the "
                        f"long-lived loans {long_lived} alone, the store exact; last saw "
                        f"{look!r}; the last restart said: "
                        f"{[e['MESSAGE'] for e in adopted]}")
        time.sleep(POLL_S)
    return look[1]


def pool_at_each_kill(entries, places):
    """[(held, lent)] in all pools just before each kill, replayed from the
    daemon's own journal from a full pool on: a killed daemon says nothing
    more, so the state before each "adopted" is the state it was killed in.
    Also returns the state at the end."""
    held, lent, at_kills = places, 0, []
    for event, entry in ((e["HOLDINGPEN_EVENT"], e) for e in entries if "HOLDINGPEN_EVENT" in e):
        if event == "reserved":
            held += 1
        elif event == "lent":
            held, lent = held - 1, lent + 1
        elif event == "returned":
            lent -= 1
        elif event == "adopted":
            at_kills.append((held, lent))
            held, lent = int(entry["HOLDINGPEN_CHUNKS"]), int(entry["HOLDINGPEN_LOANS"])
    return at_kills, (held, lent)


def test_a_hundred_sigkills_lose_nothing(chaos_ct, figure):
    ct = chaos_ct
    seed = int(os.environ.get("HOLDINGPEN_CHAOS_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    places = sum(CHAOS_COUNTS.values())
    full = {name: (n, n, 0) for name, n in CHAOS_COUNTS.items()}
    stop_units(ct)
    time.sleep(0.5)              # freed pages reach the free lists
    before = machine_use(ct)
    var_tmp_before = sorted(os.listdir(ct.path("/var/tmp")))
    recoveries = []
    with configured(ct, CHAOS_CONFIG, drop_in=DROP_IN):
        mark = journal_mark(ct)
        prober = Prober(ct)
        with borrowing(ct, "alice") as plain, borrowing(ct, "alice", "--fd") as handed, \
                borrowing(ct, "alice", "--kind", "disk") as disk:
            long_lived = [("memory", USERS["alice"], plain.pid),
                          ("memory", USERS["alice"], handed.pid),
                          (DISK, USERS["alice"], disk.pid)]
            churns = [Churn(ct, "alice", ["memory", "memory", DISK], seed),
                      Churn(ct, "alice", ["memory", DISK], seed + 1)]
            try:
                unit = prober.look()[1]
                for kill in range(1, KILLS + 1):
                    time.sleep(rng.uniform(0, KILL_DELAY_MAX_S))
                    where = f"kill {kill} (seed {seed})"
                    took_s, unit = kill_and_recover(prober, unit, where)
                    recoveries.append(took_s)
                    for churn in churns:
                        churn.tell("pause")
                    for churn in churns:
                        churn.paused()
                    unit = settle(ct, prober, long_lived, where, mark)
                    for churn in churns:
                        churn.tell("go")
            finally:
                churned = [churn.stop() for churn in churns]
                prober.stop()
            # The long-lived borrowers end after all the kills: the last daemon
            # sees them go and fills their places again.
            for job in (plain, handed, disk):
                assert job.finish()[0] == 3
        wait_for("the pool full again, no loans", lambda: status(ct),
                 lambda reply: counts(reply) == full and reply["loans"] == [])
        entries = journal(ct, after=mark)

        stop_units(ct)
        time.sleep(0.5)
        after = machine_use(ct)
        leftovers = daemon_leftovers(ct)
        var_tmp_after = sorted(os.listdir(ct.path("/var/tmp")))

    total = {key: sum(c[key] for c in churned)
             for key in ("borrowed", "with_fd", "cut", "stalled", "lost", "bad_fd", "no_door")}
    refused = {}
    for c in churned:
        for code, n in c["refused"].items():
            refused[code] = refused.get(code, 0) + n
    at_kills, at_end = pool_at_each_kill(entries, places)
    mid_fill = sum(1 for held, lent in at_kills if held + lent < places)
    churn_out = sum(1 for _, lent in at_kills if lent > len(long_lived))
    # Loans recorded by a daemon killed before it answered, answered by the next.
    answered_late = sum(int(e.get("HOLDINGPEN_UNANSWERED", 0)) for e in entries
                        if e.get("HOLDINGPEN_EVENT") == "adopted")
    memory_leak, disk_leak = leaks(before, after)
    host_moved = before["host_available"] - after["host_available"]
    figure(f"{len(recoveries)} kill -9 (seed {seed}): {mid_fill} mid-fill (a place being "
           f"reserved or about to be), {churn_out} with a churn loan out besides the "
           f"{len(long_lived)} long-lived; back (active, answering) in max "
           f"{max(recoveries):.2f} s, median {statistics.median(recoveries):.2f} s")
    figure(f"churn: {total['borrowed']} borrows ({total['with_fd']} with fd), refused {refused}, "
           f"{total['cut']} cut short by a kill before the reply, {answered_late} answered "
           f"by the next daemon, {total['stalled']} left waiting, {total['lost']} loans forgotten")
    figure(f"after the final stop: the machine holds {memory_leak / MIB:+.1f} MiB of memory "
           f"and /var/tmp {disk_leak / MIB:+.1f} MiB more than before the daemon started "
           f"(journal +{(after['journal'] - before['journal']) / MIB:.0f} MiB set aside); "
           f"{len(leftovers)} descriptors, mappings or files of the daemon's left; "
           f"host MemAvailable moved {-host_moved / MIB:+.0f} MiB (shared host, not asserted)")

    assert len(at_kills) == KILLS, f"{len(at_kills)} adoptions for {KILLS} kills"
    assert at_end == (places, 0), f"the journal's replay ends at (held, lent) {at_end}"
    assert "released" not in events(entries), "a restart found more chunks than places"
    assert total["lost"] == 0, f"the daemon forgot {total['lost']} loans: {churned}"
    assert total["bad_fd"] == total["stalled"] == total["no_door"] == 0, churned
    assert total["borrowed"] > KILLS, churned
    assert leftovers == []
    assert var_tmp_after == var_tmp_before
    assert memory_leak < LEAK_TOLERANCE_BYTES, (before, after)
    assert abs(disk_leak) < LEAK_TOLERANCE_BYTES, (before, after)


# ---- 2. a hostile environment ----

# A client that connects at once, prints "connected", and only when a line
# comes on stdin asks for the status and prints the reply line.
EARLY_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect("/run/holdingpen.socket")
print("connected", flush=True)
sys.stdin.readline()
s.sendall(b'{"action": "status"}\n')
print(s.makefile("rb").readline().decode().strip() or "(closed)", flush=True)
"""
NOT_RUNNING = f"the holdingpen daemon is not running ({DOOR})"


def named_fix(stderr):
    """The command a client's "not running" message tells the admin to run."""
    match = re.search(r"start it with: (.+)$", stderr.strip())
    assert match, stderr
    return match.group(1).split()


def test_a_removed_socket_file_keeps_the_loans_and_restarting_the_socket_brings_it_back(
        ct, figure):
    with configured(ct, TWO_CHUNKS_CONFIG):
        with borrowing(ct, "alice") as job:
            [loan] = status(ct)["loans"]
            old = show(ct, "MainPID", "NRestarts")
            early = ct.popen(["/usr/bin/python3", "-c", EARLY_CLIENT], user="carol")
            try:
                assert early.read_line() == "connected"
                ct.run(["rm", DOOR])

                # A new client finds no door, and is told so with a fix.
                done = ct.run(["gatekeeper", "--strict", "true"], user="alice", check=False)
                assert done.returncode == 69
                assert NOT_RUNNING in done.stderr and "systemctl" in done.stderr, done.stderr
                looked = ct.run(["holdingpen", "status"], user="carol", check=False)
                assert looked.returncode == 69 and NOT_RUNNING in looked.stderr, looked.stderr

                # The daemon runs on, serving a connection made before, and alice's loan.
                early.proc.stdin.write(b"go\n")
                reply = json.loads(early.read_line())
                assert counts(reply) == {"memory": (2, 1, 1)}
                assert [(l["uid"], l["pid"]) for l in reply["loans"]] == [(loan["uid"], loan["pid"])]
                assert show(ct, "MainPID", "NRestarts") == old
                mark = journal_mark(ct)

                # What brings the door back: restarting the socket unit.
                ct.run(["systemctl", "restart", SOCKET])
            finally:
                early.stop()
                if not ct.path(DOOR).exists():
                    ct.run(["systemctl", "restart", SOCKET])
            door = ct.path(DOOR).lstat()
            assert stat.S_ISSOCK(door.st_mode) and stat.S_IMODE(door.st_mode) == 0o666

            # Under systemd, Requires=holdingpen.socket restarts the service with it;
            # the descriptor store survives a restart, and so does alice's loan.
            now = wait_for("the service active again", lambda: show(ct, "MainPID", "ActiveState"),
                           lambda svc: svc["ActiveState"] == "active")
            assert now["MainPID"] != old["MainPID"]
            reply = status(ct)
            assert counts(reply) == {"memory": (2, 1, 1)}
            [kept] = reply["loans"]
            for key in ("kind", "user", "uid", "pid", "since", "size", "fd"):
                assert kept[key] == loan[key], key
            assert show(ct, "NFileDescriptorStore")["NFileDescriptorStore"] == "3"
            adopted = journal(ct, "HOLDINGPEN_EVENT=adopted", after=mark)
            assert [e["HOLDINGPEN_LOANS"] for e in adopted] == ["1"]
            assert ct.run(["gatekeeper", "--strict", "true"], user="alice").returncode == 0
            assert job.finish()[0] == 3
        wait_for("alice's place reserved again", lambda: counts(status(ct)),
                 lambda now: now == {"memory": (2, 2, 0)})
    figure(f"socket file removed: new clients told '{NOT_RUNNING}'; the running daemon kept "
           f"serving and lending; `systemctl restart {SOCKET}` restarted the service too "
           f"(MainPID {old['MainPID']} -> {now['MainPID']}) and kept the loan")


def test_the_fix_a_client_names_for_a_removed_socket_file_brings_it_back(ct):
    ct.run(["rm", DOOR])
    try:
        done = ct.run(["gatekeeper", "--strict", "true"], user="alice", check=False)
        assert NOT_RUNNING in done.stderr, done.stderr
        ct.run(named_fix(done.stderr))
        assert ct.path(DOOR).exists(), f"{DOOR} still missing after {named_fix(done.stderr)}"
    finally:
        if not ct.path(DOOR).exists():
            ct.run(["systemctl", "restart", SOCKET])
        wait_for("the default pool again", lambda: show(ct, "ActiveState", "StatusText"),
                 lambda svc: svc == {"ActiveState": "active", "StatusText": DEFAULT_STATUS_TEXT})


def test_a_reload_with_a_broken_file_keeps_the_config_and_the_loans_and_says_why(ct):
    # test_holdingpen_system covers a refused reload (file and key named, the pool
    # unchanged); here: with a loan out, and the whole line, problem included.
    with configured(ct, TWO_CHUNKS_CONFIG):
        with borrowing(ct, "alice") as job:
            main_pid = show(ct, "MainPID")["MainPID"]
            mark = journal_mark(ct)
            write_config(ct, TWO_CHUNKS_CONFIG.replace('"64M"', '"lots"'))

            assert ct.run(["systemctl", "reload", SERVICE], check=False).returncode != 0

            [refused] = wait_for("config-refused in the journal", lambda: journal(
                ct, "HOLDINGPEN_EVENT=config-refused", after=mark))
            assert refused["MESSAGE"] == (
                "reload refused, keeping the running configuration: "
                f"{CONFIG_PATH}: memory.size: expected a size like \"2G\", not 'lots'")
            wait_for("active again", lambda: show(ct, "ActiveState"),
                     lambda svc: svc["ActiveState"] == "active")
            assert show(ct, "MainPID")["MainPID"] == main_pid
            reply = status(ct)
            assert counts(reply) == {"memory": (2, 1, 1)}
            assert [(l["uid"], l["pid"]) for l in reply["loans"]] == [(USERS["alice"], job.pid)]
            # The old configuration lends on: 64 MiB, the one chunk held.
            with borrowing(ct, "alice"):
                reply = status(ct)
                assert counts(reply) == {"memory": (2, 0, 2)}
                assert [l["size"] for l in reply["loans"]] == [CHUNK_BYTES] * 2
            assert job.finish()[0] == 3
        wait_for("both places held again", lambda: counts(status(ct)),
                 lambda now: now == {"memory": (2, 2, 0)})
        # ("running": a loan's gatekeeper became sh, whenever the daemon looked.)
        seen = [e for e in events(journal(ct, after=mark)) if e != "running"]
        assert seen[:2] == ["config-refused", "lent"], seen
        assert sorted(seen[2:]) == ["reserved", "reserved", "returned", "returned"], seen
