"""The Holding Pen as admins and users meet it: the installed units under the
container's own systemd and journald, used with systemctl, journalctl,
gatekeeper and `holdingpen status`.

Each test starts from the same small pool (POOL_CONFIG, written by the
`small_pool` fixture, with the descriptor store emptied by a stop and a start)
and leaves
the shared container as the installer left it: no config file, the default
pool, the daemon running.

A borrower here is `gatekeeper sh -c 'echo holding; read _; exit 3'` run by
alice: gatekeeper borrows before it execs sh, so the line "holding" proves
the loan is made, and closing its stdin ends it with status 3. After a
handshake like that, a `holdingpen status` answer proves the daemon has
finished with the loan, its journal entry included, since it serves one
request at a time. Polling with a deadline is left for what happens behind
the daemon's back: refills, restarts by systemd, reloads.
"""

import json
import stat
import time

import pytest

from conftest import USERS
from daemonctl import SERVICE, SOCKET, borrowing, counts, events, journal, journal_mark, show, wait_for

UNIT_DIR = "/lib/systemd/system"
CONFIG_DIR = "/etc/holdingpen"
CONFIG_PATH = f"{CONFIG_DIR}/holdingpen.toml"
MIB = 1 << 20
CHUNK_BYTES = 64 * MIB
POOL_CONFIG = """\
[memory]
size = "64M"
count = 2

[[disk]]
path = "/var/tmp"
size = "64M"
count = 1
"""
DISK = "disk:/var/tmp"
FULL_STATUS_TEXT = "memory 2/2 held (128 MiB); disk /var/tmp 1/1 held (64 MiB)"
DEFAULT_STATUS_TEXT = "memory 1/1 held (256 MiB)"   # no config file
# Fixed forever, so that `journalctl MESSAGE_ID=...` keeps finding them (events.py).
MESSAGE_ID_LENT = "2cabcc72c2cd4c1589e4f0cada6ab4c8"
MESSAGE_ID_CONFIG_REFUSED = "c869fe7717b44da6be8c1b79c67b05a3"
CLIENT_EVENTS = {"lent", "returned", "refused", "bad-client"}
ONLOOKER = "carol"     # any user may ask for the status


# ---- what an admin looks at ----


def status_text(ct):
    """What the daemon last told systemd with STATUS=."""
    return show(ct, "StatusText")["StatusText"]


def status(ct, user=ONLOOKER):
    """`holdingpen status --json`, asked by an ordinary user."""
    return json.loads(ct.run(["holdingpen", "status", "--json"], user=user).stdout)


def pool(reply, name):
    return next(p for p in reply["pools"] if p["name"] == name)



def wait_for_counts(ct, expected):
    """Wait until status says {pool: (count, held, lent)} is expected; return the reply."""
    return wait_for(f"pools {expected}", lambda: status(ct),
                    lambda reply: counts(reply) == expected)


def restart_empty(ct):
    """Stop and start the daemon: the stop empties the descriptor store, so the
    start reserves the configured pool from nothing (start waits for READY=1).

    reset-failed zeroes systemd's start counter, so that however often the
    tests start the service, StartLimitBurst= never refuses a start.
    """
    ct.run(["systemctl", "stop", SERVICE])
    ct.run(["systemctl", "reset-failed", SERVICE])
    ct.run(["systemctl", "start", SERVICE])


def write_config(ct, text):
    ct.path(CONFIG_DIR).mkdir(exist_ok=True)
    ct.path(CONFIG_PATH).write_text(text)


# ---- what a user runs ----

@pytest.fixture
def small_pool(ct):
    """The daemon serving POOL_CONFIG from an empty store; afterwards the default again."""
    assert not ct.path(CONFIG_PATH).exists(), f"{CONFIG_PATH} left by an earlier test"
    write_config(ct, POOL_CONFIG)
    restart_empty(ct)
    yield
    ct.path(CONFIG_PATH).unlink(missing_ok=True)
    ct.path(CONFIG_DIR).rmdir()
    restart_empty(ct)
    wait_for("the default pool again", lambda: status_text(ct),
             lambda text: text == DEFAULT_STATUS_TEXT)


# ---- 1. enabled and booted: the pool is held before any client ----

