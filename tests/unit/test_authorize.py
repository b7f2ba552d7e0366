"""The authorize step: root, polkit's answer, the allow-list without polkit; the peer must be alive."""

import grp
import os
import pwd

import pytest

from holdingpen.pen import polkit
from holdingpen.pen.authorize import WHO_MAY, Authorizer
from holdingpen.pen.peer import Peer


class Answers:
    """Stands in for polkitd (the real one is asked in the system tier): records each question."""

    def __init__(self, answer):
        self.answer = answer
        self.asked = []

    def allowed(self, pid, start_time, uid):
        self.asked.append((pid, start_time, uid))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def a_peer(uid, alive=True, gid=None):
    """A Peer with a real pidfd: of this process (alive), or of a child already reaped."""
    if alive:
        pidfd = os.pidfd_open(os.getpid())
    else:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        pidfd = os.pidfd_open(pid)
        os.waitpid(pid, 0)
    return Peer(os.getpid(), uid, uid if gid is None else gid, "matlab", 12345, pidfd)


NOBODY = pwd.getpwnam("nobody").pw_uid
NOGROUP = grp.getgrnam("nogroup").gr_name

# (peer uid, polkit's answer, allow-list users, groups, allowed, asked polkit)
CASES = [
    (0, False, (), (), True, False),                      # root: polkit is not even asked
    (NOBODY, True, (), (), True, True),
    (NOBODY, False, ("nobody",), (), False, True),        # polkit's no is final while it runs
    (NOBODY, polkit.Unavailable("no bus"), (), (), False, True),        # empty list: root only
    (NOBODY, polkit.Unavailable("no bus"), ("nobody",), (), True, True),
    (NOBODY, polkit.Unavailable("no bus"), ("alice",), (), False, True),
    (NOBODY, polkit.Unavailable("no bus"), (), (NOGROUP,), True, True),   # primary group
    (NOBODY, polkit.Unavailable("no bus"), (), ("no-such-group",), False, True),
]


@pytest.mark.parametrize("uid, answer, users, groups, allowed, asked", CASES)
def test_decisions(uid, answer, users, groups, allowed, asked):
    answers = Answers(answer)
    peer = a_peer(uid, gid=grp.getgrnam("nogroup").gr_gid if uid == NOBODY else 0)
    try:
        ok, why = Authorizer(answers, users, groups, source="/etc/holdingpen/holdingpen.toml")(peer, "memory")
    finally:
        peer.close()
    assert ok is allowed
    assert bool(answers.asked) is asked
    if asked:
        assert answers.asked == [(os.getpid(), 12345, uid)]   # only what the kernel said
    if not ok:
        expected = WHO_MAY if answer is False else (
            "polkit is not running here, and only the users and groups in [authorize] of "
            "/etc/holdingpen/holdingpen.toml may borrow")
        assert why == expected


def test_polkit_that_does_not_answer_refuses_without_the_allow_list():
    answers = Answers(polkit.NoAnswer("polkit did not answer within 2 s"))
    peer = a_peer(NOBODY)
    try:
        assert Authorizer(answers, ("nobody",))(peer, "memory") == (
            False, "polkit did not answer within 2 s; try again")
    finally:
        peer.close()


def test_after_polkit_failed_to_answer_borrows_are_refused_at_once_for_a_while():
    now = [100.0]
    answers = Answers(polkit.NoAnswer("polkit did not answer within 2 s"))
    authorize = Authorizer(answers, clock=lambda: now[0])
    peer = a_peer(NOBODY)
    try:
        for at in (100.0, 101.0, 104.9):
            now[0] = at
            assert authorize(peer, "memory") == (False, "polkit did not answer within 2 s; try again")
        assert len(answers.asked) == 1           # the ones in between did not wait on it
        now[0], answers.answer = 105.1, True
        assert authorize(peer, "memory") == (True, "")
        assert len(answers.asked) == 2
    finally:
        peer.close()


def test_a_client_gone_before_the_check_is_refused_unasked():
    answers = Answers(True)
    peer = a_peer(NOBODY, alive=False)
    try:
        assert Authorizer(answers)(peer, "memory") == (
            False, "the client went away before it could be checked")
    finally:
        peer.close()
    assert answers.asked == []


def test_without_polkit_the_journal_hears_it_once():
    said = []
    authorize = Authorizer(Answers(polkit.Unavailable("polkit is not running")), ("nobody",),
                           events=lambda event, message, **kw: said.append((event, message)))
    for _ in range(3):
        peer = a_peer(NOBODY)
        assert authorize(peer, "memory")[0]
        peer.close()
    assert [event for event, _ in said] == ["no-polkit"]
    assert said[0][1].startswith("polkit is not running; deciding by the allow-list")


def test_configure_replaces_the_allow_list():
    authorize = Authorizer(Answers(polkit.Unavailable("x")), ("nobody",))
    authorize.configure((), (), "new.toml")
    peer = a_peer(NOBODY)
    try:
        assert authorize(peer, "memory")[0] is False
    finally:
        peer.close()
