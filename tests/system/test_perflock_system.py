"""perflock, pls and wholock as users meet them: installed by the README's
command in a booted machine, run by ordinary users against /run/perflock.

A job that holds the machine here is `sh -c 'echo holding; read _; exit 3'`:
its first line on stdout proves it runs (so it holds the lock), and it ends
with status 3, none of perflock's own codes, when we close its stdin. No
sleeps and no polling stand in for that handshake.
"""

import json
import stat
import time
from contextlib import contextmanager

HOLD = ["sh", "-c", "echo holding; read _; exit 3"]
QUEUE_DIR = "/run/perflock.d"
LOCK = "/run/perflock"
INSTALLED_TMPFILES = "/usr/lib/tmpfiles.d/perflock.conf"


@contextmanager
def holding(ct, user, tool, *options):
    """A background `tool [options] HOLD` run by user, holding the machine inside the block."""
    job = ct.popen([tool, *options, *HOLD], user=user)
    try:
        assert job.read_line() == "holding"
        yield job
    finally:
        job.stop()  # no-op if the test already let it finish


def wholock_json(ct, user):
    return json.loads(ct.run(["wholock", "--json"], user=user).stdout)


def assert_lock_files(ct):
    lock = ct.path(LOCK).lstat()
    assert stat.S_ISREG(lock.st_mode)
    assert stat.S_IMODE(lock.st_mode) == 0o666
    assert (lock.st_uid, lock.st_gid) == (0, 0)
    queue = ct.path(QUEUE_DIR).lstat()
    assert stat.S_ISDIR(queue.st_mode)
    assert stat.S_IMODE(queue.st_mode) == 0o1777
    assert (queue.st_uid, queue.st_gid) == (0, 0)


def test_install_creates_the_lock_files(ct):
    assert_lock_files(ct)


def test_installed_tmpfiles_config_alone_recreates_them_at_boot(ct):
    assert ct.path(INSTALLED_TMPFILES).is_file()
    ct.run(["rm", "-r", LOCK, QUEUE_DIR])
    # What systemd-tmpfiles-setup.service runs at boot, under a hostile umask:
    # the modes must come from the config, not from whoever runs it.
    ct.run(["sh", "-c", "umask 077 && systemd-tmpfiles --create"])
    assert_lock_files(ct)
    config = ct.run(["systemd-tmpfiles", "--cat-config"]).stdout
    assert f"# {INSTALLED_TMPFILES}" in config


def test_exclusive_job_keeps_other_users_out(ct):
    with holding(ct, "alice", "perflock", "-m", "timing runs") as alice:
        busy = ct.run(["perflock", "-n", "true"], user="bob", check=False)
        assert busy.returncode == 1
        assert "alice" in busy.stderr
        assert ct.run(["pls", "-n", "true"], user="bob", check=False).returncode == 1

        assert alice.finish()[0] == 3  # EOF ends the job; perflock passes on its status
    # Released when the job ended: nothing was left holding the lock.
    assert ct.run(["perflock", "-n", "true"], user="bob", check=False).returncode == 0


def test_shared_jobs_share_and_keep_exclusive_out(ct):
    with holding(ct, "alice", "pls"):
        assert ct.run(["pls", "-n", "true"], user="bob", check=False).returncode == 0
        busy = ct.run(["perflock", "-n", "true"], user="carol", check=False)
        assert busy.returncode == 1
        assert "alice" in busy.stderr


def test_wholock_shows_both_shared_holders_to_a_third_user(ct):
    with holding(ct, "alice", "pls", "-m", "nightly build") as alice, \
            holding(ct, "bob", "pls") as bob:
        text = ct.run(["wholock"], user="carol").stdout
        for user in ("alice", "bob"):
            row = next(line for line in text.splitlines() if line.split()[0] == user)
            assert "shared" in row.split() and "holding" in row.split()

        rows = wholock_json(ct, "carol")
        now = time.time()
        assert [r["user"] for r in rows] == ["alice", "bob"]
        for row, job in zip(rows, (alice, bob)):
            assert set(row) == {"pid", "user", "mode", "state", "since", "command", "message"}
            assert (row["mode"], row["state"]) == ("shared", "holding")
            assert row["pid"] in job_pids(ct, job)
            assert now - 60 < row["since"] <= now
            assert "read _" in row["command"]
        assert rows[0]["message"] == "nightly build"


def job_pids(ct, job):
    """The wrapper's pid in the container and its children's (either may own the lock)."""
    children = ct.path(f"/proc/{job.pid}/task/{job.pid}/children").read_text().split()
    return {job.pid, *map(int, children)}


def test_no_job_is_left_holding(ct):
    # Guards the shared container: the tests above left nothing behind.
    assert wholock_json(ct, "carol") == []
    assert ct.run(["perflock", "-n", "true"], user="carol", check=False).returncode == 0
