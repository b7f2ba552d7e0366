"""systemctl and journalctl, as the system tests ask them about the holdingpen units;
and gatekeeper, as a user runs it."""

import json
from contextlib import contextmanager

import pytest

from helpers import wait_until

SERVICE = "holdingpen.service"
SOCKET = "holdingpen.socket"
SETTLE_S = 15.0        # deadline for what systemd and the daemon's threads do on their own
POLL_S = 0.05
# A job that holds its loan: its first line proves it runs, and closing its
# stdin ends it with status 3, none of gatekeeper's own codes.
HOLD = ["sh", "-c", "echo holding; read _; exit 3"]


def show(ct, *properties, unit=SERVICE):
    """`systemctl show -p ...` as {property: value}."""
    out = ct.run(["systemctl", "show", unit, *[f"-p{p}" for p in properties]]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def counts(reply):
    """{pool: (count, held, lent)}: what a status reply says about the pool's fill."""
    return {p["name"]: (p["count"], p["held"], p["lent"]) for p in reply["pools"]}


def wait_for(what, probe, ok=bool, timeout_s=SETTLE_S):
    """probe()'s first value that is ok() within timeout_s; fails naming what and the last value."""
    seen = []

    def value_ok():
        seen[:] = [probe()]
        return ok(seen[0])
    try:
        wait_until(value_ok, what, timeout_s, POLL_S)
    except AssertionError:
        pytest.fail(f"not within {timeout_s} s: {what}; last saw {seen[0]!r}")
    return seen[0]


def journal_mark(ct):
    """Where the journal ends now: (seqnum id, seqnum) of its last entry."""
    out = ct.run(["journalctl", "--no-pager", "-n", "0", "--show-cursor"]).stdout
    cursor = next(line.removeprefix("-- cursor: ") for line in out.splitlines()
                  if line.startswith("-- cursor: "))
    return _seqnum(cursor)


def _seqnum(cursor):
    fields = dict(part.split("=", 1) for part in cursor.split(";"))
    return fields["s"], int(fields["i"], 16)


def journal(ct, *matches, after=None, this_boot=False):
    """`journalctl -u holdingpen -o json [MATCH...]` as a list of entries,
    only those after the journal_mark() `after` if given.

    --sync first: journald stores everything sent before it returns, so an
    event the daemon has logged is there to read. Not --after-cursor: in
    systemd 252 it skips the first matching entry whenever the cursor's own
    entry does not match (it steps over two entries, assuming the first is the
    cursor's), so the one "lent" entry after a mark came back as nothing.
    """
    ct.run(["journalctl", "--sync"])
    argv = ["journalctl", "--no-pager", "-q", "-o", "json", "-u", "holdingpen"]
    argv += ["-b"] if this_boot else []
    out = ct.run(argv + list(matches)).stdout
    entries = [json.loads(line) for line in out.splitlines()]
    if after is None:
        return entries
    return [e for e in entries
            if (seqnum := _seqnum(e["__CURSOR"]))[0] != after[0] or seqnum[1] > after[1]]


def events(entries):
    return [e["HOLDINGPEN_EVENT"] for e in entries if "HOLDINGPEN_EVENT" in e]


@contextmanager
def borrowing(ct, user, *options):
    """`gatekeeper [options] HOLD` run by user, holding its loan inside the block."""
    job = ct.popen(["gatekeeper", *options, *HOLD], user=user)
    try:
        line = job.read_line()
        assert line == "holding", line
        yield job
    finally:
        job.stop()  # no-op if the test already let it finish