@pytest.mark.usefixtures("small_pool")
def test_pool_is_held_at_boot_before_any_client(ct):
    enabled = ct.run(["systemctl", "is-enabled", SOCKET, SERVICE]).stdout.split()
    assert enabled == ["enabled", "enabled"]

    ct.reboot()

    # Nothing has connected in this boot: only systemctl and journalctl look.
    svc = show(ct, "ActiveState", "SubState", "ActiveEnterTimestampMonotonic")
    assert (svc["ActiveState"], svc["SubState"]) == ("active", "running")
    # It came up in the boot transaction (multi-user.target wants it), not
    # on a first connection later: active before the boot finished.
    boot = ct.run(["systemctl", "show", "-pFinishTimestampMonotonic"]).stdout
    finished_us = int(boot.strip().split("=", 1)[1])
    assert 0 < int(svc["ActiveEnterTimestampMonotonic"]) <= finished_us
    # READY=1 comes only with the pool full; STATUS= is its own message, so it may trail.
    wait_for("StatusText shows the full pool", lambda: status_text(ct),
             lambda text: text == FULL_STATUS_TEXT)
    # Three reservations and the "state" memfd wait in systemd's store.
    assert show(ct, "NFileDescriptorStore")["NFileDescriptorStore"] == "4"
    door = ct.path("/run/holdingpen.socket").lstat()     # a fresh /run: systemd made it again
    assert stat.S_ISSOCK(door.st_mode) and stat.S_IMODE(door.st_mode) == 0o666

    entries = journal(ct, this_boot=True)
    assert not CLIENT_EVENTS & set(events(entries)), events(entries)
    # This container's cgroups are hybrid: the daemon says once, first, that loans
    # are not protected (README "Protected loans").
    assert events(entries) == ["unprotected", "started", "reserved", "reserved", "reserved"]
    reserved = [e["HOLDINGPEN_KIND"] for e in entries if e.get("HOLDINGPEN_EVENT") == "reserved"]
    assert sorted(reserved) == [DISK, "memory", "memory"]

    # The first client finds it all there.
    reply = status(ct)
    assert reply["ready"] is True
    assert counts(reply) == {"memory": (2, 2, 0), DISK: (1, 1, 0)}
    assert reply["loans"] == []


# ---- 2. an ordinary user borrows and returns ----

@pytest.mark.usefixtures("small_pool")
def test_gatekeeper_lends_to_an_ordinary_user_and_the_pool_refills(ct):
    with borrowing(ct, "alice") as job:
        reply = status(ct)
        assert counts(reply) == {"memory": (2, 1, 1), DISK: (1, 1, 0)}
        [loan] = reply["loans"]
        assert (loan["kind"], loan["user"], loan["uid"], loan["pid"]) == \
            ("memory", "alice", USERS["alice"], job.pid)
        assert (loan["size"], loan["fd"]) == (CHUNK_BYTES, False)
        assert abs(time.time() - loan["since"]) < 60

        assert job.finish()[0] == 3   # gatekeeper became sh: its status is sh's
    reply = wait_for_counts(ct, {"memory": (2, 2, 0), DISK: (1, 1, 0)})
    assert reply["loans"] == []


@pytest.mark.usefixtures("small_pool")
def test_gatekeeper_fd_hands_the_reservation_itself_to_the_command(ct):
    # The memfd's name, its size and its allocated bytes, as CMD sees them.
    script = ('fd=$HOLDINGPEN_MEMORY_FD; echo holding; readlink /proc/self/fd/$fd; '
              'stat -L -c "%s %b %B" /proc/self/fd/$fd; read _; exit 3')
    job = ct.popen(["gatekeeper", "--fd", "sh", "-c", script], user="alice")
    try:
        assert job.read_line() == "holding"
        target = job.read_line()
        size_bytes, blocks, block_bytes = map(int, job.read_line().split())
        assert target.startswith("/memfd:holdingpen-memory"), target
        assert size_bytes == CHUNK_BYTES
        assert blocks * block_bytes >= CHUNK_BYTES    # allocated, not a sparse promise

        reply = status(ct)
        assert counts(reply)["memory"] == (2, 1, 1)
        [loan] = reply["loans"]
        assert (loan["user"], loan["uid"], loan["pid"], loan["fd"]) == \
            ("alice", USERS["alice"], job.pid, True)
        assert job.finish()[0] == 3
    finally:
        job.stop()
    wait_for_counts(ct, {"memory": (2, 2, 0), DISK: (1, 1, 0)})


# ---- 3. the journal says who borrowed ----

