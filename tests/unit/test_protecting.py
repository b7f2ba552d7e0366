"""The daemon's side of protected loans, without a daemon: what each loan shows in
`holdingpen status`, and what is journalled once (tests/integration/test_daemon_protect.py
runs it in a real daemon)."""

import pytest

from holdingpen.pen.chunks import DISK, MEMORY
from holdingpen.pen.peer import Peer
from holdingpen.pen.protect import Result
from holdingpen.pen.protecting import NOT_MEMORY, WAITING, Protecting

SESSION = ("user.slice", "user-2000.slice", "session-3.scope")
OFF = "the cgroup v2 hierarchy at /sys/fs/cgroup has no memory controller"


class Worker:
    def __init__(self):
        self.wanted = []

    def want(self, generation, borrowers):
        self.wanted.append((generation, borrowers))


def protecting(on=True, events=None):
    p = Protecting(object() if on else None, None if on else OFF,
                   events or (lambda *a, **k: None))
    if on:
        p.worker = Worker()
    return p


def answered(p, unprotected=None):
    """p after one lend of loan.1 and its result."""
    generation = p.want([("loan.1", SESSION, 1 << 20)])
    p.done(generation, Result(unprotected or {}, []), {"loan.1": alice()})
    return p


def alice():
    peer = Peer(4242, 2000, 2000, "matlab")
    peer.user = "alice"        # whatever this machine's uid 2000 is called
    return peer


@pytest.mark.parametrize("p, key, chain, kind, shown", [
    (protecting(), "loan.1", SESSION, DISK, ([], NOT_MEMORY)),
    (protecting(on=False), "loan.1", None, MEMORY, ([], OFF)),
    (answered(protecting()), "loan.1", SESSION, MEMORY, (list(SESSION), None)),
    (answered(protecting(), {"loan.1": "polkit does not let us"}), "loan.1", SESSION, MEMORY,
     ([], "polkit does not let us")),
    (protecting(), "loan.9", None, MEMORY,
     ([], "its borrower is in no unit of a user's (see the journal)")),
])
def test_status_of(p, key, chain, kind, shown):
    assert p.status_of(key, chain, kind) == {"protected_units": shown[0], "unprotected": shown[1],
                                             "protected": shown[1] is None}


def test_a_loan_asked_for_but_not_answered_is_being_protected():
    p = protecting()
    p.want([("loan.1", SESSION, 1 << 20)])
    assert p.status_of("loan.1", SESSION, MEMORY)["unprotected"] == WAITING


def test_why_a_loan_is_not_protected_is_journalled_once_by_its_borrower():
    said = []
    p = protecting(events=lambda event, message, **fields: said.append((event, message)))
    for _ in range(3):
        answered(p, {"loan.1": "systemd did not answer within 2 s"})
    assert said == [("unprotected", "alice's loan (matlab, pid 4242) is not protected: "
                     "systemd did not answer within 2 s")]


def test_held_replies_go_out_with_the_first_result_of_their_generation():
    p = protecting()
    first = p.want([("loan.1", SESSION, 1)])
    p.hold(first, "conn 1", b"reply 1")
    second = p.want([("loan.1", SESSION, 1), ("loan.2", SESSION, 1)])
    p.hold(second, "conn 2", b"reply 2")
    assert p.done(first, Result({}, []), {}) == [("conn 1", b"reply 1")]
    assert p.done(second, Result({}, []), {}) == [("conn 2", b"reply 2")]


def test_off_it_asks_nothing_and_holds_no_one():
    p = protecting(on=False)
    assert p.want([("loan.1", SESSION, 1)]) == 0
    assert p.chain_for(alice(), MEMORY) is None
