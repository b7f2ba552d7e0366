"""The daemon's policy over its pools, driven directly: verbs in, decisions out; no I/O.

Chunks are plain strings, time is a number passed in.
"""

import pytest

from holdingpen.pen import protocol
from holdingpen.pen.config import PoolSpec
from holdingpen.pen.policy import RETRY_MAX_S, Policy, Refused, RefusalNotes, counted
from holdingpen.pen.pool import IllegalTransition, Loan

MiB = 1048576


def memory(count, size_bytes=64 * MiB):
    return PoolSpec("memory", size_bytes, count)


def disk(path, count, size_bytes=64 * MiB):
    return PoolSpec("disk", size_bytes, count, path)


def a_loan(uid=1000, user="alice", command="matlab"):
    return Loan(uid, user, 4242, command, 1700000000.0)


def filled(specs):
    """A Policy with every pool full: chunks named "<pool>#<n>"."""
    policy = Policy(specs)
    n = 0
    while (spec := policy.next_reservation(0.0)) is not None:
        n += 1
        policy.reserved(spec.name, f"{spec.name}#{n}", spec.size_bytes)
    return policy


def state(policy):
    """Everything the policy knows, as plain data."""
    return ({name: (pool.snapshot(), list(pool.held), sorted(pool.loans))
             for name, pool in policy.pools.items()},
            sorted(policy.retiring), dict(policy.loan_pools), policy.next_loan,
            dict(policy.retry_at), dict(policy.retry_s), policy.in_flight, policy.ready)


# ---- which pool a kind means ----

POOLS = [memory(1), disk("/var/tmp", 1), disk("/srv", 1)]

KINDS = [
    ("memory", "memory"),
    ("disk", "disk:/var/tmp"),                 # the first disk pool
    ("disk:/var/tmp", "disk:/var/tmp"),
    ("disk:/srv", "disk:/srv"),
    ("disk://var/tmp", "disk:/var/tmp"),       # the spelling the configuration accepts
    ("disk:/var/tmp/", "disk:/var/tmp"),
    ("disk:/var/./tmp", "disk:/var/tmp"),
    ("disk:///srv//", "disk:/srv"),
    ("disk:var/tmp", protocol.UNKNOWN_KIND),   # not absolute
    ("disk:/nowhere", protocol.UNKNOWN_KIND),
    ("swap", protocol.UNKNOWN_KIND),
    ("Memory", protocol.UNKNOWN_KIND),
]


@pytest.mark.parametrize("kind, want", KINDS)
def test_pool_for(kind, want):
    policy = filled(POOLS)
    if want == protocol.UNKNOWN_KIND:
        with pytest.raises(Refused) as e:
            policy.pool_for(kind)
        assert e.value.code == want
        assert e.value.message == f"no {kind} pool; there are: memory, disk:/var/tmp, disk:/srv"
    else:
        assert policy.pool_for(kind).name == want


def test_a_retiring_pool_is_never_named_by_a_kind():
    # The first disk pool is removed by a reload while it lends: "disk" is the other one,
    # and its own name is unknown, though its loan stays until it returns.
    policy = filled(POOLS)
    loan_id, chunk = policy.lend("disk:/var/tmp", a_loan())
    assert policy.reconfigure([memory(1), disk("/srv", 1)]) == []
    assert policy.pool_for("disk").name == "disk:/srv"
    with pytest.raises(Refused) as e:
        policy.pool_for("disk:/var/tmp")
    assert e.value.code == protocol.UNKNOWN_KIND
    assert e.value.message.endswith("there are: memory, disk:/srv")
    with pytest.raises(Refused) as e:
        policy.lend("disk:/var/tmp", a_loan())       # asked before the reload, lent after
    assert (e.value.code, e.value.message) == (protocol.UNKNOWN_KIND, "no disk:/var/tmp pool any more")
    assert "disk:/var/tmp" in policy.names()         # still there: its loan is out
    assert policy.returned(loan_id)[0] == "disk:/var/tmp"
    assert policy.names() == ["memory", "disk:/srv"]  # forgotten once empty


def test_a_retired_pool_that_comes_back_is_lent_from_again():
    policy = filled(POOLS)
    loan_id, _ = policy.lend("disk:/srv", a_loan())
    policy.reconfigure([memory(1)])
    policy.reconfigure(POOLS)
    assert policy.pool_for("disk:/srv").name == "disk:/srv"
    policy.returned(loan_id)
    assert policy.names() == ["memory", "disk:/var/tmp", "disk:/srv"]


# ---- lending, and the words for an empty pool ----

