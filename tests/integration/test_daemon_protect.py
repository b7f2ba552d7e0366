"""Protected loans in a real daemon process, with systemd's part played by a
stand-in that a test holds up or lets go (tests/system/test_protect_system.py
has the real systemd): the borrower hears of its loan only once it is protected,
a hung systemd costs it a bounded wait, and one that hangs up meanwhile leaves
its reservation in the pool."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import read_reply, wait_until
from pen import MiB, Notifications, connect
from holdingpen.pen import protocol

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SESSION = ["user.slice", "user-2000.slice", "session-3.scope"]

SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, sys.argv[1])
    from holdingpen.pen import config, daemon, events, fdstore
    from holdingpen.pen.protect import Protection
    from holdingpen.pen.protecting import Protecting
    from holdingpen.pen.systemd_units import NoAnswer
    from systemd import daemon as sd

    mode, socket_path, tmp = sys.argv[2:5]

    class Units:
        # PID 1 as the protect thread sees it: set() waits for the test's "go" file
        # and records what it was asked; "hung" answers nothing, as a timeout would.
        def get(self, unit, properties):
            return {p: 0 if p == "MemoryMin" else "none" for p in properties}

        def set(self, unit, settings):
            if mode == "hung":
                time.sleep(0.3)
                raise NoAnswer("systemd did not answer within 0.3 s")
            while not os.path.exists(os.path.join(tmp, "go")):
                time.sleep(0.01)
            with open(os.path.join(tmp, "sets"), "a") as f:
                f.write(json.dumps([unit, settings]) + "\\n")

        def close(self):
            pass

    cfg = config.parse(b'[memory]\\nsize = "4M"\\ncount = 1\\n', "test")
    log = events.Events(events.stderr_sink)
    protecting = Protecting(Protection(Units()), None, log, proc=os.path.join(tmp, "proc"))
    daemon.Daemon(cfg, None, daemon.bind(socket_path), sd.notify, log, fdstore.NoStore(),
                  protecting=protecting).run()
""")


@pytest.fixture
def run_daemon(shared_tmp):
    """run_daemon(mode) -> (socket path, tmp dir, log path): the daemon, ready; this
    process's borrows come from alice's session (the stand-in /proc says so)."""
    started = []

    def start(mode):
        cgroup = shared_tmp / "proc" / str(os.getpid()) / "cgroup"
        cgroup.parent.mkdir(parents=True)
        cgroup.write_text("0::/" + "/".join(SESSION) + "\n")
        notify = Notifications(shared_tmp / "notify.sock")
        socket_path, log = str(shared_tmp / "hp.sock"), shared_tmp / "daemon.log"
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT, REPO, mode, socket_path,
                                 str(shared_tmp)], env=dict(os.environ, NOTIFY_SOCKET=notify.path),
                                stdout=open(log, "w"), stderr=subprocess.STDOUT)
        started.append((proc, notify))
        notify.wait_for("READY=1", "the daemon to be ready")
        return socket_path, shared_tmp, log

    yield start
    for proc, notify in started:
        proc.terminate()
        assert proc.wait(30) == 0
        notify.close()


def borrow(socket_path):
    s = connect(socket_path)
    s.sendall(protocol.encode_request(protocol.Request(protocol.BORROW, "memory")))
    return s


def status(socket_path):
    with connect(socket_path) as s:
        s.sendall(protocol.encode_request(protocol.Request(protocol.STATUS)))
        return json.loads(read_reply(s))


def sets(tmp):
    path = tmp / "sets"
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()] \
        if path.exists() else []


def test_the_borrower_hears_only_once_its_units_are_protected(run_daemon):
    socket_path, tmp, log = run_daemon("gated")
    with borrow(socket_path) as s:
        with pytest.raises(socket.timeout):
            read_reply(s, timeout_s=0.5)       # systemd has not answered yet
        [loan] = status(socket_path)["loans"]
        assert (loan["protected_units"], loan["unprotected"]) == ([], "being protected")
        (tmp / "go").touch()
        reply = json.loads(read_reply(s))
        assert reply["ok"] is True
        assert sets(tmp) == [(unit, {"MemoryMin": 4 * MiB}) for unit in SESSION[:2]] + \
            [(SESSION[2], {"MemoryMin": 4 * MiB, "ManagedOOMPreference": "avoid"})]
        [loan] = status(socket_path)["loans"]
        assert (loan["protected_units"], loan["unprotected"]) == (SESSION, None)
        assert f"protecting {', '.join(SESSION)}" in log.read_text()
    # The loan ends: each unit as it was, innermost first.
    wait_until(lambda: len(sets(tmp)) == 6, "the protection put back")
    assert sets(tmp)[3:] == [(SESSION[2], {"MemoryMin": 0, "ManagedOOMPreference": "none"}),
                             (SESSION[1], {"MemoryMin": 0}), (SESSION[0], {"MemoryMin": 0})]


def test_a_hung_systemd_costs_a_bounded_wait_then_an_unprotected_loan(run_daemon):
    socket_path, tmp, log = run_daemon("hung")
    began = time.monotonic()
    with borrow(socket_path) as s:
        reply = json.loads(read_reply(s, timeout_s=10))
        assert reply["ok"] is True and time.monotonic() - began < 5
        [loan] = status(socket_path)["loans"]
        assert loan["protected_units"] == []
        assert loan["unprotected"] == "systemd did not answer within 0.3 s"
    comm = open("/proc/self/comm").read().strip()
    assert f"unprotected: root's loan ({comm}, pid {os.getpid()}) is not protected: " \
        "systemd did not answer within 0.3 s" in log.read_text()


def test_a_borrower_that_hangs_up_while_waiting_leaves_its_reservation_in_the_pool(run_daemon):
    socket_path, tmp, log = run_daemon("gated")
    s = borrow(socket_path)
    wait_until(lambda: status(socket_path)["loans"], "the loan made")
    s.close()
    wait_until(lambda: not status(socket_path)["loans"], "the loan ended")
    (tmp / "go").touch()
    [pool] = status(socket_path)["pools"]
    assert (pool["held"], pool["lent"]) == (1, 0)
    text = log.read_text()
    assert text.count("reserved 4.0 MiB") == 1, text    # kept, not reserved again
    assert "holdingpen: lent:" not in text and "holdingpen: returned:" not in text, text


def test_a_loan_as_a_descriptor_is_answered_at_once_and_protected_all_the_same(run_daemon):
    socket_path, tmp, log = run_daemon("gated")
    with connect(socket_path) as s:
        s.sendall(protocol.encode_request(protocol.Request(protocol.BORROW, "memory", fd=True)))
        fds = []
        assert json.loads(read_reply(s, timeout_s=10, fds=fds))["fd"] is True
        for fd in fds:
            os.close(fd)
        [loan] = status(socket_path)["loans"]
        assert (loan["protected_units"], loan["unprotected"]) == ([], "being protected")
        (tmp / "go").touch()
        wait_until(lambda: status(socket_path)["loans"][0]["protected_units"] == SESSION,
                   "the loan protected")
