"""The shell of protected loans, short of systemd: the cgroup check on fake
directories, /proc/PID/cgroup, and reconcile() against an in-memory PID 1
(tests/system/test_protect_system.py drives the real one)."""

import pytest

import json
import threading

from holdingpen.pen.protect import (Borrower, NotProtectable, Protection, ProtectionWorker,
                                    chain_of_pid, unavailable_reason)
from holdingpen.pen.systemd_units import Gone, NoAnswer, SystemdError
from holdingpen.pen.protection import MEMORY_MIN, OOM_PREFERENCE

MiB = 1 << 20
SESSION = ("user.slice", "user-2000.slice", "session-3.scope")
BOB = ("user.slice", "user-2001.slice", "session-4.scope")


# ---- may this machine protect memory at all? ----

@pytest.mark.parametrize("files, why", [
    ({"cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n"}, None),
    ({"cgroup.controllers": "cpuset cpu io pids\n"}, "has no memory controller"),
    ({"cgroup.controllers": ""}, "has no memory controller"),
    # Hybrid (this host's containers): /sys/fs/cgroup is a tmpfs of v1 hierarchies.
    ({"memory/memory.limit_in_bytes": "9223372036854771712\n",
      "unified/cgroup.controllers": ""}, "is not a cgroup v2 hierarchy"),
    ({}, "is not a cgroup v2 hierarchy"),
])
def test_unavailable_reason(tmp_path, files, why):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    reason = unavailable_reason(tmp_path)
    if why is None:
        assert reason is None
    else:
        assert why in reason and str(tmp_path) in reason


def test_unavailable_reason_names_the_fix(tmp_path):
    assert "systemd.unified_cgroup_hierarchy=1" in unavailable_reason(tmp_path / "nothing")


def test_chain_of_pid(tmp_path):
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text("0::/user.slice/user-2000.slice/session-3.scope\n")
    assert chain_of_pid(42, proc=tmp_path) == SESSION
    with pytest.raises(NotProtectable, match="process 43 is gone"):
        chain_of_pid(43, proc=tmp_path)


def test_chain_of_this_process():
    # Whatever runs the tests: a chain of user units, or a clear reason why not.
    try:
        chain = chain_of_pid("self")
    except NotProtectable as e:
        assert str(e)
    else:
        assert chain[0] == "user.slice"


# ---- reconcile, against PID 1 in memory ----

class FakeSystemd:
    """The units PID 1 has loaded, with their settings; records every set()."""

    def __init__(self, units, refuse=(), hang=False):
        self.units = {name: dict(settings) for name, settings in units.items()}
        self.refuse = set(refuse)
        self.hang = hang
        self.sets = []
        self.calls = 0

    def get(self, unit, properties):
        self.calls += 1
        if self.hang:
            raise NoAnswer("systemd did not answer within 2 s")
        if unit not in self.units:
            raise Gone(f"{unit} is not loaded")
        return {p: self.units[unit][p] for p in properties}

    def set(self, unit, settings):
        self.calls += 1
        if self.hang:
            raise NoAnswer("systemd did not answer within 2 s")
        if unit not in self.units:
            raise Gone(f"{unit} is not loaded")
        if unit in self.refuse:
            raise SystemdError(f"polkit does not let us change {unit}")
        self.sets.append((unit, settings))
        self.units[unit].update(settings)

    def close(self):
        pass


def machine(**admin):
    """Alice's and bob's sessions, nothing protected (but what admin says)."""
    units = {"user.slice": {MEMORY_MIN: 0}, "user-2000.slice": {MEMORY_MIN: 0},
             "session-3.scope": {MEMORY_MIN: 0, OOM_PREFERENCE: "none"},
             "user-2001.slice": {MEMORY_MIN: 0},
             "session-4.scope": {MEMORY_MIN: 0, OOM_PREFERENCE: "none"}}
    for unit, memory_min in admin.items():
        units[unit.replace("_", "-") + ".slice"][MEMORY_MIN] = memory_min
    return units


def memory_mins(systemd):
    return {unit: settings[MEMORY_MIN] for unit, settings in systemd.units.items()}


