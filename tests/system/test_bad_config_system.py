"""A mistake in holdingpen.toml never costs the pool, under real systemd (issue 9).

A daemon that holds reservations or a loan in systemd's descriptor store
keeps serving on the last good configuration when it is restarted on a bad
file, and says what is wrong: once in the journal, in STATUS= and in
`holdingpen status` until the file is mended. A first start with a bad file
and nothing to keep still refuses, with the one line and exit status 78.
Each test leaves the shared container as the installer left it: no config
file, the default pool, the daemon running.
"""

import json
import time

import pytest

from conftest import install_from_readme
from daemonctl import SERVICE, SOCKET, borrowing, counts, journal, journal_mark, show, wait_for

CONFIG_DIR = "/etc/holdingpen"
CONFIG_PATH = f"{CONFIG_DIR}/holdingpen.toml"
DEFAULT_STATUS_TEXT = "memory 1/1 held (256 MiB)"   # no config file
GOOD = '[memory]\nsize = "64M"\ncount = 2\n\n[[disk]]\npath = "/var/tmp"\nsize = "64M"\n'
GOOD_COUNTS = {"memory": (2, 1, 1), "disk:/var/tmp": (1, 1, 0)}    # alice holds one
BAD = GOOD.replace("count = 2", "count = 2\ncolour = \"red\"")
PROBLEM = f"{CONFIG_PATH}: memory.colour: unknown key; expected one of count, size"
ANSWER_S = 1.0         # `holdingpen status` answers within this, bad file or not
CONFIG_EXIT = "78"


def write(ct, text):
    ct.path(CONFIG_DIR).mkdir(exist_ok=True)
    ct.path(CONFIG_PATH).write_text(text)


def fresh(ct):
    """Stop (which empties the store) and start on whatever file there is now."""
    ct.run(["systemctl", "stop", SERVICE])
    ct.run(["systemctl", "reset-failed", SERVICE])
    return ct.run(["systemctl", "start", SERVICE], check=False)


def timed_status(ct, *options):
    started = time.monotonic()
    done = ct.run(["holdingpen", "status", *options], user="carol")
    return done.stdout, time.monotonic() - started


@pytest.fixture
def good_pool(ct):
    """The daemon on GOOD from an empty store; afterwards no file, the default pool."""
    assert not ct.path(CONFIG_PATH).exists(), f"{CONFIG_PATH} left by an earlier test"
    write(ct, GOOD)
    assert fresh(ct).returncode == 0
    yield
    ct.path(CONFIG_PATH).unlink(missing_ok=True)
    if ct.path(CONFIG_DIR).exists():
        ct.path(CONFIG_DIR).rmdir()
    fresh(ct)
    wait_for("the default pool again", lambda: show(ct, "StatusText")["StatusText"],
             lambda text: text == DEFAULT_STATUS_TEXT)


def assert_kept_and_told(ct, before, mark, restarted=True):
    """The pool and alice's loan are all there, the store as full as before,
    and the daemon answers at once, naming the bad key."""
    now = show(ct, "MainPID", "ActiveState", "SubState", "NFileDescriptorStore", "StatusText")
    assert (now["ActiveState"], now["SubState"]) == ("active", "running")
    assert (now["MainPID"] != before["MainPID"]) is restarted
    assert now["NFileDescriptorStore"] == before["NFileDescriptorStore"] == "4"
    out, took_s = timed_status(ct, "--json")
    assert took_s < ANSWER_S, f"holdingpen status took {took_s:.1f} s"
    reply = json.loads(out)
    assert counts(reply) == GOOD_COUNTS
    assert [loan["user"] for loan in reply["loans"]] == ["alice"]
    if restarted:
        assert reply["config_error"] == PROBLEM
        assert now["StatusText"].endswith(
            f"; bad configuration, running on the last good one: {PROBLEM}")
        text, _ = timed_status(ct)
        assert text.startswith(f"bad configuration, running on the last good one: {PROBLEM}\n"
                               "  mend the file, then: systemctl reload holdingpen\n")
        told = journal(ct, "HOLDINGPEN_EVENT=config-refused", after=mark)
        assert [e["MESSAGE"].split("; serving on")[0] for e in told] == [PROBLEM]
        assert [e["PRIORITY"] for e in told] == ["3"]
    return reply


