"""Polkit through its bus seam: what each answer of polkitd (or of the bus) becomes.

The bus is a stand-in that answers with real jeepney messages (a method
return or a D-Bus error, built as the bus would deliver them) or fails as a
connection does; the real polkitd is asked in the system tier.
"""

import sys

import jeepney
import pytest

from holdingpen.pen import polkit
from holdingpen.pen.authorize import Authorizer

from test_authorize import NOBODY, a_peer


class Bus:
    """A system-bus connection that plays a script: one step per question asked."""

    def __init__(self, script, log):
        self.script, self.log = script, log
        self.closed = False

    def send_and_get_reply(self, message, timeout):
        self.log.append(("asked", message, timeout))
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step(message)

    def close(self):
        self.closed = True
        self.log.append(("closed",))


def answer(is_authorized):
    return lambda message: jeepney.new_method_return(message, "(bba{ss})",
                                                     ((is_authorized, False, {}),))


def error(name):
    return lambda message: jeepney.new_error(message, name, "s", ("told so",))


def polkit_playing(*scripts):
    """A Polkit whose n-th connection plays scripts[n]; and the log of what happened."""
    log, buses = [], list(scripts)

    def open_bus():
        if not buses:
            raise FileNotFoundError(2, "No such file or directory")
        log.append(("opened",))
        return Bus(list(buses.pop(0)), log)
    return polkit.Polkit(timeout_s=0.5, open_bus=open_bus), log


# (what each connection does, in turn; the outcome: True/False or (exception, message))
CASES = [
    ([[answer(True)]], True),
    ([[answer(False)]], False),
    *[([[error(name)]], (polkit.Unavailable, f"polkit is not running ({name})"))
      for name in sorted(polkit._NO_POLKIT)],
    ([[error("org.freedesktop.PolicyKit1.Error.Failed")]],
     (polkit.Unavailable, "polkit refused the question: org.freedesktop.PolicyKit1.Error.Failed: "
                          "('told so',)")),
    ([[TimeoutError()]], (polkit.NoAnswer, "polkit did not answer within 0.5 s")),
    # polkitd (or the bus) restarted: asked once more on a fresh connection
    ([[ConnectionResetError(104, "Connection reset by peer")], [answer(True)]], True),
    ([[EOFError()], [answer(False)]], False),
    ([[BrokenPipeError(32, "Broken pipe")], [BrokenPipeError(32, "Broken pipe")]],
     (polkit.Unavailable, "cannot reach polkit on the system bus: [Errno 32] Broken pipe")),
    ([], (polkit.Unavailable, "cannot reach polkit on the system bus: "
                              "[Errno 2] No such file or directory")),     # no system bus
]


@pytest.mark.parametrize("scripts, outcome", CASES)
def test_answers(scripts, outcome):
    p, log = polkit_playing(*scripts)
    if isinstance(outcome, bool):
        assert p.allowed(4242, 123456, 2000) is outcome
    else:
        with pytest.raises(outcome[0]) as raised:
            p.allowed(4242, 123456, 2000)
        assert str(raised.value) == outcome[1]


def test_the_question_is_about_the_kernels_process_and_never_interactive():
    p, log = polkit_playing([answer(True)])
    p.allowed(4242, 123456, 2000)
    (_, message, timeout_s), = [e for e in log if e[0] == "asked"]
    assert timeout_s == 0.5
    assert message.header.fields[jeepney.HeaderFields.destination] == "org.freedesktop.PolicyKit1"
    assert message.header.fields[jeepney.HeaderFields.member] == "CheckAuthorization"
    assert message.body == (("unix-process", {"pid": ("u", 4242), "start-time": ("t", 123456),
                                              "uid": ("i", 2000)}),
                            "org.holdingpen.borrow", {}, 0, "")    # flags 0: no password prompt


def test_one_connection_serves_many_questions():
    p, log = polkit_playing([answer(True), answer(False), answer(True)])
    assert [p.allowed(1, 2, 3) for _ in range(3)] == [True, False, True]
    assert [e[0] for e in log].count("opened") == 1


def test_after_no_answer_the_next_question_uses_a_new_connection():
    """A late answer on the old connection must not be read as the next question's."""
    p, log = polkit_playing([TimeoutError()], [answer(True)])
    with pytest.raises(polkit.NoAnswer):
        p.allowed(1, 2, 3)
    assert ("closed",) in log
    assert p.allowed(1, 2, 3) is True
    assert [e[0] for e in log] == ["opened", "asked", "closed", "opened", "asked"]


def test_warm_up_connects_once_and_never_raises():
    p, log = polkit_playing([answer(True)])
    p.warm_up()
    assert log == [("opened",)]
    assert p.allowed(1, 2, 3) is True
    assert [e[0] for e in log].count("opened") == 1
    nothing, log = polkit_playing()           # no system bus at all
    nothing.warm_up()
    assert log == []


@pytest.fixture
def no_jeepney(monkeypatch):
    """Python as it is on a machine without python3-jeepney: every import of it fails."""
    for name in [n for n in sys.modules if n == "jeepney" or n.startswith("jeepney.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "jeepney", None)


def test_without_jeepney_warm_up_returns_and_a_borrow_is_decided_by_the_allow_list(no_jeepney):
    p = polkit.Polkit()
    p.warm_up()                   # the daemon's asker thread calls this first: it must live on
    with pytest.raises(polkit.Unavailable) as raised:
        p.allowed(1, 2, 3)
    assert str(raised.value) == ("polkit cannot be asked: the D-Bus library jeepney is missing; "
                                 "install it with: apt install python3-jeepney")
    said = []
    authorize = Authorizer(users=("nobody",), events=lambda event, message: said.append(event))
    authorize.warm_up()
    peer = a_peer(NOBODY)
    try:
        assert authorize(peer, "memory") == (True, "")
    finally:
        peer.close()
    assert said == ["no-polkit"]
