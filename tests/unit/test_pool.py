"""The pool as a state machine, driven directly: verbs in, decisions out; no descriptors.

Chunks are plain strings here: the pool treats them as opaque.
"""

import pytest

from holdingpen.pen.config import PoolSpec
from holdingpen.pen.pool import IllegalTransition, Loan, Pool, status_line

MiB = 1048576
GiB = 1073741824


def memory(count, size_bytes=2 * GiB):
    return PoolSpec("memory", size_bytes, count)


def disk(path, count, size_bytes=10 * GiB):
    return PoolSpec("disk", size_bytes, count, path)


def a_loan(user="alice", command="matlab"):
    return Loan(1000, user, 4242, command, 1700000000.0)


def do(pool, step):
    """Apply one verb, written as a tuple; chunk sizes default to the pool's size now."""
    verb, *args = step
    size = pool.spec.size_bytes
    if verb == "start":
        return pool.start_reserving()
    if verb == "reserved":
        return pool.reserved(args[0], args[1] if len(args) > 1 else size)
    if verb == "failed":
        return pool.failed(args[0])
    if verb == "lend":
        return pool.lend(args[0], a_loan(*args[1:]))
    if verb == "undo":
        return pool.undo_lend(args[0], args[1])
    if verb == "returned":
        return pool.returned(args[0])
    if verb == "adopt_chunk":
        return pool.adopt_chunk(args[0], args[1] if len(args) > 1 else size)
    if verb == "adopt_loan":
        return pool.adopt_loan(args[0], a_loan(*args[1:]))
    if verb == "reconfigure":        # (count) or (count, size), same kind and path
        spec = pool.spec
        return pool.reconfigure(PoolSpec(spec.kind, args[1] if len(args) > 1 else spec.size_bytes,
                                         args[0], spec.path))
    if verb == "reconfigure_to":
        return pool.reconfigure(args[0])
    raise AssertionError(f"no verb {verb}")


def pool_after(spec, steps):
    pool = Pool(spec)
    for step in steps:
        do(pool, step)
    return pool


def state(pool):
    return (list(pool.held), list(pool.loans), pool.reserving, pool.missing(), pool.shortfall)


def assert_places_add_up(pool):
    """Each place is held, lent, reserving or missing (theory of operation, pool.py)."""
    count, lent = pool.spec.count, len(pool.loans)
    if count >= lent:
        assert len(pool.held) + lent + pool.reserving + pool.missing() == count, state(pool)


OVER = "over"   # a reload lowered the count under a reservation in flight (see that sequence)