def test_a_loan_is_protected_and_put_back():
    systemd = FakeSystemd(machine())
    protection = Protection(systemd)
    alice = Borrower("loan.1", SESSION, 64 * MiB)
    assert protection.reconcile([alice]) == ({}, [])
    assert memory_mins(systemd) == {"user.slice": 64 * MiB, "user-2000.slice": 64 * MiB,
                                    "session-3.scope": 64 * MiB, "user-2001.slice": 0,
                                    "session-4.scope": 0}
    assert systemd.units["session-3.scope"][OOM_PREFERENCE] == "avoid"
    assert [unit for unit, _ in systemd.sets] == list(SESSION)       # outermost first
    assert protection.reconcile([]) == ({}, [])
    assert systemd.units == machine()
    assert protection.bases == {}


def test_an_unchanged_unit_is_not_set_again():
    systemd = FakeSystemd(machine())
    protection = Protection(systemd)
    protection.reconcile([Borrower("loan.1", SESSION, 64 * MiB)])
    systemd.sets.clear()
    protection.reconcile([Borrower("loan.1", SESSION, 64 * MiB),
                          Borrower("loan.2", BOB, 64 * MiB)])
    assert [unit for unit, _ in systemd.sets] == ["user.slice", "user-2001.slice",
                                                  "session-4.scope"]


def test_the_administrators_protection_comes_back():
    systemd = FakeSystemd(machine(user=512 * MiB))
    protection = Protection(systemd)
    protection.reconcile([Borrower("loan.1", SESSION, 64 * MiB)])
    assert systemd.units["user.slice"][MEMORY_MIN] == 576 * MiB
    protection.reconcile([])
    assert systemd.units["user.slice"][MEMORY_MIN] == 512 * MiB


def test_a_restart_keeps_live_loans_and_forgets_ended_ones(tmp_path):
    state = tmp_path / "protection.json"
    systemd = FakeSystemd(machine(user=512 * MiB))
    before = Protection(systemd, state)
    before.reconcile([Borrower("loan.1", SESSION, 64 * MiB), Borrower("loan.2", BOB, 32 * MiB)])
    # Killed; bob's loan ended meanwhile. The next daemon knows only alice's.
    after = Protection(systemd, state)
    assert after.reconcile([Borrower("loan.1", SESSION, 64 * MiB)]) == ({}, [])
    assert memory_mins(systemd) == {"user.slice": 576 * MiB, "user-2000.slice": 64 * MiB,
                                    "session-3.scope": 64 * MiB, "user-2001.slice": 0,
                                    "session-4.scope": 0}
    assert systemd.units["session-4.scope"][OOM_PREFERENCE] == "none"
    Protection(systemd, state).reconcile([])
    assert systemd.units == machine(user=512 * MiB)
    assert json.loads(state.read_text()) == {}


class Killed(BaseException):
    """The daemon dies here."""


def test_a_daemon_killed_while_raising_leaves_what_to_put_back(tmp_path):
    state = tmp_path / "protection.json"
    systemd = FakeSystemd(machine())
    set_one = systemd.set

    def set_then_die(unit, settings):
        if systemd.sets:
            raise Killed()
        set_one(unit, settings)

    systemd.set = set_then_die
    with pytest.raises(Killed):
        Protection(systemd, state).reconcile([Borrower("loan.1", SESSION, 64 * MiB)])
    assert memory_mins(systemd)["user.slice"] == 64 * MiB
    systemd.set = set_one
    Protection(systemd, state).reconcile([])          # the loan ended with the daemon
    assert systemd.units == machine()


def test_a_restart_without_the_bases_would_keep_the_loan_on_top():
    # Why the bases must outlive the daemon: read afresh, the protection already
    # set looks like the administrator's and is never taken away.
    systemd = FakeSystemd(machine())
    Protection(systemd).reconcile([Borrower("loan.1", SESSION, 64 * MiB)])
    forgetful = Protection(systemd)
    forgetful.reconcile([])
    assert systemd.units["user.slice"][MEMORY_MIN] == 64 * MiB


def test_an_unreadable_state_is_said_once(tmp_path):
    state = tmp_path / "protection.json"
    state.write_text("{not json")
    protection = Protection(FakeSystemd(machine()), state)
    first = protection.reconcile([])
    assert len(first.errors) == 1 and f"cannot read {state}" in first.errors[0]
    assert "stay until the next boot" in first.errors[0]
    assert protection.reconcile([]) == ({}, [])


def test_an_unwritable_state_names_the_fix(tmp_path):
    protection = Protection(FakeSystemd(machine()), tmp_path / "missing" / "protection.json")
    result = protection.reconcile([Borrower("loan.1", SESSION, 64 * MiB)])
    assert result.unprotected == {}
    assert "RuntimeDirectory=holdingpen" in result.errors[0]