@pytest.mark.usefixtures("good_pool")
def test_a_restart_on_a_bad_file_keeps_every_reservation_and_loan_until_it_is_mended(ct):
    with borrowing(ct, "alice") as job:
        before = show(ct, "MainPID", "NFileDescriptorStore", "NRestarts")
        write(ct, BAD)
        mark = journal_mark(ct)

        done = ct.run(["systemctl", "restart", SERVICE], check=False)

        assert done.returncode == 0, done.stderr
        assert_kept_and_told(ct, before, mark)
        # It stays up: no restart loop behind our back.
        time.sleep(2)
        assert show(ct, "NRestarts")["NRestarts"] == before["NRestarts"]
        assert len(journal(ct, "HOLDINGPEN_EVENT=config-refused", after=mark)) == 1

        # Mended: a reload takes it, and nothing more is said of the old mistake.
        write(ct, GOOD.replace('size = "64M"\ncount = 2', 'size = "64M"\ncount = 3'))
        ct.run(["systemctl", "reload", SERVICE])
        reply = wait_for("the mended file taken", lambda: json.loads(timed_status(ct, "--json")[0]),
                         lambda r: counts(r)["memory"][0] == 3)
        assert reply["config_error"] is None
        wait_for("STATUS= without the mistake", lambda: show(ct, "StatusText")["StatusText"],
                 lambda text: "bad configuration" not in text)

        # And the mended file is the last good one now: a restart on a new mistake keeps 3.
        write(ct, BAD)
        ct.run(["systemctl", "restart", SERVICE])
        reply = json.loads(timed_status(ct, "--json")[0])
        assert counts(reply)["memory"] == (3, 2, 1) and reply["config_error"] == PROBLEM
        assert job.finish()[0] == 3


@pytest.mark.usefixtures("good_pool")
def test_a_restart_with_the_mended_file_takes_it(ct):
    with borrowing(ct, "alice") as job:
        write(ct, BAD)
        ct.run(["systemctl", "restart", SERVICE])
        write(ct, GOOD)
        ct.run(["systemctl", "restart", SERVICE])
        reply = json.loads(timed_status(ct, "--json")[0])
        assert reply["config_error"] is None and counts(reply) == GOOD_COUNTS
        assert "bad configuration" not in show(ct, "StatusText")["StatusText"]
        assert job.finish()[0] == 3


@pytest.mark.usefixtures("good_pool")
def test_installing_again_on_a_bad_file_keeps_every_reservation_and_loan(ct):
    with borrowing(ct, "alice") as job:
        before = show(ct, "MainPID", "NFileDescriptorStore")
        write(ct, BAD)
        mark = journal_mark(ct)

        done = install_from_readme(ct, check=False)

        # The installer refuses to go on with the file, and says why; nothing restarted.
        assert done.returncode != 0 and PROBLEM in done.stderr
        assert assert_kept_and_told(ct, before, mark, restarted=False)["config_error"] is None
        # An administrator's restart by hand after that keeps it all too.
        ct.run(["systemctl", "restart", SERVICE])
        assert_kept_and_told(ct, before, mark)
        assert job.finish()[0] == 3


def test_a_first_start_on_a_bad_file_with_nothing_to_keep_refuses_in_one_line(ct):
    assert not ct.path(CONFIG_PATH).exists(), f"{CONFIG_PATH} left by an earlier test"
    write(ct, BAD)
    mark = journal_mark(ct)
    try:
        assert fresh(ct).returncode != 0
        assert show(ct, "ExecMainStatus")["ExecMainStatus"] == CONFIG_EXIT
        said = [e["MESSAGE"] for e in journal(ct, after=mark)
                if e.get("SYSLOG_IDENTIFIER") == "holdingpen" and "MESSAGE" in e]
        assert f"holdingpen: {PROBLEM}" in said
        # A client is told why within the request timeout (10 s), not left to hang.
        started = time.monotonic()
        done = ct.run(["holdingpen", "status"], user="carol", check=False)
        took_s = time.monotonic() - started
        assert (done.returncode, done.stderr) == (
            69, f"holdingpen: the daemon cannot start: {PROBLEM} (bad-config)\n")
        assert took_s < 10, f"told after {took_s:.1f} s"
    finally:
        ct.path(CONFIG_PATH).unlink()
        ct.path(CONFIG_DIR).rmdir()
        ct.run(["systemctl", "reset-failed", SOCKET])
        ct.run(["systemctl", "start", SOCKET])
        fresh(ct)
    wait_for("the default pool again", lambda: show(ct, "StatusText")["StatusText"],
             lambda text: text == DEFAULT_STATUS_TEXT)