# name: (spec, [(verb, what it returns, held, lent, reserving, missing, shortfall[, OVER])])
SEQUENCES = {
    "fill from empty": (memory(2), [
        (("start",), None, [], [], 1, 1, None),
        (("start",), None, [], [], 2, 0, None),
        (("reserved", "c1"), [], ["c1"], [], 1, 0, None),
        (("reserved", "c2"), [], ["c1", "c2"], [], 0, 0, None),
    ]),
    "lend the oldest; a return makes its place missing": (memory(2), [
        (("adopt_chunk", "c1"), [], ["c1"], [], 0, 1, None),
        (("adopt_chunk", "c2"), [], ["c1", "c2"], [], 0, 0, None),
        (("lend", 1), "c1", ["c2"], [1], 0, 0, None),
        (("lend", 2), "c2", [], [1, 2], 0, 0, None),
        (("lend", 3), None, [], [1, 2], 0, 0, None),          # none held: no loan is made
        (("returned", 1), None, [], [2], 0, 1, None),
        (("start",), None, [], [2], 1, 0, None),
        (("reserved", "c3"), [], ["c3"], [2], 0, 0, None),
        (("lend", 3), "c3", [], [2, 3], 0, 0, None),
        (("returned", 3), None, [], [2], 0, 1, None),
        (("returned", 2), None, [], [], 0, 2, None),
    ]),
    "a failure is remembered until a reservation succeeds": (memory(2), [
        (("start",), None, [], [], 1, 1, None),
        (("failed", "only 1.0 GiB available"), None, [], [], 0, 2, "only 1.0 GiB available"),
        (("start",), None, [], [], 1, 1, "only 1.0 GiB available"),
        (("start",), None, [], [], 2, 0, "only 1.0 GiB available"),
        (("failed", "no memory"), None, [], [], 1, 1, "no memory"),
        (("reserved", "c1"), [], ["c1"], [], 0, 1, None),
    ]),
    "a failed hand-off puts the chunk back, first in line": (memory(2), [
        (("adopt_chunk", "c1"), [], ["c1"], [], 0, 1, None),
        (("adopt_chunk", "c2"), [], ["c1", "c2"], [], 0, 0, None),
        (("lend", 1), "c1", ["c2"], [1], 0, 0, None),
        (("undo", 1, "c1"), None, ["c1", "c2"], [], 0, 0, None),
        (("lend", 2), "c1", ["c2"], [2], 0, 0, None),
    ]),
    "a new size releases every held chunk and keeps the loans": (memory(3), [
        (("adopt_chunk", "c1"), [], ["c1"], [], 0, 2, None),
        (("adopt_chunk", "c2"), [], ["c1", "c2"], [], 0, 1, None),
        (("adopt_chunk", "c3"), [], ["c1", "c2", "c3"], [], 0, 0, None),
        (("lend", 1), "c1", ["c2", "c3"], [1], 0, 0, None),
        (("reconfigure", 3, 4 * GiB), ["c2", "c3"], [], [1], 0, 2, None),
        (("start",), None, [], [1], 1, 1, None),
        (("reserved", "c4", 4 * GiB), [], ["c4"], [1], 0, 1, None),
        (("returned", 1), None, ["c4"], [], 0, 2, None),
    ]),
    "a lower count releases the newest held chunks": (memory(3), [
        (("adopt_chunk", "c1"), [], ["c1"], [], 0, 2, None),
        (("adopt_chunk", "c2"), [], ["c1", "c2"], [], 0, 1, None),
        (("adopt_chunk", "c3"), [], ["c1", "c2", "c3"], [], 0, 0, None),
        (("reconfigure", 1), ["c2", "c3"], ["c1"], [], 0, 0, None),
    ]),
    "a lower count keeps room for the loans": (memory(3), [
        (("adopt_chunk", "c1"), [], ["c1"], [], 0, 2, None),
        (("adopt_chunk", "c2"), [], ["c1", "c2"], [], 0, 1, None),
        (("adopt_chunk", "c3"), [], ["c1", "c2", "c3"], [], 0, 0, None),
        (("lend", 1), "c1", ["c2", "c3"], [1], 0, 0, None),
        (("reconfigure", 2), ["c3"], ["c2"], [1], 0, 0, None),
    ]),
    "loans outnumber a lowered count until they return": (memory(2), [
        (("adopt_chunk", "c1"), [], ["c1"], [], 0, 1, None),
        (("adopt_chunk", "c2"), [], ["c1", "c2"], [], 0, 0, None),
        (("lend", 1), "c1", ["c2"], [1], 0, 0, None),
        (("lend", 2), "c2", [], [1, 2], 0, 0, None),
        (("reconfigure", 1), [], [], [1, 2], 0, 0, None),
        (("returned", 1), None, [], [2], 0, 0, None),
        (("returned", 2), None, [], [], 0, 1, None),
    ]),
    "a retired pool (count 0) releases what it holds and keeps its loans": (memory(2), [
        (("adopt_chunk", "c1"), [], ["c1"], [], 0, 1, None),
        (("adopt_chunk", "c2"), [], ["c1", "c2"], [], 0, 0, None),
        (("lend", 1), "c1", ["c2"], [1], 0, 0, None),
        (("reconfigure", 0), ["c2"], [], [1], 0, 0, None),
        (("returned", 1), None, [], [], 0, 0, None),
    ]),
    "a higher count makes places missing": (memory(1), [
        (("adopt_chunk", "c1"), [], ["c1"], [], 0, 0, None),
        (("reconfigure", 3), [], ["c1"], [], 0, 2, None),
    ]),
    "the same spec again changes nothing": (memory(2), [
        (("adopt_chunk", "c1"), [], ["c1"], [], 0, 1, None),
        (("start",), None, ["c1"], [], 1, 0, None),
        (("reconfigure", 2), [], ["c1"], [], 1, 0, None),
    ]),
    "a chunk made at the old size is released when it lands": (memory(2), [
        (("start",), None, [], [], 1, 1, None),
        (("reconfigure", 2, 4 * GiB), [], [], [], 1, 1, None),
        (("reserved", "c1", 2 * GiB), ["c1"], [], [], 0, 2, None),
        (("start",), None, [], [], 1, 1, None),
        (("reserved", "c2", 4 * GiB), [], ["c2"], [], 0, 1, None),
    ]),
    "a chunk of the old size still ends the shortfall": (memory(1), [
        (("start",), None, [], [], 1, 0, None),
        (("failed", "no memory"), None, [], [], 0, 1, "no memory"),
        (("start",), None, [], [], 1, 0, "no memory"),
        (("reconfigure", 1, 4 * GiB), [], [], [], 1, 0, "no memory"),
        (("reserved", "c1", 2 * GiB), ["c1"], [], [], 0, 1, None),
    ]),
    # A reservation in flight cannot be called back: the pool keeps the chunk it holds
    # and releases the one that lands. Until then held + reserving exceeds the count.
    "a count lowered while reserving: the chunk that lands is released": (memory(2), [
        (("adopt_chunk", "c1"), [], ["c1"], [], 0, 1, None),
        (("start",), None, ["c1"], [], 1, 0, None),
        (("reconfigure", 1), [], ["c1"], [], 1, 0, None, OVER),
        (("reserved", "c2"), ["c2"], ["c1"], [], 0, 0, None),
    ]),
    "a count lowered while reserving, and the reservation fails": (memory(2), [
        (("adopt_chunk", "c1"), [], ["c1"], [], 0, 1, None),
        (("start",), None, ["c1"], [], 1, 0, None),
        (("reconfigure", 1), [], ["c1"], [], 1, 0, None, OVER),
        (("failed", "no memory"), None, ["c1"], [], 0, 0, "no memory"),
    ]),
    "a count lowered to zero while reserving": (memory(1), [
        (("start",), None, [], [], 1, 0, None),
        (("reconfigure", 0), [], [], [], 1, 0, None, OVER),
        (("reserved", "c1"), ["c1"], [], [], 0, 0, None),
    ]),
    "chunks kept across a restart beyond the count: the newest is released": (memory(1), [
        (("adopt_chunk", "c1"), [], ["c1"], [], 0, 0, None),
        (("adopt_chunk", "c2"), ["c2"], ["c1"], [], 0, 0, None),
    ]),
    "a chunk kept across a restart at another size is released": (memory(2), [
        (("adopt_chunk", "c1", 4 * GiB), ["c1"], [], [], 0, 2, None),
    ]),
    "loans kept across a restart, then chunks": (memory(2), [
        (("adopt_loan", 7), [], [], [7], 0, 1, None),
        (("adopt_chunk", "c1"), [], ["c1"], [7], 0, 0, None),
        (("adopt_chunk", "c2"), ["c2"], ["c1"], [7], 0, 0, None),
        (("lend", 8), "c1", [], [7, 8], 0, 0, None),
        (("returned", 7), None, [], [8], 0, 1, None),
    ]),
    "more loans kept across a restart than the count": (memory(1), [
        (("adopt_loan", 1), [], [], [1], 0, 0, None),
        (("adopt_loan", 2), [], [], [1, 2], 0, 0, None),
        (("adopt_chunk", "c1"), ["c1"], [], [1, 2], 0, 0, None),
        (("returned", 2), None, [], [1], 0, 0, None),
        (("returned", 1), None, [], [], 0, 1, None),
    ]),
    "a disk pool works the same": (disk("/var/tmp", 1), [
        (("start",), None, [], [], 1, 0, None),
        (("reserved", "d1"), [], ["d1"], [], 0, 0, None),
        (("lend", 1, "bob", "make"), "d1", [], [1], 0, 0, None),
        (("returned", 1), None, [], [], 0, 1, None),
    ]),
}


