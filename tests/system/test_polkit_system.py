"""Who may borrow, as users and admins meet it in the session container:
polkit's console rule (logind seat0), the shipped group rule, root, the
allow-list where polkitd is not running, what a client claims about itself,
per-user limits under floods, what `holdingpen status` shows to whom, and the
privileges the daemon runs with.

A console user here is a PAM session opened by `systemd-run -p PAMName=login
-E XDG_SEAT=seat0`: logind puts it on seat0 and makes it active, so polkit
sees local=true active=true (SYSTEMD-TESTING.md section 7). Without
XDG_SEAT the session has no seat, as over ssh. A user "with no session" is a
plain setpriv'd process (Container.run(user=...)).

Every test leaves the container as the installer left it: no configuration
file, polkit.service not masked and not stopped, the default pool full.
Tests that configure the daemon or touch polkit use the `restored` fixture,
which also restarts the daemon from an empty store, so its per-user counters
start afresh for the next test; the others only borrow and give back.
"""

import json
import os
import re
import time

import pytest

from conftest import CHECKOUT, SRC_IN_CONTAINER, USERS, readme_install_command
from nspawn import Container
from daemonctl import SERVICE, SOCKET, journal, journal_mark, show, wait_for

POLKIT = "polkit.service"           # Debian 12: static, D-Bus activated (SystemdService=)
UNIT_DIR = "/lib/systemd/system"
CONFIG_DIR = "/etc/holdingpen"
CONFIG_PATH = f"{CONFIG_DIR}/holdingpen.toml"
DEFAULT_STATUS_TEXT = "memory 1/1 held (256 MiB)"   # no config file
CAP_IPC_LOCK = 1 << 14

# What the daemon says to whoever polkit refuses (authorize.WHO_MAY), and
# without polkitd to whoever the allow-list leaves out.
WHO_MAY = ("only the user at the console (an active local session) or members of the "
           "group holdingpen may borrow")
ALLOW_LIST_ONLY = ("polkit is not running here, and only the users and groups in "
                   f"[authorize] of {CONFIG_PATH} may borrow")

BORROW = '{"action": "borrow", "kind": "memory"}'

# A client speaking the protocol by hand. Prints its pid, then sends each
# argument as one request line on a connection of its own and prints the
# reply line; every connection (and so every loan) stays open until stdin closes.
RAW_CLIENT = r"""
import os, socket, sys
print(os.getpid(), flush=True)
held = []
for line in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("/run/holdingpen.socket")
    s.sendall(line.encode() + b"\n")
    s.settimeout(10)
    print(s.makefile("rb").readline().decode().strip() or "(closed)", flush=True)
    held.append(s)
sys.stdin.read()
"""

# A client that opens N connections and says nothing on them; prints
# "open N", waits for a line on stdin, then asks for the status on every
# connection and prints, per connection in the order opened, "ok" or the
# error code of the one reply line it got (a refused connection was answered
# and closed at once, so its reply is already waiting).
CONNECTION_FLOOD = r"""
import json, socket, sys
n = int(sys.argv[1])
conns = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("/run/holdingpen.socket")
    conns.append(s)
print("open", n, flush=True)
sys.stdin.readline()
for s in conns:
    try:
        s.sendall(b'{"action": "status"}\n')
    except OSError:
        pass            # closed by the daemon after its refusal
    s.settimeout(10)
    line = s.makefile("rb").readline()
    reply = json.loads(line) if line else {"ok": False, "error": "(closed)"}
    print("ok" if reply["ok"] else reply["error"], flush=True)
"""


# ---- what an admin looks at ----


def status(ct, user="root"):
    """`holdingpen status --json` as user."""
    return json.loads(ct.run(["holdingpen", "status", "--json"], user=user).stdout)



def wait_until_full(ct):
    """Wait until every pool holds all it should, nothing lent, nothing being made.

    Also a barrier for what the daemon has already answered: it writes a
    borrow's journal entry in the same step as its reply, so an answer to a
    later status request comes after that entry.
    """
    return wait_for("every pool full", lambda: status(ct),
                    lambda r: all(p["held"] == p["count"] and not p["lent"] and
                                  not p["reserving"] for p in r["pools"]))



