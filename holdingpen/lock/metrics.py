"""The machine lock's metrics for Prometheus, from who.survey() rows: who
holds, who waits, for how long. Pure: rows and the time in, families out.

A fleet reads them to see which benchmark machines are taken, and by how
many waiting jobs.
"""

from holdingpen.common import openmetrics
from holdingpen.lock.lockqueue import HOLDING, MODES, WAITING

FILE_NAME = "perflock.prom"


def families(rows, now):
    """The lock's metric families.

    Args:
        rows: who.survey() rows (holders, then waiters in order).
        now: Unix time, to turn each row's `since` into an age.
    """
    holders = [r for r in rows if r["state"] == HOLDING]
    waiters = [r for r in rows if r["state"] == WAITING]
    return [
        openmetrics.gauge("perflock_holders", "Jobs holding the machine, by mode.",
                          [({"mode": m}, sum(r["mode"] == m for r in holders)) for m in MODES]),
        openmetrics.gauge("perflock_waiters", "Jobs waiting for the machine, by the mode they want.",
                          [({"mode": m}, sum(r["mode"] == m for r in waiters)) for m in MODES]),
        openmetrics.gauge("perflock_oldest_wait_seconds",
                          "How long the job waiting longest has waited; 0 if none waits.",
                          [({}, _longest(waiters, now))], unit="seconds"),
        openmetrics.gauge("perflock_hold_seconds",
                          "How long the machine has been held by the job holding it longest; "
                          "0 if it is free.",
                          [({}, _longest(holders, now))], unit="seconds"),
    ]


def render(rows, now, openmetrics_format=True):
    """The lock's metrics as text: OpenMetrics, or else node_exporter's textfile format."""
    return openmetrics.render(families(rows, now), openmetrics=openmetrics_format)


def _longest(rows, now):
    # A clock step back must not report a negative wait.
    return round(max((max(0.0, now - r["since"]) for r in rows), default=0.0), 3)