EMPTY = [
    ("still being made", [memory(1)], [], protocol.POOL_EMPTY,
     "no memory reservation is held yet; one is being made"),
    ("all lent", [memory(2)], ["fill", "lend", "lend"], protocol.POOL_EMPTY,
     "all 2 memory reservations are lent"),
    ("short", [memory(1)], ["start", "fail"], protocol.POOL_EMPTY,
     "no memory reservation is held: only 1 MiB available"),
    ("the one lent", [memory(1)], ["fill", "lend"], protocol.POOL_EMPTY,
     "the one memory reservation is lent"),
    ("a pool of none", [memory(0)], [], protocol.POOL_EMPTY,
     "the memory pool keeps no reservations"),
]


@pytest.mark.parametrize("why, specs, steps, code, message", EMPTY, ids=[e[0] for e in EMPTY])
def test_lend_from_an_empty_pool_is_refused_and_changes_nothing(why, specs, steps, code, message):
    policy = Policy(specs)
    for step in steps:
        if step == "fill":
            policy = filled(specs)
        elif step == "lend":
            policy.lend("memory", a_loan())
        elif step == "start":
            policy.next_reservation(0.0)
        elif step == "fail":
            policy.failed("memory", "only 1 MiB available", 0.0)
    before = state(policy)
    with pytest.raises(Refused) as e:
        policy.lend("memory", a_loan())
    assert (e.value.code, e.value.message) == (code, message)
    assert state(policy) == before


def test_loans_are_numbered_and_returned_once():
    policy = filled([memory(2)])
    first, c1 = policy.lend("memory", a_loan())
    second, c2 = policy.lend("memory", a_loan(user="bob"))
    assert (first, c1, second, c2) == (1, "memory#1", 2, "memory#2")
    assert policy.returned(first)[1].user == "alice"
    with pytest.raises(IllegalTransition):
        policy.returned(first)
    assert [loan_id for loan_id, _, _ in policy.loans()] == [second]


def test_a_failed_hand_off_puts_the_chunk_back_first():
    policy = filled([memory(2)])
    loan_id, chunk = policy.lend("memory", a_loan())
    policy.undo_lend(loan_id, chunk)
    assert policy.loans() == []
    assert policy.lend("memory", a_loan())[1] == chunk


# ---- filling: which pool next, back-off, readiness ----

def test_fill_in_order_one_at_a_time_then_ready():
    policy = Policy([memory(2), disk("/var/tmp", 1)])
    assert policy.next_reservation(0.0).name == "memory"
    assert policy.next_reservation(0.0) is None        # one at a time
    assert not policy.became_ready()
    policy.reserved("memory", "m1", 64 * MiB)
    assert policy.next_reservation(0.0).name == "memory"
    policy.reserved("memory", "m2", 64 * MiB)
    assert policy.next_reservation(0.0).name == "disk:/var/tmp"
    policy.reserved("disk:/var/tmp", "d1", 64 * MiB)
    assert policy.next_reservation(0.0) is None
    assert policy.became_ready() and not policy.became_ready()    # told once
    assert policy.ready


def test_back_off_doubles_up_to_the_most_and_counts_as_ready():
    policy = Policy([memory(1), disk("/var/tmp", 1)])
    delays = []
    now = 0.0
    for _ in range(9):
        assert policy.next_reservation(now).name == "memory"
        delays.append(policy.failed("memory", "no memory", now))
        assert policy.next_retry_at() == now + delays[-1]
        if len(delays) == 1:                 # the disk pool is filled meanwhile
            assert policy.next_reservation(now).name == "disk:/var/tmp"
            policy.reserved("disk:/var/tmp", "d1", 64 * MiB)
            assert policy.became_ready()     # every pool full or backing off
        assert policy.next_reservation(now + delays[-1] - 0.001) is None
        now += delays[-1]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert delays[-1] == RETRY_MAX_S
    assert policy.next_reservation(now).name == "memory"
    policy.reserved("memory", "m1", 64 * MiB)
    assert policy.next_retry_at() is None
    policy.returned(policy.lend("memory", a_loan())[0])
    assert policy.next_reservation(now).name == "memory"   # success forgot the back-off


def test_a_reload_starts_every_back_off_again():
    policy = Policy([memory(1)])
    policy.next_reservation(0.0)
    policy.failed("memory", "no memory", 0.0)
    policy.reconfigure([memory(1)])
    assert policy.next_reservation(0.0).name == "memory"


# ---- reload ----

def test_reload_releases_what_no_longer_fits():
    policy = filled([memory(3), disk("/var/tmp", 1)])
    released = policy.reconfigure([memory(1)])
    assert released == [("memory", "memory#2"), ("memory", "memory#3"),
                        ("disk:/var/tmp", "disk:/var/tmp#4")]
    assert policy.names() == ["memory"]            # the disk pool lent nothing: gone


