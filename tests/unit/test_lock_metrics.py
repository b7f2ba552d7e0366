"""The lock's metrics: wholock's rows to exact text."""

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from holdingpen.lock.metrics import render

NOW = 1000.0
TEMPLATE = """\
# HELP perflock_holders Jobs holding the machine, by mode.
# TYPE perflock_holders gauge
perflock_holders{{mode="exclusive"}} {hx}
perflock_holders{{mode="shared"}} {hs}
# HELP perflock_waiters Jobs waiting for the machine, by the mode they want.
# TYPE perflock_waiters gauge
perflock_waiters{{mode="exclusive"}} {wx}
perflock_waiters{{mode="shared"}} {ws}
# HELP perflock_oldest_wait_seconds How long the job waiting longest has waited; 0 if none waits.
# TYPE perflock_oldest_wait_seconds gauge
# UNIT perflock_oldest_wait_seconds seconds
perflock_oldest_wait_seconds {wait}
# HELP perflock_hold_seconds How long the machine has been held by the job holding it longest; 0 if it is free.
# TYPE perflock_hold_seconds gauge
# UNIT perflock_hold_seconds seconds
perflock_hold_seconds {hold}
{eof}"""


def row(user, mode, state, since):
    return {"pid": 1, "user": user, "mode": mode, "state": state, "since": since,
            "command": "cmd", "message": ""}


CASES = [
    ([], dict(hx=0, hs=0, wx=0, ws=0, wait=0.0, hold=0.0)),
    ([row("alice", "exclusive", "holding", 808.0)], dict(hx=1, hs=0, wx=0, ws=0, wait=0.0, hold=192.0)),
    # Shared holders: the longest hold counts; waiters behind an exclusive one, oldest first.
    ([row("alice", "shared", "holding", 900.0), row("bob", "shared", "holding", 400.5),
      row("carol", "exclusive", "waiting", 950.0), row("dave", "shared", "waiting", 999.9995)],
     dict(hx=0, hs=2, wx=1, ws=1, wait=50.0, hold=599.5)),
    # A flock(1) waiter whose `since` (its process start) is older than any hold.
    ([row("alice", "exclusive", "holding", 990.0), row("bob", "exclusive", "waiting", 10.25)],
     dict(hx=1, hs=0, wx=1, ws=0, wait=989.75, hold=10.0)),
    # A clock stepped back: no negative ages.
    ([row("alice", "exclusive", "holding", 1500.0)], dict(hx=1, hs=0, wx=0, ws=0, wait=0.0, hold=0.0)),
]


@pytest.mark.parametrize("rows, figures", CASES)
def test_rows_to_exact_text(rows, figures):
    assert render(rows, NOW) == TEMPLATE.format(**figures, eof="# EOF\n")
    textfile = TEMPLATE.format(**figures, eof="")
    textfile = "".join(line + "\n" for line in textfile.splitlines() if not line.startswith("# UNIT"))
    assert render(rows, NOW, openmetrics_format=False) == textfile


@pytest.mark.parametrize("rows, figures", CASES)
def test_a_real_openmetrics_parser_reads_it(rows, figures):
    families = {f.name: f for f in parse_openmetrics(render(rows, NOW))}
    assert families["perflock_oldest_wait_seconds"].unit == "seconds"
    waiters = {s.labels["mode"]: s.value for s in families["perflock_waiters"].samples}
    assert waiters == {"exclusive": figures["wx"], "shared": figures["ws"]}
    assert families["perflock_hold_seconds"].samples[0].value == figures["hold"]
