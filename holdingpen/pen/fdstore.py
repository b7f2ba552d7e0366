"""Reservations and loans kept in systemd's descriptor store, so restarts lose nothing.

Every chunk and every borrower's connection is stored under a name
(FDSTORE=1 + FDNAME=chunk.7 or loan.12) and removed when it goes
(FDSTOREREMOVE=1). systemd hands them all back on the next start, in
LISTEN_FDS with their names, after a restart, a crash or a watchdog kill
alike; `systemctl stop` empties the store, and that frees the pool.

What each name is (which pool, who borrowed, since when) is written to a
small memfd, itself stored as "state": a JSON object {name: facts}. A
descriptor that comes back without facts, or facts without a descriptor,
are dropped: the descriptors are the truth. The same object keeps, under
"config", the last good configuration ({"source", "text"}): a daemon that
holds something never throws it away over a file that has gone bad since.
The one other entry that is no descriptor's, "counters", is the metrics'
counts (metrics.Counters), kept with the loans so that a restart does not
reset them.
"""

import json
import os
import struct

STATE = "state"
CONFIG = "config"         # keys in the state object; never a descriptor's name
COUNTERS = "counters"


def kept(passed):
    """What the last run left: (whether a reservation or loan came back, its last good
    configuration {"source", "text"} or None). Reads only: systemd is told nothing."""
    state_fd = next((fd for fd, name in passed.items() if name == STATE), None)
    facts = _read_state(state_fd) if state_fd is not None else {}
    held = any(name.startswith(("chunk.", "loan.")) for name in passed.values())
    good = facts.get(CONFIG)
    return held, good if isinstance(good, dict) else None


class FdStore:
    """The descriptor store, reached through notify (systemd.daemon.notify)."""

    def __init__(self, notify, passed):
        """passed: {fd: name} handed to us at start (without the listening socket)."""
        self.notify = notify
        state_fd = next((fd for fd, name in passed.items() if name == STATE), None)
        self.facts = _read_state(state_fd) if state_fd is not None else {}
        self.config = self.facts.get(CONFIG)
        self.counters = self.facts.get(COUNTERS)    # as the last run left them, or None
        self.passed = [(name, fd, self.facts.get(name)) for fd, name in passed.items()
                       if name != STATE]
        self.next_id = max([int(n.rsplit(".", 1)[1]) for n, _, _ in self.passed
                            if n.rsplit(".", 1)[-1].isdigit()], default=0) + 1
        self.facts = {name: facts for name, _, facts in self.passed if facts is not None}
        if state_fd is None:
            state_fd = os.memfd_create("holdingpen-state", os.MFD_CLOEXEC)
            self._send(f"FDSTORE=1\nFDNAME={STATE}", [state_fd])
        self.state_fd = state_fd
        self._write_state()

    def new_name(self, prefix):
        name = f"{prefix}.{self.next_id}"
        self.next_id += 1
        return name

    def add(self, name, fd, facts):
        self.facts[name] = facts
        self._write_state()
        self._send(f"FDSTORE=1\nFDNAME={name}", [fd])

    def remove(self, name):
        if self.facts.pop(name, None) is not None:
            self._write_state()
        self._send(f"FDSTOREREMOVE=1\nFDNAME={name}")

    def keep_config(self, cfg):
        """Keep cfg (config.Config) as the last good configuration, for a restart to use."""
        self.config = {"source": cfg.source, "text": cfg.text}
        self._write_state()

    def update(self, name, **facts):
        """Change what is known of a stored descriptor (systemd is not told); a name
        no longer stored stays gone."""
        if name in self.facts:
            self.facts[name] = {**self.facts[name], **facts}
            self._write_state()

    def keep_counters(self, counters):
        """Keep counters (plain JSON data) for the next run, as self.counters."""
        self.counters = counters
        self._write_state()

    def _send(self, message, fds=None):
        self.notify(message, fds=fds) if fds else self.notify(message)

    def _write_state(self):
        extra = {key: value for key, value in ((CONFIG, self.config), (COUNTERS, self.counters))
                 if value is not None}
        _write_state(self.state_fd, json.dumps({**self.facts, **extra}).encode())


class NoStore:
    """Run by hand: nothing to keep across restarts."""

    passed = []
    counters = None

    def new_name(self, prefix):
        return prefix

    def add(self, name, fd, facts):
        pass

    def remove(self, name):
        pass

    def keep_config(self, cfg):
        pass

    def update(self, name, **facts):
        pass

    def keep_counters(self, counters):
        pass


# The state memfd: a header at offset 0 says where the current JSON text is,
# [offset, offset + length). A new text is written where it overlaps nothing of
# the current one, and only then does the header point at it. The header is one
# small write within one page, which a SIGKILL cannot cut in half (the kernel
# checks for it between pages), so whenever the daemon is killed the state reads
# as the old facts or the new, never as nothing.
_MAGIC = b"HPSTATE1"
_HEADER = struct.Struct("<8sQQ")
_PAGE = 4096


def _write_state(fd, data):
    offset, length = _current(fd)
    if not offset or _PAGE + len(data) <= offset:
        new_offset = _PAGE                 # no current text, or room before it
    else:
        new_offset = -(-(offset + length) // _PAGE) * _PAGE    # after it, page-aligned
    os.pwrite(fd, data, new_offset)
    os.pwrite(fd, _HEADER.pack(_MAGIC, new_offset, len(data)), 0)
    if os.fstat(fd).st_size > new_offset + len(data):
        os.ftruncate(fd, new_offset + len(data))   # the old text, if after ours, is no longer read


def _current(fd):
    """(offset, length) of the current text; (0, 0) when there is none."""
    header = os.pread(fd, _HEADER.size, 0)
    if len(header) == _HEADER.size:
        magic, offset, length = _HEADER.unpack(header)
        if magic == _MAGIC:
            return offset, length
    return 0, 0


def _read_state(fd):
    try:
        offset, length = _current(fd)
        facts = json.loads(os.pread(fd, length, offset) or b"{}") if offset else {}
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}
