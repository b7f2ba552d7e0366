"""The queue rules, driven directly: no files, no processes."""

import pytest

from holdingpen.lock.lockqueue import (EXCLUSIVE as X, HOLDING, SHARED as S, WAITING, arrange,
                                  blockers, next_seq, parse_ticket, ticket_name)


@pytest.mark.parametrize("seq, mode, name", [
    (1, X, "0000000001.exclusive"),
    (42, S, "0000000042.shared"),
    (12345678901, S, "12345678901.shared"),   # past ten digits: longer, still parsed
])
def test_ticket_names_round_trip(seq, mode, name):
    assert ticket_name(seq, mode) == name
    assert parse_ticket(name) == (seq, mode)


@pytest.mark.parametrize("name", [
    ".new.123.456", "0000000001", "0000000001.", "0000000001.both", "x.shared",
    "0000000000.shared", "-1.shared", "0000000001.exclusive.bak", "٣.shared", "",
])
def test_other_names_are_not_tickets(name):
    assert parse_ticket(name) is None


@pytest.mark.parametrize("seq, mode", [(0, X), (-3, S), (1, "both")])
def test_bad_tickets_are_refused(seq, mode):
    with pytest.raises(ValueError):
        ticket_name(seq, mode)


@pytest.mark.parametrize("tickets, expected", [
    ([], 1),
    ([(1, X)], 2),
    ([(7, S), (3, X), (5, S)], 8),
])
def test_next_seq_is_past_every_ticket(tickets, expected):
    assert next_seq(tickets) == expected


# (queue, my ticket, whom I wait for)
BLOCKERS = [
    ([], (1, X), []),
    ([(1, S), (2, S)], (3, X), [(1, S), (2, S)]),               # exclusive waits for all
    ([(1, S), (2, S)], (3, S), []),                             # shared joins shared
    ([(1, X)], (2, S), [(1, X)]),                               # shared waits for exclusive
    ([(1, S), (2, X), (3, S)], (4, S), [(2, X)]),               # ... behind a waiting one
    ([(1, X), (2, S), (3, X)], (4, S), [(1, X), (3, X)]),
    ([(1, X), (3, X), (5, S)], (4, X), [(1, X), (3, X)]),       # later tickets never block
    ([(2, S), (1, X)], (3, X), [(1, X), (2, S)]),               # oldest first, whatever order given
]


@pytest.mark.parametrize("queue, mine, expected", BLOCKERS)
def test_blockers(queue, mine, expected):
    assert blockers(queue + [mine], *mine) == expected


# (machine locks (pid, mode, waiting), live tickets (seq, mode, pid), expected rows)
ARRANGE = [
    ([], [], []),
    # a flock(1) holder /proc/locks listed twice (read a page at a time): one row
    ([(20, X, False), (20, X, False)], [], [(20, X, HOLDING, None)]),
    # a perflock holder and a queued job
    ([(10, X, False)], [(1, X, 10), (2, S, 11)],
     [(10, X, HOLDING, 1), (11, S, WAITING, 2)]),
    # plain flock(1) holder, and a perflock job asking for the lock file itself
    ([(20, S, False), (10, X, True)], [(1, X, 10)],
     [(20, S, HOLDING, None), (10, X, WAITING, 1)]),
    # shared holders in ticket order, whatever the kernel's order
    ([(11, S, False), (10, S, False)], [(2, S, 11), (1, S, 10)],
     [(10, S, HOLDING, 1), (11, S, HOLDING, 2)]),
    # waiters at the lock file come before the rest of the queue, in the kernel's order
    ([(30, X, False), (31, S, True), (12, S, True)], [(2, S, 12), (3, X, 13), (1, S, 14)],
     [(30, X, HOLDING, None), (31, S, WAITING, None), (12, S, WAITING, 2),
      (14, S, WAITING, 1), (13, X, WAITING, 3)]),
    # the mode of a perflock job comes from its ticket
    ([(10, X, True)], [(1, S, 10)], [(10, S, WAITING, 1)]),
    # a pid listed twice at the lock file appears once
    ([(40, X, True), (40, X, True)], [], [(40, X, WAITING, None)]),
]


@pytest.mark.parametrize("machine, tickets, expected", ARRANGE)
def test_arrange(machine, tickets, expected):
    assert arrange(machine, tickets) == expected
