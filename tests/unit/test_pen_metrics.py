"""The pool's metrics: status snapshots to exact text, read back by a real parser."""

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from holdingpen.pen.metrics import render

MiB = 1 << 20
POOL_HELP = """\
# HELP holdingpen_ready 1 once the pool was first filled and the daemon serves.
# TYPE holdingpen_ready gauge
holdingpen_ready {ready}
# HELP holdingpen_pool_reservation_size_bytes The size of one reservation.
# TYPE holdingpen_pool_reservation_size_bytes gauge
# UNIT holdingpen_pool_reservation_size_bytes bytes
"""


def pool(name="memory", size=256 * MiB, count=2, held=2, lent=0, reserving=0, shortfall=None):
    kind, _, path = name.partition(":")
    return {"name": name, "kind": kind, "path": path or None, "size": size, "count": count,
            "held": held, "lent": lent, "reserving": reserving, "shortfall": shortfall}


def loan(kind="memory", user="alice", pid=4242, since=1764770000.25, **more):
    return {"kind": kind, "user": user, "uid": 2000, "pid": pid, "command": "matlab",
            "since": since, "size": 256 * MiB, "fd": False, **more}


STATES = [
    # A daemon still filling its one pool, as `holdingpen status` shows it today
    # (no counters, no start time in the reply): those families are left out.
    ({"ready": False, "pools": [pool(held=1, reserving=1)], "loans": []},
     POOL_HELP.format(ready=0) + """\
holdingpen_pool_reservation_size_bytes{kind="memory"} 268435456
# HELP holdingpen_pool_reservations_configured How many reservations the pool should hold (its count).
# TYPE holdingpen_pool_reservations_configured gauge
holdingpen_pool_reservations_configured{kind="memory"} 2
# HELP holdingpen_pool_reservations Reservations by state: held (ready to lend), lent, reserving (being made), missing (to be made, after a shortfall); they add up to the configured count.
# TYPE holdingpen_pool_reservations gauge
holdingpen_pool_reservations{kind="memory",state="held"} 1
holdingpen_pool_reservations{kind="memory",state="lent"} 0
holdingpen_pool_reservations{kind="memory",state="reserving"} 1
holdingpen_pool_reservations{kind="memory",state="missing"} 0
# HELP holdingpen_pool_short 1 if the pool's last reservation failed for want of memory or disk, until one succeeds.
# TYPE holdingpen_pool_short gauge
holdingpen_pool_short{kind="memory"} 0
# HELP holdingpen_loan_start_time_seconds When each loan out now was lent (Unix time).
# TYPE holdingpen_loan_start_time_seconds gauge
# UNIT holdingpen_loan_start_time_seconds seconds
# EOF
"""),
    # Memory lent and short, a disk pool whole, a protected loan, counters since the start.
    ({"ready": True,
      "pools": [pool(held=0, lent=1, shortfall="only 100 MiB available"),
                pool("disk:/var/tmp", size=10 << 30, count=1, held=1)],
      "loans": [loan(protected=True), loan("disk:/var/tmp", "bob", 4300, 1764770100.0, protected=False)],
      "started": 1764769000.0,
      "counters": {"since": 1764769000.0, "borrows": {"memory": 3, "disk:/var/tmp": 1},
                   "returns": {"memory": 2}, "shortfalls": {"memory": 1},
                   "refusals": {"not-authorized": 1, "limited": 4}}},
     POOL_HELP.format(ready=1) + """\
holdingpen_pool_reservation_size_bytes{kind="memory"} 268435456
holdingpen_pool_reservation_size_bytes{kind="disk:/var/tmp"} 10737418240
# HELP holdingpen_pool_reservations_configured How many reservations the pool should hold (its count).
# TYPE holdingpen_pool_reservations_configured gauge
holdingpen_pool_reservations_configured{kind="memory"} 2
holdingpen_pool_reservations_configured{kind="disk:/var/tmp"} 1
# HELP holdingpen_pool_reservations Reservations by state: held (ready to lend), lent, reserving (being made), missing (to be made, after a shortfall); they add up to the configured count.
# TYPE holdingpen_pool_reservations gauge
holdingpen_pool_reservations{kind="memory",state="held"} 0
holdingpen_pool_reservations{kind="memory",state="lent"} 1
holdingpen_pool_reservations{kind="memory",state="reserving"} 0
holdingpen_pool_reservations{kind="memory",state="missing"} 1
holdingpen_pool_reservations{kind="disk:/var/tmp",state="held"} 1
holdingpen_pool_reservations{kind="disk:/var/tmp",state="lent"} 0
holdingpen_pool_reservations{kind="disk:/var/tmp",state="reserving"} 0
holdingpen_pool_reservations{kind="disk:/var/tmp",state="missing"} 0
# HELP holdingpen_pool_short 1 if the pool's last reservation failed for want of memory or disk, until one succeeds.
# TYPE holdingpen_pool_short gauge
holdingpen_pool_short{kind="memory"} 1
holdingpen_pool_short{kind="disk:/var/tmp"} 0
# HELP holdingpen_loan_start_time_seconds When each loan out now was lent (Unix time).
# TYPE holdingpen_loan_start_time_seconds gauge
# UNIT holdingpen_loan_start_time_seconds seconds
holdingpen_loan_start_time_seconds{kind="memory",user="alice",pid="4242"} 1764770000.25
holdingpen_loan_start_time_seconds{kind="disk:/var/tmp",user="bob",pid="4300"} 1764770100.0
# HELP holdingpen_loan_protected 1 if the kernel protects the borrower's memory from reclaim for this loan.
# TYPE holdingpen_loan_protected gauge
holdingpen_loan_protected{kind="memory",user="alice",pid="4242"} 1
holdingpen_loan_protected{kind="disk:/var/tmp",user="bob",pid="4300"} 0
# HELP holdingpen_start_time_seconds When the daemon last started (Unix time).
# TYPE holdingpen_start_time_seconds gauge
# UNIT holdingpen_start_time_seconds seconds
holdingpen_start_time_seconds 1764769000.0
# HELP holdingpen_borrows Reservations lent to borrowers.
# TYPE holdingpen_borrows counter
holdingpen_borrows_total{kind="disk:/var/tmp"} 1
holdingpen_borrows_created{kind="disk:/var/tmp"} 1764769000.0
holdingpen_borrows_total{kind="memory"} 3
holdingpen_borrows_created{kind="memory"} 1764769000.0
# HELP holdingpen_returns Loans ended, the reservation to be made again.
# TYPE holdingpen_returns counter
holdingpen_returns_total{kind="memory"} 2
holdingpen_returns_created{kind="memory"} 1764769000.0
# HELP holdingpen_refusals Requests refused, by the error code the client got (not-authorized, limited, pool-empty, ...).
# TYPE holdingpen_refusals counter
holdingpen_refusals_total{reason="limited"} 4
holdingpen_refusals_created{reason="limited"} 1764769000.0
holdingpen_refusals_total{reason="not-authorized"} 1
holdingpen_refusals_created{reason="not-authorized"} 1764769000.0
# HELP holdingpen_shortfalls Reservations that could not be made (not enough memory or disk to spare).
# TYPE holdingpen_shortfalls counter
holdingpen_shortfalls_total{kind="memory"} 1
holdingpen_shortfalls_created{kind="memory"} 1764769000.0
# EOF
"""),
]