@pytest.mark.parametrize("name", SEQUENCES)
def test_sequence(name):
    spec, steps = SEQUENCES[name]
    pool = Pool(spec)
    for i, (step, out, held, lent, reserving, missing, shortfall, *note) in enumerate(steps):
        assert do(pool, step) == out, f"step {i}: {step}"
        assert state(pool) == (held, lent, reserving, missing, shortfall), f"step {i}: {step}"
        if note != [OVER]:
            assert_places_add_up(pool)


def test_lend_gives_the_loan_the_pool_size():
    pool = pool_after(memory(2), [("adopt_chunk", "c1")])
    loan = a_loan()
    assert loan.size_bytes == 0
    assert pool.lend(1, loan) == "c1"
    assert pool.loans == {1: loan}
    assert loan.size_bytes == 2 * GiB


NOTHING_HELD = [
    ("a new pool", memory(2), []),
    ("all lent", memory(1), [("adopt_chunk", "c1"), ("lend", 1)]),
    ("still reserving", memory(2), [("start",), ("start",)]),
    ("after a failure", memory(1), [("start",), ("failed", "no memory")]),
    ("a retired pool", memory(0), []),
]


@pytest.mark.parametrize("why, spec, steps", NOTHING_HELD, ids=[n[0] for n in NOTHING_HELD])
def test_lend_with_nothing_held_is_none_and_changes_nothing(why, spec, steps):
    pool = pool_after(spec, steps)
    before = pool.snapshot(), list(pool.loans)
    loan = a_loan()
    assert pool.lend(99, loan) is None
    assert (pool.snapshot(), list(pool.loans)) == before
    assert loan.size_bytes == 0


