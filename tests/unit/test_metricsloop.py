"""The daemon's metrics as its loop keeps them: what is counted, the pace of
the file, the counts kept in the store; on a real file in a temp directory."""

import pytest

from holdingpen.pen import fdstore, metricsloop
from holdingpen.pen.config import PoolSpec
from holdingpen.pen.metricsfile import REFRESH_S
from holdingpen.pen.policy import Policy
from holdingpen.pen.pool import Loan

EVERY_S = metricsloop.EVERY_S


class Stored(fdstore.NoStore):
    """A store that remembers what it was given to keep."""

    def __init__(self, counters=None):
        self.counters, self.kept = counters, []

    def keep_counters(self, counters):
        self.counters = counters
        self.kept.append(counters)


def made(tmp_path, store=None):
    told = []
    dm = metricsloop.DaemonMetrics(str(tmp_path), store or Stored(),
                                   lambda event, message, **fields: told.append(event))
    return dm, dm.counting(lambda event, message, **fields: told.append(event)), told


@pytest.mark.parametrize("event, fields, counted", [
    ("lent", {"kind": "memory"}, {"borrows": {"memory": 1}}),
    ("returned", {"kind": "disk:/var/tmp"}, {"returns": {"disk:/var/tmp": 1}}),
    ("shortfall", {"kind": "memory", "size_bytes": 1}, {"shortfalls": {"memory": 1}}),
    ("reserved", {"kind": "memory"}, {}),
    ("refused", {"kind": "memory"}, {}),       # refusals count by reply, not by journal entry
])
def test_what_events_count(tmp_path, event, fields, counted):
    dm, events, told = made(tmp_path)
    events(event, "a message", **fields)
    assert told == [event]                     # and it is told all the same
    got = {key: value for key, value in dm.status()["counters"].items() if value and key != "since"}
    assert got == counted


def test_the_file_keeps_pace_and_the_store_keeps_the_counts(tmp_path):
    store = Stored()
    dm, _, _ = made(tmp_path, store)
    policy = Policy([PoolSpec("memory", 1024, 1)])
    prom = tmp_path / "holdingpen.prom"

    dm.update(100.0, policy)
    first = prom.read_text()
    assert "holdingpen_pool_reservations_configured{kind=\"memory\"} 1" in first
    assert dm.next_at(100.0) == 100.0 + REFRESH_S          # nothing more to say till the refresh
    assert store.kept == []                                  # nothing counted yet

    dm.refused("pool-empty")
    dm.update(100.0 + EVERY_S / 2, policy)                   # too soon: a flood's pace
    assert prom.read_text() == first
    assert dm.next_at(100.0 + EVERY_S / 2) == 100.0 + EVERY_S   # but it will be written
    dm.update(100.0 + EVERY_S, policy)
    assert 'holdingpen_refusals_total{reason="pool-empty"} 1' in prom.read_text()
    assert [kept["refusals"] for kept in store.kept] == [{"pool-empty": 1}]

    dm.stopping()
    assert prom.read_text() == ""


def test_counts_go_on_from_the_last_runs(tmp_path):
    last = {"since": 5.0, "borrows": {"memory": 7}, "returns": {}, "refusals": {}, "shortfalls": {}}
    dm, events, _ = made(tmp_path, Stored(last))
    events("lent", "lent", kind="memory")
    assert dm.status()["counters"]["borrows"] == {"memory": 8}
    assert dm.status()["counters"]["since"] == 5.0
    assert dm.status()["started"] > 5.0


def test_no_directory_no_file_and_no_wakeups(tmp_path):
    dm = metricsloop.DaemonMetrics("", Stored(), lambda *a, **k: None)
    dm.update(1.0, Policy([PoolSpec("memory", 1024, 1)]))
    assert dm.next_at(1.0) is None
    assert list(tmp_path.iterdir()) == []


def test_the_file_says_whether_each_loan_is_protected(tmp_path):
    dm, _, _ = made(tmp_path)
    policy = Policy([PoolSpec("memory", 1024, 1)])
    policy.reserved(policy.next_reservation(0.0).name, "memory#1", 1024)
    policy.lend("memory", Loan(1000, "alice", 4242, "matlab", 1700000000.0))
    asked = []

    def protection():              # asked for only when the file is written
        asked.append(True)
        return lambda loan_id, kind: {"protected": True}
    dm.update(100.0, policy, protection)
    dm.update(100.0 + EVERY_S / 2, policy, protection)      # too soon: not asked
    assert asked == [True]
    text = (tmp_path / "holdingpen.prom").read_text()
    assert 'holdingpen_loan_protected{kind="memory",user="alice",pid="4242"} 1' in text