def decisions(entries):
    """[(event, uid, comm)] of the lent and refused entries, in order."""
    return [(e["HOLDINGPEN_EVENT"], int(e["HOLDINGPEN_CLIENT_UID"]), e["HOLDINGPEN_CLIENT_COMM"])
            for e in entries if e.get("HOLDINGPEN_EVENT") in ("lent", "refused")]


def restart_empty(ct):
    """Stop and start the daemon: the store is emptied, the pool made afresh,
    and per-user counters and the "no-polkit" note start anew. reset-failed:
    tests start it more often than StartLimitBurst= allows."""
    ct.run(["systemctl", "stop", SERVICE])
    ct.run(["systemctl", "reset-failed", SERVICE])
    ct.run(["systemctl", "start", SERVICE])


def configure(ct, text):
    """Write /etc/holdingpen/holdingpen.toml and restart the daemon on it."""
    ct.path(CONFIG_DIR).mkdir(exist_ok=True)
    ct.path(CONFIG_PATH).write_text(text)
    restart_empty(ct)


def daemon_fds(ct):
    """How many descriptors the daemon's main process has open now."""
    main_pid = show(ct, "MainPID")["MainPID"]
    return int(ct.run(["sh", "-c", f"ls /proc/{main_pid}/fd | wc -l"]).stdout)


@pytest.fixture
def restored(ct):
    """Afterwards: no config file, polkit unmasked, the default pool afresh."""
    assert not ct.path(CONFIG_PATH).exists(), f"{CONFIG_PATH} left by an earlier test"
    assert ct.run(["systemctl", "is-enabled", POLKIT], check=False).stdout.strip() == "static"
    yield
    ct.run(["systemctl", "unmask", POLKIT])
    ct.path(CONFIG_PATH).unlink(missing_ok=True)
    if ct.path(CONFIG_DIR).exists():
        ct.path(CONFIG_DIR).rmdir()
    restart_empty(ct)
    wait_for("the default pool again", lambda: show(ct, "StatusText")["StatusText"],
             lambda text: text == DEFAULT_STATUS_TEXT)


# ---- what a user runs ----

def gatekeeper(ct, user, session=None):
    """`gatekeeper --strict sh -c 'echo borrowed'` as user; a CompletedProcess.

    session: None (a plain process, no login session), "seat0" (the console:
    an active local session) or "remote" (a session without a seat, as over
    ssh). In a session, the lines before "borrowed" are logind's word on it.
    """
    command = ["gatekeeper", "--strict", "sh", "-c", "echo borrowed"]
    if session is None:
        return ct.run(command, user=user, check=False)
    argv = ["systemd-run", "--wait", "--pipe", "--quiet", "-p", "PAMName=login", "-p",
            f"User={user}"]
    argv += ["-E", "XDG_SEAT=seat0"] if session == "seat0" else []
    # systemd-run expands $: $$ is a literal $ for the shell.
    script = ("loginctl show-session $$XDG_SESSION_ID -p Seat -p Active -p Remote; "
              "exec gatekeeper --strict sh -c 'echo borrowed'")
    return ct.run(argv + ["sh", "-c", script], check=False)


def raw(ct, user, *lines):
    """RAW_CLIENT as user with lines; (its pid, [reply dicts]), connections closed after."""
    out = ct.run(["python3", "-c", RAW_CLIENT, *lines], user=user).stdout.splitlines()
    return int(out[0]), [json.loads(line) for line in out[1:]]


def errors(replies):
    return ["ok" if r["ok"] else r["error"] for r in replies]


# ---- 1. polkit decides: the console user, the group, root; not the rest ----