@pytest.mark.usefixtures("small_pool")
def test_journal_records_the_borrower_by_uid(ct):
    mark = journal_mark(ct)
    with borrowing(ct, "alice") as job:
        status(ct)        # the daemon has finished the loan, journal entry and all
        lent = journal(ct, "HOLDINGPEN_EVENT=lent", after=mark)
        assert len(lent) == 1, lent
        entry = lent[0]
        assert entry["MESSAGE_ID"] == MESSAGE_ID_LENT
        assert entry["HOLDINGPEN_CLIENT_UID"] == str(USERS["alice"])
        assert entry["HOLDINGPEN_CLIENT_PID"] == str(job.pid)
        assert (entry["HOLDINGPEN_KIND"], entry["HOLDINGPEN_BYTES"]) == ("memory", str(CHUNK_BYTES))
        assert entry["_SYSTEMD_UNIT"] == SERVICE
        assert "alice" in entry["MESSAGE"]
        # An admin who knows only the message id finds the same entry.
        by_id = journal(ct, f"MESSAGE_ID={MESSAGE_ID_LENT}", after=mark)
        assert [e["__CURSOR"] for e in by_id] == [entry["__CURSOR"]]
        assert job.finish()[0] == 3
    wait_for_counts(ct, {"memory": (2, 2, 0), DISK: (1, 1, 0)})
    returned = journal(ct, "HOLDINGPEN_EVENT=returned", after=mark)
    assert [e["HOLDINGPEN_CLIENT_UID"] for e in returned] == [str(USERS["alice"])]


# ---- 4. a restart or a crash keeps the pool and the borrower ----

@pytest.mark.usefixtures("small_pool")
@pytest.mark.parametrize("how", [["systemctl", "restart", "holdingpen"],
                                 ["systemctl", "kill", "-s", "KILL", "holdingpen"]],
                         ids=["restart", "kill-KILL"])
def test_restart_keeps_the_pool_and_the_borrower(ct, how):
    with borrowing(ct, "alice") as job:
        before = status(ct)
        assert counts(before) == {"memory": (2, 1, 1), DISK: (1, 1, 0)}
        [loan] = before["loans"]
        old = show(ct, "MainPID", "NRestarts", "NFileDescriptorStore")
        # pools + loans + 1: a memory chunk, the disk chunk, alice's connection, "state".
        assert old["NFileDescriptorStore"] == "4"
        mark = journal_mark(ct)

        ct.run(how)
        # restart returns once the new process said READY=1; after SIGKILL,
        # Restart=on-failure starts one RestartSec=1 later.
        new = wait_for("a new main process, ready",
                       lambda: show(ct, "MainPID", "NRestarts", "ActiveState", "SubState"),
                       lambda now: now["MainPID"] not in ("0", old["MainPID"])
                       and (now["ActiveState"], now["SubState"]) == ("active", "running"))
        if how[1] == "kill":
            assert int(new["NRestarts"]) == int(old["NRestarts"]) + 1

        after = status(ct)
        assert after["ready"] is True
        assert counts(after) == counts(before)
        [kept] = after["loans"]
        for key in ("kind", "user", "uid", "pid", "since", "size", "fd"):
            assert kept[key] == loan[key], key
        assert show(ct, "NFileDescriptorStore")["NFileDescriptorStore"] == "4"
        since_restart = journal(ct, after=mark)
        adopted = [e for e in since_restart if e.get("HOLDINGPEN_EVENT") == "adopted"]
        assert len(adopted) == 1, events(since_restart)
        assert adopted[0]["HOLDINGPEN_LOANS"] == "1"
        assert adopted[0]["MESSAGE"] == ("kept across the restart: 2 reservations, 1 loan; "
                                         "dropped 0 that no longer fit")

        # alice's command ends after the restart: the new daemon sees her go.
        mark_end = journal_mark(ct)
        assert job.finish()[0] == 3
    wait_for_counts(ct, {"memory": (2, 2, 0), DISK: (1, 1, 0)})
    after_end = journal(ct, after=mark_end)
    assert events(after_end) == ["returned", "reserved"]
    returned, reserved = (e for e in after_end if "HOLDINGPEN_EVENT" in e)
    assert returned["HOLDINGPEN_CLIENT_UID"] == str(USERS["alice"])
    assert reserved["HOLDINGPEN_KIND"] == "memory"
    assert show(ct, "NFileDescriptorStore")["NFileDescriptorStore"] == "4"

    # Kept, not made again: no reservation was faulted in between the
    # restart and alice's return, and both held chunks were adopted.
    refaulted = [e["HOLDINGPEN_KIND"] for e in since_restart
                 if e.get("HOLDINGPEN_EVENT") == "reserved"]
    assert refaulted == [], f"re-reserved after the restart: {refaulted}; " \
                            f"adopted said: {adopted[0]['MESSAGE']!r}"
    assert adopted[0]["HOLDINGPEN_CHUNKS"] == "2"


# ---- 5. reload ----