# (what is illegal, spec, steps before, the illegal verb)
ILLEGAL = [
    ("reserved with nothing under way", memory(2), [], ("reserved", "c9")),
    ("reserved after every reservation landed", memory(2), [("start",), ("reserved", "c1")],
     ("reserved", "c9")),
    ("reserved at another size with nothing under way", memory(2), [("adopt_chunk", "c1")],
     ("reserved", "c9", 4 * GiB)),
    ("failed with nothing under way", memory(2), [], ("failed", "no memory")),
    ("failed after the failure", memory(2), [("start",), ("failed", "no memory")],
     ("failed", "again")),
    ("start with every place held", memory(1), [("adopt_chunk", "c1")], ("start",)),
    ("start with every place reserving", memory(2), [("start",), ("start",)], ("start",)),
    ("start with every place lent", memory(1), [("adopt_chunk", "c1"), ("lend", 1)], ("start",)),
    ("start with more loans than places", memory(1), [("adopt_loan", 1), ("adopt_loan", 2)],
     ("start",)),
    ("start in a retired pool", memory(0), [], ("start",)),
    ("lend with a duplicate id", memory(2), [("adopt_chunk", "c1"), ("adopt_chunk", "c2"), ("lend", 1)],
     ("lend", 1)),
    ("lend with a duplicate id, nothing held", memory(1), [("adopt_chunk", "c1"), ("lend", 1)],
     ("lend", 1)),
    ("lend with the id of an adopted loan", memory(2), [("adopt_loan", 1), ("adopt_chunk", "c1")],
     ("lend", 1)),
    ("returned: an unknown loan", memory(2), [("adopt_chunk", "c1"), ("lend", 1)], ("returned", 2)),
    ("returned twice", memory(2), [("adopt_chunk", "c1"), ("lend", 1), ("returned", 1)],
     ("returned", 1)),
    ("returned after undo_lend", memory(2), [("adopt_chunk", "c1"), ("lend", 1), ("undo", 1, "c1")],
     ("returned", 1)),
    ("undo_lend of an unknown loan", memory(2), [("adopt_chunk", "c1")], ("undo", 1, "c1")),
    ("undo_lend after the return", memory(2), [("adopt_chunk", "c1"), ("lend", 1), ("returned", 1)],
     ("undo", 1, "c1")),
    ("undo_lend twice", memory(2), [("adopt_chunk", "c1"), ("lend", 1), ("undo", 1, "c1")],
     ("undo", 1, "c1")),
    ("reconfigure memory to a disk", memory(2), [("adopt_chunk", "c1"), ("lend", 1)],
     ("reconfigure_to", disk("/var/tmp", 2, 2 * GiB))),
    ("reconfigure memory to the first disk", memory(2), [("adopt_chunk", "c1")],
     ("reconfigure_to", PoolSpec("disk", 2 * GiB, 2))),
    ("reconfigure a disk to another path", disk("/var/tmp", 2), [("adopt_chunk", "d1")],
     ("reconfigure_to", disk("/srv", 2))),
    ("reconfigure a disk to memory", disk("/var/tmp", 2), [("adopt_chunk", "d1"), ("start",)],
     ("reconfigure_to", memory(2, 10 * GiB))),
    ("adopt_loan with a duplicate id", memory(2), [("adopt_loan", 1)], ("adopt_loan", 1)),
    ("adopt_loan with the id of a loan made here", memory(2), [("adopt_chunk", "c1"), ("lend", 1)],
     ("adopt_loan", 1)),
]