@pytest.mark.parametrize("snapshot, text", STATES)
def test_snapshot_to_exact_openmetrics(snapshot, text):
    assert render(snapshot) == text


@pytest.mark.parametrize("snapshot, _", STATES)
def test_both_spellings_parse_to_the_same_values(snapshot, _):
    def values(families):
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
    openmetrics = values(parse_openmetrics(render(snapshot)))
    text = values(parse_text(render(snapshot, openmetrics_format=False)))
    assert openmetrics == text
    # What a fleet's queries rely on: the states add up to the configured count.
    for p in snapshot["pools"]:
        states = sum(v for (name, labels), v in openmetrics.items()
                     if name == "holdingpen_pool_reservations" and ("kind", p["name"]) in labels)
        assert states == p["count"]


def test_textfile_spelling_types_counters_as_node_exporter_reads_them():
    snapshot = STATES[1][0]
    types = {f.name: f.type for f in parse_text(render(snapshot, openmetrics_format=False))}
    assert types["holdingpen_borrows"] == "counter"     # this parser drops _total from the name
    assert types["holdingpen_borrows_created"] == "gauge"
    assert "# EOF" not in render(snapshot, openmetrics_format=False)


def test_an_empty_counter_is_a_family_without_samples():
    snapshot = {"ready": True, "pools": [], "loans": [],
                "counters": {"since": 5.0, "borrows": {}, "returns": {}, "shortfalls": {}, "refusals": {}}}
    families = {f.name: f for f in parse_openmetrics(render(snapshot))}
    assert families["holdingpen_refusals"].type == "counter"
    assert families["holdingpen_refusals"].samples == []


def test_counters_count_and_come_back_from_their_dict():
    from holdingpen.pen.metrics import Counters
    c = Counters(since_s=100.0)
    c.count("borrows", "memory")
    c.count("borrows", "memory")
    c.count("refusals", "not-authorized", 3)
    assert c.as_dict() == {"since": 100.0, "borrows": {"memory": 2}, "returns": {},
                           "refusals": {"not-authorized": 3}, "shortfalls": {}}
    again = Counters(since_s=500.0, values=c.as_dict())      # after a restart
    assert again.as_dict() == c.as_dict()
    with pytest.raises(KeyError):
        c.count("bogus", "memory")


@pytest.mark.parametrize("values", [
    None, [], "x", {"since": "yesterday"}, {"borrows": {"memory": -1}}, {"borrows": {"memory": 1.5}},
    {"borrows": ["memory"]}, {"returns": {3: 1}}, {"refusals": {"limited": True}},
])
def test_counters_drop_what_is_malformed(values):
    from holdingpen.pen.metrics import Counters
    assert Counters(since_s=7.0, values=values).as_dict() == {
        "since": 7.0, "borrows": {}, "returns": {}, "refusals": {}, "shortfalls": {}}