@pytest.mark.parametrize("user, session, allowed", [
    ("bob", "seat0", True),        # the person at the console, not in the group
    ("bob", "remote", False),      # the same person logged in from elsewhere
    ("alice", None, True),         # a member of the group holdingpen, anywhere
    ("carol", None, False),        # anyone else
    ("root", None, True),          # the administrator; polkit is not even asked
], ids=["console-user", "session-without-seat", "group-member", "other-user", "root"])
def test_polkit_lets_the_console_user_and_the_group_borrow(ct, user, session, allowed):
    wait_until_full(ct)
    mark = journal_mark(ct)

    done = gatekeeper(ct, user, session)

    if session is not None:
        seat = "seat0" if session == "seat0" else ""
        # Remote=no either way: polkit's "local" is having a seat.
        session_facts = set(done.stdout.splitlines()) - {"borrowed"}
        assert session_facts == {f"Seat={seat}", "Active=yes", "Remote=no"}, done.stdout
    uid = USERS.get(user, 0)
    if allowed:
        assert (done.returncode, done.stderr) == (0, ""), done
        assert done.stdout.splitlines()[-1] == "borrowed"
    else:
        # EX_NOPERM, one line naming who may borrow, and CMD not run.
        assert done.returncode == 77, done
        assert done.stderr == f"gatekeeper: {WHO_MAY} (not-authorized)\n"
        assert "borrowed" not in done.stdout
    wait_until_full(ct)          # the loan, if any, is back: its journal entries are written
    entries = journal(ct, after=mark)
    assert decisions(entries) == [("lent" if allowed else "refused", uid, "gatekeeper")]
    if not allowed:
        [refused] = [e for e in entries if e.get("HOLDINGPEN_EVENT") == "refused"]
        assert refused["MESSAGE"] == f"{user} (gatekeeper) may not borrow memory: {WHO_MAY}"


# ---- 2. what a client says about itself counts for nothing ----

def test_a_client_claiming_another_uid_or_pid_gains_nothing(ct):
    wait_until_full(ct)
    mark = journal_mark(ct)
    claims = ['{"action": "borrow", "uid": 0}',
              '{"action": "borrow", "pid": 1}',
              '{"action": "borrow", "kind": "memory", "uid": 2000, "user": "alice"}',
              '{"action": "status", "uid": 0}']        # root's view, with everyone's commands

    carol_pid, replies = raw(ct, "carol", *claims, BORROW)

    assert errors(replies) == ["bad-request"] * 4 + ["not-authorized"]
    assert [r["message"] for r in replies[:4]] == \
        ["unknown field 'uid'", "unknown field 'pid'", "unknown field 'uid'",
         "unknown field 'uid'"]
    assert replies[4]["message"] == WHO_MAY
    assert status(ct)["loans"] == []

    # A loan is someone's as the kernel says: alice's plain borrow, held open.
    alice = ct.popen(["python3", "-c", RAW_CLIENT, BORROW], user="alice")
    try:
        alice_pid = int(alice.read_line())
        assert json.loads(alice.read_line())["ok"] is True
        [loan] = status(ct)["loans"]
        assert (loan["user"], loan["uid"], loan["pid"]) == ("alice", USERS["alice"], alice_pid)
    finally:
        alice.stop()
    wait_until_full(ct)

    entries = journal(ct, after=mark)
    by_client = [(e["HOLDINGPEN_EVENT"], e["HOLDINGPEN_CLIENT_UID"], e["HOLDINGPEN_CLIENT_PID"])
                 for e in entries if "HOLDINGPEN_CLIENT_UID" in e]
    carol = (str(USERS["carol"]), str(carol_pid))
    alice_ = (str(USERS["alice"]), str(alice_pid))
    assert by_client == [("bad-client", *carol)] * 4 + [("refused", *carol)] + \
        [("lent", *alice_), ("returned", *alice_)]


# ---- 3. floods: one user's many connections or borrows stop at that user ----

CONNECTIONS_PER_USER = 4
LIMITS_CONFIG = f"""\
[memory]
size = "16M"
count = 6

[limits]
connections_per_user = {CONNECTIONS_PER_USER}
borrows_per_second = 1
borrow_burst = 2
"""


def warm_up(ct):
    """One borrow that asks polkit (bob's, refused), so that the daemon's
    connection to the system bus, kept for all later checks, is surely open
    and counted in the descriptor baseline."""
    assert gatekeeper(ct, "bob").returncode == 77


