"""What happened, told to journald as structured entries, or to stderr as lines.

One entry per event, with a MESSAGE_ID per event type and HOLDINGPEN_* fields,
so that `journalctl -u holdingpen HOLDINGPEN_EVENT=lent` or
`journalctl MESSAGE_ID=...` finds them. Without journald (run by hand), one
plain line per event on stderr.
"""

import os
import sys

# One id per event type, fixed forever: journalctl MESSAGE_ID=<id> finds them.
MESSAGE_IDS = {
    "started": "3cde4534d48b4549bd263bc37f640561",
    "reserved": "7989f8a703ba4a5ea4e5ff690208fc45",
    "lent": "2cabcc72c2cd4c1589e4f0cada6ab4c8",
    "returned": "ce38b0352e884efd99506c59427a8d0b",
    "running": "e51475524a414353bd3ced90108eed58",   # a loan's process exec'd another command
    "refused": "86a99ce2ee064996b6f2891dccd1b9b7",
    "shortfall": "a0e90973c3b9429580c1d3feac0d8142",
    "adopted": "ad6de2cef31d4da8b28dcddc215495eb",
    "released": "9b31de4d5bc14a8a93ee042ccc6c8686",
    "reloaded": "1800efd92c17463a86973220a5e19a85",
    "config-refused": "c869fe7717b44da6be8c1b79c67b05a3",
    "bad-client": "c41257d877234d2a9e610fd0a3f65d6d",
    "no-polkit": "99584241727946aaa228cbdd19a4cd7b",
    "stopping": "217d6210a9ac4324990ac24ea52588d5",
    "failed": "391c549d86644a5a905000413068337e",     # a worker thread's own trouble
    "unprotected": "5787483123344d5c8eb6c780dd9fae01",  # a loan's memory is not protected
}
PRIORITY = {"shortfall": 4, "config-refused": 3, "refused": 5, "bad-client": 5, "failed": 3,
            "unprotected": 4}   # syslog levels
_INFO = 6


class Events:
    """Emit events; sink(message, fields) does the writing (journald or stderr)."""

    def __init__(self, sink):
        self.sink = sink

    def __call__(self, event, message, kind=None, size_bytes=None, peer=None, **extra):
        fields = {"HOLDINGPEN_EVENT": event, "MESSAGE_ID": MESSAGE_IDS[event],
                  "PRIORITY": str(PRIORITY.get(event, _INFO))}
        if kind is not None:
            fields["HOLDINGPEN_KIND"] = kind
        if size_bytes is not None:
            fields["HOLDINGPEN_BYTES"] = str(size_bytes)
        if peer is not None:
            fields["HOLDINGPEN_CLIENT_UID"] = str(peer.uid)
            fields["HOLDINGPEN_CLIENT_PID"] = str(peer.pid)
            fields["HOLDINGPEN_CLIENT_COMM"] = peer.comm
        for name, value in extra.items():
            fields["HOLDINGPEN_" + name.upper()] = str(value)
        self.sink(message, fields)


def journal_sink(message, fields):
    from systemd import journal
    journal.send(message, SYSLOG_IDENTIFIER="holdingpen", **fields)


def stderr_sink(message, fields, stderr=None):
    stderr = stderr or sys.stderr
    stderr.write(f"holdingpen: {fields['HOLDINGPEN_EVENT']}: {message}\n")
    stderr.flush()


def stderr_is_journal(environ=os.environ, fd=2):
    """Whether systemd connected our stderr to journald ($JOURNAL_STREAM names it)."""
    try:
        dev, ino = (int(x) for x in environ["JOURNAL_STREAM"].split(":"))
        st = os.fstat(fd)
    except (KeyError, ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def default_events(environ=os.environ, fd=2):
    """To journald when systemd runs us (and python3-systemd is there), else to stderr."""
    if stderr_is_journal(environ, fd):
        try:
            from systemd import journal
        except ImportError:
            journal = None
        if journal is not None:
            return Events(journal_sink)
    return Events(stderr_sink)
