"""The daemon's metrics, as its loop keeps them: what it counts, where the
counts are kept across restarts, and when the metrics file is written.

Borrows, returns and shortfalls are counted from the events the daemon tells
(one place sees them all); refusals where an error reply is sent. The counts
go into the descriptor store's state with the loans, so a restart or a crash
keeps them; a stop empties the store, and so counts from 0 again.
"""

import time

from holdingpen.pen import metrics
from holdingpen.pen.metricsfile import MetricsFile

EVERY_S = 0.1     # a change reaches the file within this; a flood's costs one render each


class DaemonMetrics:
    """Args:
        textfile_dir: config's [metrics] textfile_dir ("" for no file).
        store: fdstore.FdStore or NoStore; its .counters are the last run's.
        events: events.Events, to journal a file that cannot be written.
    """

    def __init__(self, textfile_dir, store, events):
        self.store, self.events = store, events
        self.started_s = time.time()
        self.counters = metrics.Counters(self.started_s, store.counters)
        self.kept = self.counters.as_dict()
        self.file = self._file(textfile_dir)
        self.write_at, self.due = 0.0, True

    def counting(self, events):
        """events, also counting the borrows, returns and shortfalls it is told of."""
        def counted(event, message, **fields):
            key = metrics.EVENT_COUNTERS.get(event)
            if key is not None:
                self.counters.count(key, fields.get("kind"))
            events(event, message, **fields)
        return counted

    def refused(self, code):
        """An error reply with code was sent (every one, journalled or not)."""
        self.counters.count("refusals", code)

    def status(self):
        """What the status reply adds: {"started", "counters"}."""
        return {"started": self.started_s, "counters": self.counters.as_dict()}

    def update(self, now, policy, protection=None):
        """Once per loop pass: the counts into the store if they changed, the
        file if due; at most every EVERY_S (with a thousand loans, it takes
        milliseconds). protection() gives policy.status_loans's protection
        argument, asked for only when the file is written."""
        self.due = True            # what woke the loop may have changed them
        if now < self.write_at:
            return
        self.write_at, self.due = now + EVERY_S, False
        self._keep()
        # Loans as root's status shows them; a loan's "protected" is what
        # metrics.py turns into holdingpen_loan_protected.
        loans = policy.status_loans(0, protection() if protection else None)
        self.file.update({"ready": policy.ready, "pools": policy.snapshots(),
                          "loans": loans, **self.status()}, now)

    def next_at(self, now):
        """When update() is next due (monotonic), or None: no file."""
        if not self.file.directory:
            return None
        return self.write_at if self.due else now + self.file.due_in(now)

    def reconfigure(self, textfile_dir):
        """A reload: another directory (or none) empties the old file."""
        if textfile_dir != self.file.directory:
            self.file.clear()
            self.file = self._file(textfile_dir)

    def stopping(self):
        """A clean exit: the last counts kept (for a restart), the file emptied."""
        self._keep()
        self.file.clear()

    def _keep(self):
        counts = self.counters.as_dict()
        if counts != self.kept:
            self.kept = counts
            self.store.keep_counters(counts)

    def _file(self, directory):
        return MetricsFile(directory, on_error=lambda message: self.events("failed", message))