def observe(pool):
    """Everything a caller can see, kept by identity where the pool hands out its own objects."""
    return {"snapshot": pool.snapshot(), "missing": pool.missing(), "spec": pool.spec,
            "held": pool.held, "held items": list(pool.held), "loans": pool.loans,
            "loan items": list(pool.loans.items()), "loan facts": [l.as_dict() for l in pool.loans.values()]}


# Each illegal step also after a shortfall was recorded (which reserved() would clear);
# a retired pool (count 0) reserves nothing, so it cannot have one.
ILLEGAL_CASES = [(*case, False) for case in ILLEGAL] + \
    [(*case, True) for case in ILLEGAL if case[1].count > 0]


@pytest.mark.parametrize("why, spec, steps, illegal, failing", ILLEGAL_CASES,
                         ids=[c[0] + (" (short)" if c[4] else "") for c in ILLEGAL_CASES])
def test_illegal_transitions_raise_and_change_nothing(why, spec, steps, illegal, failing):
    if failing:
        steps = [("start",), ("failed", "no memory")] + steps
    pool = pool_after(spec, steps)
    before = observe(pool)
    with pytest.raises(IllegalTransition) as e:
        do(pool, illegal)
    after = observe(pool)
    assert after == before
    for name in ("spec", "held", "loans"):
        assert after[name] is before[name], name
    assert all(a[1] is b[1] for a, b in zip(after["loan items"], before["loan items"]))
    assert str(e.value).startswith(spec.name + ": ")


def test_an_illegal_lend_leaves_the_loan_alone():
    pool = pool_after(memory(2), [("adopt_chunk", "c1"), ("adopt_chunk", "c2"), ("lend", 1)])
    loan = a_loan("mallory", "sh")
    with pytest.raises(IllegalTransition):
        pool.lend(1, loan)
    assert loan.size_bytes == 0
    assert pool.loans[1].user == "alice"


def test_a_loan_adopted_after_a_chunk_when_the_count_was_lowered_across_a_restart():
    # Before the restart: count 2, one chunk held, one lent. After it: count 1.
    # systemd passes the stored descriptors in its own order, here the chunk first.
    pool = Pool(memory(1))
    assert pool.adopt_chunk("c1", 2 * GiB) == []
    released = pool.adopt_loan(1, a_loan())
    assert_places_add_up(pool)          # held 1 + lent 1 in a pool of 1
    assert released == ["c1"]


def test_snapshot():
    pool = pool_after(disk("/var/tmp", 3), [("adopt_chunk", "d1"), ("adopt_chunk", "d2"), ("lend", 1),
                                            ("start",), ("failed", "no space")])
    assert pool.snapshot() == {"name": "disk:/var/tmp", "kind": "disk", "path": "/var/tmp",
                               "size": 10737418240, "count": 3, "held": 1, "lent": 1,
                               "reserving": 0, "shortfall": "no space"}
    assert pool.name == "disk:/var/tmp"
    assert Pool(memory(1)).name == "memory"


