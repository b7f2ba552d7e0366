"""Helpers for tests that start real perflock processes and watch the real queue."""

import os
import signal
import subprocess

import pytest

from holdingpen.lock import proclocks, who
from helpers import wait_until  # noqa: F401  (where the perflock tests import it from)


def blocked(pid):
    """Whether pid is blocked in flock(2) right now."""
    return any(lk.pid == pid and lk.waiting for lk in proclocks.read())


def rows(lock, state=None):
    return [r for r in who.survey(str(lock)) if state is None or r["state"] == state]


def pids(lock, state=None):
    return [r["pid"] for r in rows(lock, state)]


class Jobs:
    """Processes a test starts; whatever of them still runs at the end is killed."""

    def __init__(self, env):
        self.env = env
        self.started = []

    def start(self, argv, **kw):
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.PIPE)
        # A group of its own, so that stop() also ends what a job started
        # (flock(1)'s command, for one, inherits its lock).
        p = subprocess.Popen(argv, env=self.env, start_new_session=True, **kw)
        self.started.append(p)
        return p

    def run(self, argv, **kw):
        kw.setdefault("env", self.env)
        kw.setdefault("timeout", 60)
        return subprocess.run(argv, capture_output=True, text=True, **kw)

    def queue(self, lock, argv, state="waiting", **kw):
        """Start a job and wait until it shows in the queue in `state`.

        A waiter counts once it is blocked in flock(2), not merely queued, so
        that it has said what it waits for before the test goes on.
        """
        p = self.start(argv, **kw)
        in_state = (lambda: p.pid in pids(lock, state) and blocked(p.pid)) if state == "waiting" \
            else (lambda: p.pid in pids(lock, state))
        wait_until(lambda: in_state() or p.poll() is not None, f"{argv} to be {state}")
        assert p.poll() is None, f"{argv} exited with {p.returncode} instead of queueing"
        return p

    def stop(self):
        for p in self.started:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
            if p.stderr:
                p.stderr.close()


def process_state(pid):
    """The state letter of a process (R, S, Z, ...), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def running(pid):
    return process_state(pid) not in (None, "Z", "X")


def nobody():
    """Run a command as the unprivileged user nobody (tests run as root)."""
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run commands as another user")
