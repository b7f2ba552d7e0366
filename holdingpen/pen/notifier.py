"""What the daemon tells systemd as it goes: READY=1 once, STATUS= when it changes, WATCHDOG=1.

A worker thread that died leaves borrows or refills waiting for ever, so then
no more WATCHDOG=1: systemd restarts the daemon, and its store keeps the
loans. Run by hand there is no watchdog to stop: the daemon is told to stop.
"""

import os


class Notifier:
    """Args: notify (sd_notify); environ: WATCHDOG_USEC and WATCHDOG_PID come from it."""

    def __init__(self, notify, environ):
        self.notify = notify
        self.status_text = None
        self.note = None               # said after the pools in STATUS=, e.g. a bad configuration
        usec, pid = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID", str(os.getpid()))
        self.watchdog_s = int(usec) / 2e6 if usec and pid == str(os.getpid()) else None
        self.watchdog_at = 0.0

    def tell(self, now, policy, worker_died):
        """Say what changed. Returns False when the daemon should stop (a worker died, by hand)."""
        if policy.became_ready():
            self.notify("READY=1")
        text = policy.status_line() + (f"; {self.note}" if self.note else "")
        if text != self.status_text:
            self.status_text = text
            self.notify(f"STATUS={text}")
        if not self.watchdog_s:
            return not worker_died
        if now >= self.watchdog_at:
            if not worker_died:
                self.notify("WATCHDOG=1")
            self.watchdog_at = now + self.watchdog_s
        return True

    def next_at(self):
        """When tell() is next due for the watchdog (monotonic), or None."""
        return self.watchdog_at if self.watchdog_s else None