def test_loan_as_dict():
    loan = Loan(1000, "alice", 4242, "matlab", 1700000000.0, 2 * GiB, True)
    assert loan.as_dict() == {"uid": 1000, "user": "alice", "pid": 4242, "command": "matlab",
                              "since": 1700000000.0, "size_bytes": 2147483648, "handed_fd": True}


# (what it shows, [(spec, steps)] for each pool, the STATUS= line)
STATUS = [
    ("the example in pool.py",
     [(memory(2), [("adopt_chunk", "m1"), ("adopt_chunk", "m2"), ("lend", 1, "alice", "matlab")]),
      (disk("/var/tmp", 1), [("adopt_chunk", "d1")])],
     "memory 1/2 held (2.0 GiB), 1 lent to alice (matlab); disk /var/tmp 1/1 held (10 GiB)"),
    ("no pools", [], ""),
    ("a new pool", [(memory(1, 256 * MiB), [])], "memory 0/1 held (0 B)"),
    ("all held", [(memory(2, 256 * MiB), [("adopt_chunk", "c1"), ("adopt_chunk", "c2")])],
     "memory 2/2 held (512 MiB)"),
    ("two loans", [(memory(2), [("adopt_chunk", "c1"), ("adopt_chunk", "c2"),
                                ("lend", 1, "alice", "matlab"), ("lend", 2, "bob", "make")])],
     "memory 0/2 held (0 B), 2 lent to alice (matlab) and 1 other"),
    ("the oldest loan is named",
     [(memory(1), [("adopt_loan", 1, "carol", "R"), ("adopt_loan", 2, "alice", "matlab"),
                   ("adopt_loan", 3, "bob", "make")])],
     "memory 0/1 held (0 B), 3 lent to carol (R) and 2 others"),
    ("reserving", [(memory(2), [("start",)])], "memory 0/2 held (0 B), reserving"),
    ("short", [(memory(1), [("start",), ("failed", "only 100 MiB available")])],
     "memory 0/1 held (0 B), short: only 100 MiB available"),
    ("everything at once",
     [(memory(3, 256 * MiB), [("adopt_chunk", "c1"), ("adopt_chunk", "c2"), ("lend", 1, "bob", "make"),
                              ("start",), ("failed", "no memory"), ("start",)])],
     "memory 1/3 held (256 MiB), 1 lent to bob (make), reserving, short: no memory"),
    ("a retired disk pool", [(disk("/srv", 1), [("adopt_chunk", "d1"), ("lend", 1, "dave", "dd"),
                                                ("reconfigure", 0)])],
     "disk /srv 0/0 held (0 B), 1 lent to dave (dd)"),
    ("a name that is not ASCII", [(memory(1), [("adopt_loan", 1, "zoë", "Mathématiques")])],
     "memory 0/1 held (0 B), 1 lent to zoë (Mathématiques)"),
    # The borrower names its command, and STATUS= is one line of sd_notify's
    # newline-separated assignments: a newline in it would be a message of its own.
    ("a command with a newline", [(memory(1), [("adopt_loan", 1, "eve", "x\nSTOPPING=1")])],
     "memory 0/1 held (0 B), 1 lent to eve (x\\nSTOPPING=1)"),
    ("a command with control characters", [(memory(1), [("adopt_loan", 1, "eve", "\x1b[2J\x00\t")])],
     "memory 0/1 held (0 B), 1 lent to eve (\\x1b[2J\\x00\\t)"),
    ("a shortfall with a newline", [(memory(1), [("start",), ("failed", "no\nmemory")])],
     "memory 0/1 held (0 B), short: no\\nmemory"),
]


@pytest.mark.parametrize("why, pools, line", STATUS, ids=[s[0] for s in STATUS])
def test_status_line(why, pools, line):
    text = status_line([pool_after(spec, steps) for spec, steps in pools])
    assert text == line
    assert text.isprintable()
