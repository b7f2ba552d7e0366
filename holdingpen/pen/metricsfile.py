"""The daemon's metrics file for node_exporter's textfile collector: when to
write it and what to do when it cannot. The daemon calls update() from its
loop with a fresh snapshot; this writes only when the text changed or the
last write is REFRESH_S old, so that node_textfile_mtime_seconds shows a live
daemon and a stale file means a dead one.

The writing itself is passed in (common.openmetrics.write_textfile, or a
test's stand-in), as is the clock.
"""

import errno
import os

from holdingpen.common import openmetrics
from holdingpen.pen import metrics

REFRESH_S = 15.0


class MetricsFile:
    """Args:
        directory: where to write FILE_NAME; "" turns the file off. A missing
            directory (no node_exporter here) means no file, silently.
        write: write(directory, name, text), atomic.
        on_error: on_error(message), called once per kind of failure (not
            on every write), e.g. to journal it.
    """

    def __init__(self, directory, write=openmetrics.write_textfile, on_error=None,
                 file_name=metrics.FILE_NAME):
        self.directory, self.file_name = directory, file_name
        self.write, self.on_error = write, on_error or (lambda message: None)
        self.last_text, self.written_at = None, None
        self.last_error = None

    def update(self, snapshot, now):
        """Write the snapshot's metrics if they changed or are REFRESH_S old.

        Args:
            snapshot: see metrics.py; now: a monotonic clock, in seconds.
        Returns:
            True if the file was written.
        """
        if not self.directory:
            return False
        text = metrics.render(snapshot, openmetrics_format=False)
        if text == self.last_text and now - self.written_at < REFRESH_S:
            return False
        # Tried again at most every REFRESH_S, also after a failure.
        self.last_text, self.written_at = text, now
        try:
            self.write(self.directory, self.file_name, text)
        except OSError as e:
            if e.errno != errno.ENOENT or os.path.isdir(self.directory):
                self._failed(f"cannot write {self.file_name} in {self.directory}: {e.strerror}; "
                             'give the daemon write access there, or set it to "" to turn '
                             "the metrics file off")
            return False
        self.last_error = None
        return True

    def due_in(self, now):
        """Seconds until the next refresh is due: a bound for the loop's wait."""
        if not self.directory or self.written_at is None:
            return REFRESH_S
        return max(0.0, self.written_at + REFRESH_S - now)

    def clear(self):
        """On a clean stop: a file with no metrics, rather than one that says the
        pool is still there. Emptied, not removed: node_exporter may read it
        through a link, and a dangling link is a scrape error there."""
        if self.directory:
            try:
                self.write(self.directory, self.file_name, "")
            except OSError:
                pass
        self.last_text = None

    def _failed(self, message):
        if message != self.last_error:
            self.last_error = message
            self.on_error(message)