@pytest.mark.usefixtures("restored")
def test_too_many_connections_are_refused_for_that_user_alone(ct):
    configure(ct, LIMITS_CONFIG)
    warm_up(ct)
    wait_until_full(ct)
    baseline = daemon_fds(ct)
    mark = journal_mark(ct)
    opened = 5 * CONNECTIONS_PER_USER

    carol = ct.popen(["python3", "-c", CONNECTION_FLOOD, str(opened)], user="carol")
    try:
        assert carol.read_line() == f"open {opened}"
        # While carol holds all she may: alice borrows, root asks many times at once.
        done = gatekeeper(ct, "alice")
        assert (done.returncode, done.stdout, done.stderr) == (0, "borrowed\n", ""), done
        root = ct.run(["python3", "-c", CONNECTION_FLOOD, "10"], input="go\n").stdout
        assert root.splitlines() == ["open 10"] + ["ok"] * 10       # root has no limit
        wait_until_full(ct)
        # A socket and a pidfd per connection kept; the refused ones are closed.
        assert daemon_fds(ct) == baseline + 2 * CONNECTIONS_PER_USER

        carol.proc.stdin.write(b"go\n")
        returncode, out, err = carol.finish()
    finally:
        carol.stop()
    assert (returncode, err) == (0, "")
    assert out.splitlines() == ["ok"] * CONNECTIONS_PER_USER + \
        ["limited"] * (opened - CONNECTIONS_PER_USER)

    wait_for("the daemon's descriptors back to the baseline", lambda: daemon_fds(ct),
             lambda n: n == baseline)
    refused = [e for e in journal(ct, after=mark) if e.get("HOLDINGPEN_EVENT") == "refused"]
    # One entry for the whole flood: the journal is not flooded in turn.
    assert [(e["HOLDINGPEN_CLIENT_UID"], e["MESSAGE"]) for e in refused] == \
        [(str(USERS["carol"]), f"carol (python3) has {CONNECTIONS_PER_USER} connections open "
                               "already")]


@pytest.mark.usefixtures("restored")
def test_borrowing_faster_than_the_rate_is_limited_per_user(ct):
    configure(ct, LIMITS_CONFIG)
    warm_up(ct)
    wait_until_full(ct)
    baseline = daemon_fds(ct)
    mark = journal_mark(ct)

    # Three borrows at once, each held: a burst of 2, then "limited".
    alice = ct.popen(["python3", "-c", RAW_CLIENT, BORROW, BORROW, BORROW], user="alice")
    try:
        int(alice.read_line())
        replies = [json.loads(alice.read_line()) for _ in range(3)]
        assert errors(replies) == ["ok", "ok", "limited"]
        assert replies[2]["message"] == "more than 1 borrows a second; slow down"
        # Refused borrows count too, so a refused user cannot keep polkit busy.
        assert errors(raw(ct, "carol", BORROW, BORROW, BORROW)[1]) == \
            ["not-authorized", "not-authorized", "limited"]
        # Others are not slowed by alice's flood; root is never limited.
        assert errors(raw(ct, "root", BORROW, BORROW, BORROW)[1]) == ["ok"] * 3
        # A second later alice has a borrow again.
        time.sleep(1.1)
        assert errors(raw(ct, "alice", BORROW)[1]) == ["ok"]
    finally:
        alice.stop()

    wait_until_full(ct)
    wait_for("the daemon's descriptors back to the baseline", lambda: daemon_fds(ct),
             lambda n: n == baseline)
    limited = [(e["HOLDINGPEN_CLIENT_UID"], e["MESSAGE"]) for e in journal(ct, after=mark)
               if e.get("HOLDINGPEN_EVENT") == "refused" and "too often" in e["MESSAGE"]]
    assert limited == [(str(USERS["alice"]), "alice (python3) borrows too often"),
                       (str(USERS["carol"]), "carol (python3) borrows too often")]


# ---- 4. status: the pool for everyone, other people's commands for root ----

TWO_CHUNKS = """\
[memory]
size = "16M"
count = 2
"""
HOLD = ["sh", "-c", "echo holding; read _"]