def test_a_chunk_made_for_a_pool_removed_meanwhile_is_released():
    policy = Policy([memory(1), disk("/var/tmp", 1)])
    policy.reserved("memory", "m1", 64 * MiB) if policy.next_reservation(0.0) else None
    assert policy.next_reservation(0.0).name == "disk:/var/tmp"
    policy.reconfigure([memory(1)])
    assert "disk:/var/tmp" in policy.names()      # a reservation is under way
    assert policy.reserved("disk:/var/tmp", "d1", 64 * MiB) == [("disk:/var/tmp", "d1")]
    assert policy.names() == ["memory"]


# ---- illegal steps raise and change nothing ----

ILLEGAL = [
    ("reserved twice", lambda p: (p.reserved("memory", "x", 64 * MiB),
                                  p.reserved("memory", "y", 64 * MiB))),
    ("reserved for another pool", lambda p: p.reserved("disk:/var/tmp", "x", 64 * MiB)),
    ("returned twice", lambda p: p.returned(99)),
    ("undo of no loan", lambda p: p.undo_lend(99, "x")),
    ("set_command of no loan", lambda p: p.set_command(99, "sh")),
]


@pytest.mark.parametrize("why, step", ILLEGAL, ids=[i[0] for i in ILLEGAL])
def test_illegal_steps_raise_and_change_nothing(why, step):
    policy = filled([memory(1), disk("/var/tmp", 1)])
    policy.lend("memory", a_loan())           # memory now missing one
    policy.next_reservation(0.0)              # memory's is in flight
    before = state(policy)
    with pytest.raises(IllegalTransition):
        step(policy)
    assert state(policy) == before


# ---- what people see ----

def test_status_shows_commands_to_their_owner_and_root_only():
    policy = filled([memory(2)])
    policy.lend("memory", a_loan(uid=1000, user="alice", command="matlab"))
    policy.lend("memory", a_loan(uid=1001, user="bob", command="secret-job"))
    seen = {uid: [loan["command"] for loan in policy.status_loans(uid)]
            for uid in (0, 1000, 1001, 2000)}
    assert seen == {0: ["matlab", "secret-job"], 1000: ["matlab", None],
                    1001: [None, "secret-job"], 2000: [None, None]}


def test_set_command_is_what_status_shows():
    policy = filled([memory(1)])
    loan_id, _ = policy.lend("memory", a_loan(command="gatekeeper"))
    policy.set_command(loan_id, "matlab")
    assert policy.status_loans(0)[0]["command"] == "matlab"
    assert "1 lent to alice (matlab)" in policy.status_line()


NOTES = [
    # (times at which uid 1000 is refused, what note() says to journal each time)
    ([0.0], ["m"]),
    ([0.0, 1.0, 2.0], ["m", None, None]),
    ([0.0, 1.0, 2.0, 10.0], ["m", None, None, "m (2 more such refusals in the last 10 s)"]),
    ([0.0, 1.0, 10.0], ["m", None, "m (1 more such refusal in the last 10 s)"]),
    ([0.0, 10.0, 20.0], ["m", "m", "m"]),
    ([0.0, 9.999], ["m", None]),
]


@pytest.mark.parametrize("times, said", NOTES)
def test_refusal_notes(times, said):
    notes = RefusalNotes(quiet_s=10.0)
    assert [notes.note(1000, t, "m") for t in times] == said


@pytest.mark.parametrize("n, said", [(0, "0 loans"), (1, "1 loan"), (2, "2 loans")])
def test_counted(n, said):
    assert counted(n, "loan") == said


def test_refusal_notes_are_per_user():
    notes = RefusalNotes(quiet_s=10.0)
    assert [notes.note(1000, 0.0, "a"), notes.note(1001, 0.5, "b"), notes.note(1000, 1.0, "c")] \
        == ["a", "b", None]


def test_status_adds_each_loans_protection_by_loan_and_kind():
    policy = filled([memory(1), disk("/var/tmp", 1)])
    memory_id, _ = policy.lend("memory", a_loan(uid=1000, user="alice"))
    disk_id, _ = policy.lend("disk:/var/tmp", a_loan(uid=1000, user="alice"))
    asked = []

    def protection(loan_id, kind):
        asked.append((loan_id, kind))
        return {"protected_units": [kind], "unprotected": None}
    shown = [(loan["kind"], loan["protected_units"])
             for loan in policy.status_loans(0, protection)]
    assert shown == [("memory", ["memory"]), ("disk:/var/tmp", ["disk"])]
    assert asked == [(memory_id, "memory"), (disk_id, "disk")]
    assert "protected_units" not in policy.status_loans(0)[0]    # as before, unasked