def test_a_session_that_ended_is_skipped():
    systemd = FakeSystemd(machine())
    protection = Protection(systemd)
    del systemd.units["session-4.scope"]
    result = protection.reconcile([Borrower("loan.1", SESSION, 64 * MiB),
                                   Borrower("loan.2", BOB, 64 * MiB)])
    assert result.unprotected == {"loan.2": "session-4.scope is not loaded"}
    assert systemd.units["user.slice"][MEMORY_MIN] == 64 * MiB       # alice's only


def test_a_unit_that_went_away_is_forgotten():
    systemd = FakeSystemd(machine())
    protection = Protection(systemd)
    protection.reconcile([Borrower("loan.2", BOB, 64 * MiB)])
    del systemd.units["session-4.scope"]          # bob logged out, the loan ended
    assert protection.reconcile([]) == ({}, [])
    assert protection.bases == {}
    assert memory_mins(systemd)["user.slice"] == 0


def test_a_refusal_names_the_loans_and_retries_what_it_could_not_put_back():
    systemd = FakeSystemd(machine(), refuse={"user-2000.slice"})
    protection = Protection(systemd)
    result = protection.reconcile([Borrower("loan.1", SESSION, 64 * MiB)])
    assert result.unprotected == {"loan.1": "polkit does not let us change user-2000.slice"}
    systemd.refuse = {"user.slice"}
    result = protection.reconcile([])
    assert result.errors == ["user.slice: polkit does not let us change user.slice"]
    assert "user.slice" in protection.bases
    systemd.refuse = set()
    assert protection.reconcile([]) == ({}, [])
    assert systemd.units == machine()


def test_a_hung_systemd_is_asked_once_and_nothing_is_forgotten():
    systemd = FakeSystemd(machine())
    protection = Protection(systemd)
    protection.reconcile([Borrower("loan.1", SESSION, 64 * MiB)])
    systemd.hang, systemd.calls = True, 0
    result = protection.reconcile([])
    assert result.errors == ["systemd did not answer within 2 s"]
    assert systemd.calls == 1
    systemd.hang = False
    protection.reconcile([])
    assert systemd.units == machine()


# ---- the worker thread ----

def test_the_worker_applies_the_latest_wish_and_never_blocks_the_caller():
    systemd = FakeSystemd(machine())
    gate, waiting = threading.Event(), threading.Event()
    set_one = systemd.set

    def slow_set(unit, settings):
        waiting.set()
        gate.wait(10)
        set_one(unit, settings)

    systemd.set = slow_set
    results = []
    finished = threading.Event()

    def done(generation, result):
        results.append((generation, result))
        if generation == 3:
            finished.set()

    worker = ProtectionWorker(Protection(systemd), done)
    worker.start()
    worker.want(1, [Borrower("loan.1", SESSION, 64 * MiB)])
    assert waiting.wait(10)                                       # systemd hangs on it
    worker.want(2, [Borrower("loan.1", SESSION, 64 * MiB), Borrower("loan.2", BOB, MiB)])
    worker.want(3, [Borrower("loan.2", BOB, MiB)])                # 2 is never applied
    assert results == []
    gate.set()
    assert finished.wait(10)
    worker.stop()
    assert [generation for generation, _ in results] == [1, 3]
    assert memory_mins(systemd) == {"user.slice": MiB, "user-2000.slice": 0,
                                    "session-3.scope": 0, "user-2001.slice": MiB,
                                    "session-4.scope": MiB}


def test_a_bug_in_reconcile_costs_protection_not_the_worker():
    results, first = [], threading.Event()

    def done(generation, result):
        results.append((generation, result))
        first.set()

    worker = ProtectionWorker(Protection(FakeSystemd({})), done)
    worker.start()
    worker.want(1, [Borrower("loan.1", (), MiB)])       # no chain: an IndexError inside
    assert first.wait(10)
    worker.want(2, [])
    worker.stop()
    assert results[0][1].unprotected["loan.1"].startswith("protection failed: ")
    assert results[-1] == (2, ({}, []))


def test_the_polkit_rule_grants_the_units_we_protect():
    # polkit/60-holdingpen-protect.rules and protection.PROTECTABLE must agree, or
    # loans would be refused (rule narrower) or the grant wider than our use.
    from pathlib import Path
    from holdingpen.pen.protection import PROTECTABLE
    rule = (Path(__file__).resolve().parents[2] / "polkit" / "60-holdingpen-protect.rules")
    assert f"/{PROTECTABLE.pattern}/" in rule.read_text()