def loans_by_user(reply, *keys):
    """{user: loan}, or {user: (loan[key], ...)} given keys."""
    return {loan["user"]: tuple(loan[k] for k in keys) if keys else loan
            for loan in reply["loans"]}


def command_column(text):
    """{user: COMMAND} from the loans table of `holdingpen status`."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("USER "))
    return {row.split()[0]: row.split()[3] for row in lines[header + 1:]}


@pytest.mark.usefixtures("restored")
def test_status_shows_other_users_commands_to_root_only(ct):
    configure(ct, TWO_CHUNKS)
    jobs = [ct.popen(["gatekeeper", "--strict", *HOLD], user=user) for user in ("alice", "root")]
    try:
        for job in jobs:
            assert job.read_line() == "holding"
        # gatekeeper became sh; the daemon reads the loans' commands again every 2 s.
        seen_by_root = wait_for("root sees both loans' commands as sh", lambda: status(ct),
                                lambda r: loans_by_user(r, "command") == {"alice": ("sh",),
                                                                          "root": ("sh",)})
        assert loans_by_user(seen_by_root, "uid") == {"alice": (USERS["alice"],), "root": (0,)}
        assert command_column(ct.run(["holdingpen", "status"]).stdout) == \
            {"alice": "sh", "root": "sh"}

        # carol sees the pool and who holds what, not what they run.
        seen_by_carol = status(ct, "carol")
        assert seen_by_carol["pools"] == seen_by_root["pools"]
        assert [p["lent"] for p in seen_by_carol["pools"]] == [2]
        assert loans_by_user(seen_by_carol, "uid", "pid", "command") == \
            {user: (uid, pid, None)
             for user, (uid, pid) in loans_by_user(seen_by_root, "uid", "pid").items()}
        assert command_column(ct.run(["holdingpen", "status"], user="carol").stdout) == \
            {"alice": "-", "root": "-"}
        # alice sees her own command, not root's.
        assert loans_by_user(status(ct, "alice"), "command") == \
            {"alice": ("sh",), "root": (None,)}
    finally:
        for job in jobs:
            job.stop()


# ---- 5. least privilege ----

@pytest.fixture(scope="module")
def capable_ct():
    """A machine of its own, as `ct` but with CAP_IPC_LOCK in its bounding set.

    systemd-nspawn leaves CAP_IPC_LOCK out of a container's capabilities, so
    in `ct` AmbientCapabilities=CAP_IPC_LOCK gives the daemon nothing at all;
    on a real machine PID 1 has every capability to hand on.
    """
    with Container(f"pc{os.getpid()}", binds=[f"{CHECKOUT}:{SRC_IN_CONTAINER}"],
                   capabilities=["CAP_IPC_LOCK"]) as c:
        c.run(["sh", "-c", f"cd {SRC_IN_CONTAINER} && "
                           f"{readme_install_command(CHECKOUT / 'README.md')}"])
        yield c


def proc_status(ct, pid):
    text = ct.run(["cat", f"/proc/{pid}/status"]).stdout
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_the_daemon_runs_as_holdingpen_with_cap_ipc_lock_only(capable_ct):
    svc = show(capable_ct, "User", "MainPID", "ActiveState")
    assert (svc["User"], svc["ActiveState"]) == ("holdingpen", "active")
    uid = int(capable_ct.run(["id", "-u", "holdingpen"]).stdout)
    assert 0 < uid < 1000          # a system user, made by the installer
    facts = proc_status(capable_ct, svc["MainPID"])
    assert facts["Uid"].split() == [str(uid)] * 4      # real, effective, saved, fs
    assert "0" not in facts["Gid"].split() and "0" not in facts["Groups"].split()
    caps = {name: int(facts[name], 16) for name in
            ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
    assert caps == {"CapInh": CAP_IPC_LOCK, "CapPrm": CAP_IPC_LOCK, "CapEff": CAP_IPC_LOCK,
                    "CapBnd": CAP_IPC_LOCK, "CapAmb": CAP_IPC_LOCK}, \
        {name: hex(value) for name, value in caps.items()}
    assert facts["NoNewPrivs"] == "1"
    assert status(capable_ct)["ready"] is True     # and it serves, so privileges suffice


def test_systemd_analyze_rates_the_service_safe_and_verifies_both_units(ct):
    done = ct.run(["systemd-analyze", "security", "--no-pager", SERVICE])
    match = re.search(rf"Overall exposure level for {re.escape(SERVICE)}: (\d+\.\d+) (\w+)",
                      done.stdout)
    assert match, done.stdout[-500:]
    assert float(match.group(1)) <= 2.0, match.group(0)
    # verify exits 0 on unknown keys and other warnings: stderr is the verdict.
    done = ct.run(["systemd-analyze", "verify", f"{UNIT_DIR}/{SOCKET}", f"{UNIT_DIR}/{SERVICE}"],
                  check=False)
    assert (done.returncode, done.stderr) == (0, "")


# ---- 6. without polkitd the allow-list decides ----

ALLOW_LIST_CONFIG = """\
[memory]
size = "16M"
count = 2