@pytest.mark.usefixtures("small_pool")
def test_reload_applies_a_changed_config(ct):
    main_pid = show(ct, "MainPID")["MainPID"]
    mark = journal_mark(ct)
    write_config(ct, POOL_CONFIG.replace("count = 2", "count = 3"))

    ct.run(["systemctl", "reload", "holdingpen"])

    reply = wait_for_counts(ct, {"memory": (3, 3, 0), DISK: (1, 1, 0)})
    assert pool(reply, "memory")["size"] == CHUNK_BYTES
    wait_for("StatusText shows three memory reservations", lambda: status_text(ct),
             lambda text: text == "memory 3/3 held (192 MiB); disk /var/tmp 1/1 held (64 MiB)")
    svc = show(ct, "MainPID", "ActiveState", "NFileDescriptorStore")
    assert (svc["MainPID"], svc["ActiveState"]) == (main_pid, "active")   # reloaded, not restarted
    assert svc["NFileDescriptorStore"] == "5"
    entries = journal(ct, after=mark)
    assert events(entries) == ["reloaded", "reserved"]      # only the one new chunk is made


@pytest.mark.usefixtures("small_pool")
def test_reload_refuses_an_invalid_config_and_keeps_the_pool(ct):
    before = status(ct)
    old = show(ct, "MainPID", "NFileDescriptorStore", "StatusText")
    mark = journal_mark(ct)
    write_config(ct, POOL_CONFIG.replace("count = 2", 'count = "many"'))

    assert ct.run(["systemctl", "reload", "holdingpen"], check=False).returncode != 0

    refused = wait_for("a config-refused entry in the journal",
                       lambda: journal(ct, "HOLDINGPEN_EVENT=config-refused", after=mark))
    assert len(refused) == 1
    entry = refused[0]
    assert entry["MESSAGE_ID"] == MESSAGE_ID_CONFIG_REFUSED
    assert entry["PRIORITY"] == "3"
    assert CONFIG_PATH in entry["MESSAGE"] and "memory.count" in entry["MESSAGE"]
    # Back from "reloading" to "active" (READY=1), the same process, the same pool.
    wait_for("active again after the refused reload", lambda: show(ct, "ActiveState"),
             lambda svc: svc["ActiveState"] == "active")
    now = show(ct, "MainPID", "NFileDescriptorStore", "StatusText")
    assert now == old
    after = status(ct)
    assert after["pools"] == before["pools"]
    assert events(journal(ct, after=mark)) == ["config-refused"]


# ---- 6. the units as systemd reads them ----

def test_without_jeepney_the_daemon_says_so_and_goes_on_lending(ct):
    # The asker thread warms up its polkit connection first; with jeepney gone
    # (an empty directory over it, for this service only) the import fails. The
    # daemon must go on (root's borrow needs no polkit) and, once it must ask about
    # someone, journal that polkit cannot be asked, naming the package.
    jeepney = ct.run(["python3", "-c", "import jeepney, os; print(os.path.dirname(jeepney.__file__))"]
                     ).stdout.strip()
    dropin = ct.path(f"/run/systemd/system/{SERVICE}.d/no-jeepney.conf")
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(f"[Service]\nTemporaryFileSystem={jeepney}:ro\n")
    ct.run(["systemctl", "daemon-reload"])
    try:
        mark = journal_mark(ct)
        restart_empty(ct)
        done = ct.run(["gatekeeper", "--strict", "true"], check=False, timeout_s=45)
        assert (done.returncode, done.stderr) == (0, "")
        # alice is asked about: with no polkit to ask, the (empty) allow-list decides, at once.
        done = ct.run(["gatekeeper", "--strict", "true"], user="alice", check=False, timeout_s=45)
        assert done.returncode == 77 and "(not-authorized)" in done.stderr, done.stderr
        said = [e["MESSAGE"] for e in journal(ct, "HOLDINGPEN_EVENT=no-polkit", after=mark)]
        assert len(said) == 1 and "the D-Bus library jeepney is missing; install it with: " \
            "apt install python3-jeepney" in said[0], said
        assert journal(ct, "HOLDINGPEN_EVENT=failed", after=mark) == []
        assert show(ct, "ActiveState")["ActiveState"] == "active"
    finally:
        dropin.unlink()
        ct.run(["systemctl", "daemon-reload"])
        restart_empty(ct)


def test_installed_units_verify_without_a_warning(ct):
    # verify exits 0 on unknown keys and other warnings, so stderr is the verdict.
    done = ct.run(["systemd-analyze", "verify", f"{UNIT_DIR}/{SOCKET}", f"{UNIT_DIR}/{SERVICE}"],
                  check=False)
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "")