[authorize]
users = ["bob"]
"""


@pytest.mark.usefixtures("restored")
def test_without_polkitd_the_allow_list_decides_and_the_journal_says_so_once(ct):
    ct.run(["systemctl", "mask", "--now", POLKIT])
    # Masked, so D-Bus cannot start it on demand either.
    ping = ct.run(["busctl", "call", "org.freedesktop.PolicyKit1",
                   "/org/freedesktop/PolicyKit1/Authority", "org.freedesktop.DBus.Peer", "Ping"],
                  check=False)
    assert ping.returncode != 0 and "masked" in ping.stderr, ping
    configure(ct, ALLOW_LIST_CONFIG)
    mark = journal_mark(ct)

    outcomes = []
    for user in ("bob", "carol", "bob", "alice", "root", "carol", "bob"):
        wait_until_full(ct)
        done = gatekeeper(ct, user)
        outcomes.append((user, done.returncode))
        if done.returncode == 77:
            assert done.stderr == f"gatekeeper: {ALLOW_LIST_ONLY} (not-authorized)\n"
    # bob with no session at all; alice's group rule is polkit's, so not here.
    assert outcomes == [("bob", 0), ("carol", 77), ("bob", 0), ("alice", 77), ("root", 0),
                        ("carol", 77), ("bob", 0)]
    wait_until_full(ct)
    entries = journal(ct, after=mark)
    bob, carol, alice = USERS["bob"], USERS["carol"], USERS["alice"]
    assert [(event, uid) for event, uid, _ in decisions(entries)] == \
        [("lent", bob), ("refused", carol), ("lent", bob), ("refused", alice), ("lent", 0),
         ("refused", carol), ("lent", bob)]
    no_polkit = [e for e in entries if e.get("HOLDINGPEN_EVENT") == "no-polkit"]
    assert len(no_polkit) == 1, [e["MESSAGE"] for e in no_polkit]
    assert "users: ['bob']" in no_polkit[0]["MESSAGE"], no_polkit[0]["MESSAGE"]
    assert ct.run(["systemctl", "is-active", POLKIT], check=False).stdout.strip() == "inactive"

    # The allow-list is reloaded with the rest of the configuration.
    ct.path(CONFIG_PATH).write_text(ALLOW_LIST_CONFIG.replace(
        'users = ["bob"]', 'users = ["bob"]\ngroups = ["holdingpen"]'))
    reload_mark = journal_mark(ct)
    ct.run(["systemctl", "reload", SERVICE])
    wait_for("the reload", lambda: journal(ct, "HOLDINGPEN_EVENT=reloaded", after=reload_mark))
    assert gatekeeper(ct, "alice").returncode == 0

    # polkit back: it decides again at once, without a restart of holdingpen.
    ct.run(["systemctl", "unmask", POLKIT])
    wait_until_full(ct)
    for user in ("bob", "carol"):
        done = gatekeeper(ct, user)
        assert (done.returncode, done.stderr) == (77, f"gatekeeper: {WHO_MAY} (not-authorized)\n")
    assert gatekeeper(ct, "alice").returncode == 0

