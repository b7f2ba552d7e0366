"""Protected loans against the container's real PID 1 and polkit: the installed
holdingpen.pen.protect, run as the daemon's user holdingpen, protects alice's
running process in her login session, and puts everything back; the shipped
rule 60-holdingpen-protect.rules lets holdingpen do exactly that.

The container's cgroups are hybrid (the memory controller is v1), so systemd
records MemoryMin= but the kernel cannot apply it: what is seen here is what
systemd was told (systemctl show), not its effect on memory.
"""

import json
import re

import pytest

from daemonctl import wait_for

MIB = 1 << 20
INSTALLED = "/usr/lib/python3/dist-packages"   # where the package puts holdingpen
STATE_PATH = "/run/holdingpen/protection.json"
# Reconcile the borrowers given on stdin, as the daemon would on a worker thread;
# a fresh process each time, like a daemon after a restart: it knows only the
# bases it is handed.
RECONCILE = f"""
import json, sys
sys.path.insert(0, {INSTALLED!r})
from holdingpen.pen.protect import Borrower, NotProtectable, Protection, SystemdUnits, chain_of_pid
asked = json.load(sys.stdin)
protection = Protection(SystemdUnits(), asked.get("state_path"), bases=asked["bases"])
borrowers, unprotected = [], {{}}
for key, pid, size_bytes in asked["borrowers"]:
    try:
        borrowers.append(Borrower(key, chain_of_pid(pid), size_bytes))
    except NotProtectable as e:
        unprotected[key] = str(e)
result = protection.reconcile(borrowers)
unprotected.update(result.unprotected)
print(json.dumps({{"bases": protection.bases, "unprotected": unprotected,
                  "errors": result.errors}}))
"""
CHECK = f"""
import sys
sys.path.insert(0, {INSTALLED!r})
from holdingpen.pen.protect import unavailable_reason
print(unavailable_reason())
"""


def reconcile(ct, borrowers, bases=None, user="holdingpen"):
    """Run RECONCILE as user; returns its answer."""
    asked = json.dumps({"bases": bases or {}, "borrowers": borrowers})
    return json.loads(ct.run(["python3", "-I", "-c", RECONCILE], user=user, input=asked).stdout)


def settings(ct, unit):
    out = ct.run(["systemctl", "show", unit, "-pMemoryMin", "-pManagedOOMPreference",
                  "-pActiveState"]).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


@pytest.fixture
def session(ct):
    """alice's `sleep` in a login session of hers: (pid, session scope)."""
    job = ct.popen(["runuser", "-l", "alice", "-c", "echo $$; exec sleep 1000"])
    try:
        pid = int(job.read_line())
        path = wait_for("alice's sleep in a session scope",
                        lambda: ct.path(f"/proc/{pid}/cgroup").read_text(),
                        lambda text: ".scope" in text)
        scope = path.strip().rsplit("/", 1)[1]
        assert scope.startswith("session-"), path
        yield pid, scope
    finally:
        job.stop()


def test_a_loan_protects_the_session_and_every_ancestor_then_puts_them_back(ct, session):
    pid, scope = session
    units = (scope, "user-2000.slice", "user.slice")
    before = {unit: settings(ct, unit) for unit in units}
    assert before[scope]["MemoryMin"] == "0"

    lent = reconcile(ct, [["loan.1", pid, 64 * MIB]])
    assert lent["unprotected"] == {} and lent["errors"] == []
    for unit in units:
        assert settings(ct, unit)["MemoryMin"] == str(64 * MIB), unit
    assert settings(ct, scope)["ManagedOOMPreference"] == "avoid"

    # A second loan in the same session: the sum, on every unit of the chain.
    both = reconcile(ct, [["loan.1", pid, 64 * MIB], ["loan.2", pid, 32 * MIB]],
                     bases=lent["bases"])
    for unit in units:
        assert settings(ct, unit)["MemoryMin"] == str(96 * MIB), unit

    ended = reconcile(ct, [], bases=both["bases"])
    assert ended == {"bases": {}, "unprotected": {}, "errors": []}
    assert {unit: settings(ct, unit) for unit in units} == before
    # Nothing was killed: alice's program runs on, in its session.
    assert ct.path(f"/proc/{pid}/cgroup").read_text().strip().endswith(f"/{scope}")
    assert settings(ct, scope)["ActiveState"] == "active"


def test_a_program_of_the_users_own_systemd_protects_user_at_uid_service(ct, session):
    # As a desktop starts apps: in a scope of alice's systemd --user, below
    # user@2000.service, whose cgroups are hers; PID 1's units end there.
    ct.run(["systemctl", "start", "user@2000.service"])
    job = ct.popen(["runuser", "-l", "alice", "-c",
                    "XDG_RUNTIME_DIR=/run/user/2000 systemd-run --user --scope --quiet "
                    "sh -c 'echo $$; exec sleep 1000'"])
    try:
        pid = int(job.read_line())
        path = ct.path(f"/proc/{pid}/cgroup").read_text()
        assert "/user@2000.service/" in path, path
        units = ("user@2000.service", "user-2000.slice", "user.slice")
        lent = reconcile(ct, [["loan.1", pid, 64 * MIB]])
        assert lent["unprotected"] == {} and lent["errors"] == []
        for unit in units:
            assert settings(ct, unit)["MemoryMin"] == str(64 * MIB), unit
        assert settings(ct, "user@2000.service")["ManagedOOMPreference"] == "avoid"
        reconcile(ct, [], bases=lent["bases"])
        for unit in units:
            assert settings(ct, unit)["MemoryMin"] == "0", unit
        assert settings(ct, "user@2000.service")["ManagedOOMPreference"] == "none"
    finally:
        job.stop()


def test_another_user_is_refused(ct, session):
    pid, scope = session
    answer = reconcile(ct, [["loan.1", pid, 64 * MIB]], user="bob")
    assert "polkit does not let us change" in answer["unprotected"]["loan.1"]
    assert settings(ct, "user.slice")["MemoryMin"] == "0"


@pytest.mark.parametrize("command", [
    # Other units, even with the one verb we are allowed.
    ["systemctl", "set-property", "--runtime", "system.slice", "MemoryMin=1M"],
    ["systemctl", "set-property", "--runtime", "holdingpen.service", "MemoryMin=1M"],
    ["systemctl", "set-property", "--runtime", "polkit.service", "MemoryMax=1M"],
    # Our units, with any other verb.
    ["systemctl", "stop", "user-2000.slice"],
    ["systemctl", "kill", "user.slice"],
    ["systemctl", "restart", "user@2000.service"],
    # Making units: StartTransientUnit tells polkit no unit name, so we must not have it.
    ["systemd-run", "--scope", "-p", "MemoryMin=1M", "true"],
    ["systemd-run", "--uid=root", "true"],
])
def test_the_rule_grants_nothing_else(ct, session, command):
    done = ct.run([command[0], "--no-ask-password", *command[1:]], user="holdingpen",
                  check=False)
    assert done.returncode != 0
    assert "Interactive authentication required" in done.stderr or "denied" in done.stderr
    assert settings(ct, "user-2000.slice")["ActiveState"] == "active"


def test_the_rule_grants_set_property_on_a_users_units(ct, session):
    _pid, scope = session
    try:
        ct.run(["systemctl", "--no-ask-password", "set-property", "--runtime", scope,
                "MemoryMin=1M"], user="holdingpen")
        assert settings(ct, scope)["MemoryMin"] == str(MIB)
    finally:
        ct.run(["systemctl", "set-property", "--runtime", scope, "MemoryMin=0"])


def test_this_container_cannot_protect_memory_and_says_why(ct):
    # Hybrid cgroups: a loan works as before, and the daemon says so in the journal.
    reason = ct.run(["python3", "-I", "-c", CHECK], user="holdingpen").stdout.strip()
    assert reason.startswith("/sys/fs/cgroup is not a cgroup v2 hierarchy"), reason


def test_the_daemons_sandbox_lets_it_protect(ct, session):
    # holdingpen.service as installed, hardening and all, running RECONCILE once
    # instead of the daemon: what the daemon will do, with what the daemon may do.
    pid, scope = session
    service = ct.path("/lib/systemd/system/holdingpen.service").read_text()
    lines = [line for line in service.splitlines()
             if not line.startswith(("Type=", "ExecStart=", "ExecReload=", "WatchdogSec=",
                                     "Requires=", "After=", "NotifyAccess=", "Restart="))]
    asked = json.dumps({"bases": {}, "borrowers": [["loan.1", pid, 64 * MIB]],
                        "state_path": STATE_PATH})
    probe = RECONCILE.replace("json.load(sys.stdin)", f"json.loads({asked!r})")
    ct.path("/tmp/protect-probe.py").write_text(probe)
    ct.path("/etc/systemd/system/protect-probe.service").write_text(
        "\n".join(lines).replace("[Service]", "[Service]\nType=oneshot\nBindReadOnlyPaths="
                                 "/tmp/protect-probe.py:/run/protect-probe.py\n"
                                 "ExecStart=/usr/bin/python3 -I /run/protect-probe.py\n"))
    try:
        ct.run(["systemctl", "daemon-reload"])
        ct.run(["systemctl", "start", "protect-probe.service"])
        out = ct.run(["journalctl", "--no-pager", "-o", "cat", "-u", "protect-probe"]).stdout
        answer = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
        assert answer["unprotected"] == {} and answer["errors"] == [], out
        assert settings(ct, scope)["MemoryMin"] == str(64 * MIB)
        # What to put back outlives the daemon, in its RuntimeDirectory.
        assert json.loads(ct.path(STATE_PATH).read_text()) == answer["bases"]
        reconcile(ct, [], bases=answer["bases"])
        assert settings(ct, "user.slice")["MemoryMin"] == "0"
    finally:
        ct.path("/etc/systemd/system/protect-probe.service").unlink()
        ct.path("/tmp/protect-probe.py").unlink()
        ct.path(STATE_PATH).unlink(missing_ok=True)
        ct.run(["systemctl", "daemon-reload"])


JOB_TYPE = f"""
import sys
sys.path.insert(0, {INSTALLED!r})
from holdingpen.pen.systemd_units import SystemdUnits
print(SystemdUnits().job_type(sys.argv[1]))
"""


def test_a_stopping_service_tells_stop_from_restart(ct):
    # What the daemon asks when told SIGTERM: a stop ends the loans (put everything
    # back), a restart keeps them. This service takes a second to stop.
    unit = "slow-stop.service"
    ct.run(["systemd-run", f"--unit={unit}", "sh", "-c",
            "trap 'sleep 1; exit 0' TERM; while :; do sleep 0.1; done"])
    try:
        def job_type():
            return ct.run(["python3", "-I", "-c", JOB_TYPE, unit], user="holdingpen").stdout.strip()
        assert job_type() == "None"
        ct.run(["systemctl", "restart", "--no-block", unit])
        assert job_type() == "restart"
        wait_for("the restart done", job_type, lambda t: t == "None")
        ct.run(["systemctl", "stop", "--no-block", unit])
        assert job_type() == "stop"
    finally:
        ct.run(["systemctl", "stop", unit], check=False)


# ---- the daemon protects its loans (HOLDINGPEN_PROTECT_ANYWAY: the container's
# cgroups are hybrid, so only what systemd records can be seen, not its effect) ----

SERVICE = "holdingpen.service"
DROPIN = f"/run/systemd/system/{SERVICE}.d/protect-anyway.conf"
CHAIN = ("user.slice", "user-2000.slice")    # and alice's session scope


def restart_empty(ct):
    """A stop (emptying the store) and a start, whatever the start counter says."""
    ct.run(["systemctl", "stop", SERVICE])
    ct.run(["systemctl", "reset-failed", SERVICE])
    ct.run(["systemctl", "start", SERVICE])


def status_json(ct):
    return json.loads(ct.run(["holdingpen", "status", "--json"], user="carol").stdout)


@pytest.fixture
def protecting(ct):
    """The installed daemon, told to protect loans even on hybrid cgroups."""
    ct.path(DROPIN).parent.mkdir(parents=True, exist_ok=True)
    ct.path(DROPIN).write_text("[Service]\nEnvironment=HOLDINGPEN_PROTECT_ANYWAY=1\n")
    ct.run(["systemctl", "daemon-reload"])
    restart_empty(ct)
    yield
    ct.path(DROPIN).unlink()
    ct.run(["systemctl", "daemon-reload"])
    restart_empty(ct)


@pytest.fixture
def borrower(ct):
    """alice's gatekeeper in a login session of hers, holding its loan:
    (job, its session scope, the loan's size)."""
    job = ct.popen(["runuser", "-l", "alice", "-c",
                    "gatekeeper --strict sh -c 'echo holding; read _; exit 3'"])
    try:
        assert job.read_line(timeout_s=30) == "holding"
        [loan] = status_json(ct)["loans"]
        cgroup = ct.path(f"/proc/{loan['pid']}/cgroup").read_text().strip()
        scope = cgroup.rsplit("/", 1)[1]
        assert scope.startswith("session-"), cgroup
        yield job, scope, loan["size"]
    finally:
        job.stop()


def memory_min(ct, units):
    return {unit: settings(ct, unit)["MemoryMin"] for unit in units}


def assert_protected(ct, scope, size_bytes):
    units = (*CHAIN, scope)
    assert memory_min(ct, units) == {unit: str(size_bytes) for unit in units}
    assert settings(ct, scope)["ManagedOOMPreference"] == "avoid"
    [loan] = status_json(ct)["loans"]
    assert (loan["protected_units"], loan["unprotected"]) == ([*units], None)


def wait_put_back(ct, scope):
    units = (*CHAIN, scope)
    wait_for("the protection put back", lambda: memory_min(ct, units),
             lambda now: now == {unit: "0" for unit in units})


@pytest.mark.usefixtures("protecting")
def test_a_loan_is_protected_before_the_borrower_hears_and_until_it_ends(ct, borrower):
    job, scope, size_bytes = borrower
    # Read at once, no waiting: CMD ran only after the reply, which waited for this.
    assert_protected(ct, scope, size_bytes)
    lent = ct_journal(ct, "HOLDINGPEN_EVENT=lent")[-1]
    assert lent["HOLDINGPEN_PROTECTED_UNITS"] == " ".join((*CHAIN, scope))
    assert job.finish()[0] == 3
    wait_put_back(ct, scope)
    assert settings(ct, scope)["ManagedOOMPreference"] == "none"


@pytest.mark.usefixtures("protecting")
@pytest.mark.parametrize("how", [["systemctl", "restart", SERVICE],
                                 ["systemctl", "kill", "-s", "KILL", SERVICE]],
                         ids=["restart", "kill-KILL"])
def test_a_restart_or_a_kill_keeps_the_protection_until_the_loan_ends(ct, borrower, how):
    job, scope, size_bytes = borrower
    old_pid = settings_of_service(ct)["MainPID"]
    ct.run(how)
    wait_for("a new main process, ready", lambda: settings_of_service(ct),
             lambda now: now["MainPID"] not in ("0", old_pid)
             and (now["ActiveState"], now["SubState"]) == ("active", "running"))
    # The new daemon adopted the loan, and its protection with it.
    wait_for("the adopted loan protected", lambda: status_json(ct)["loans"],
             lambda loans: len(loans) == 1 and loans[0]["unprotected"] is None)
    assert_protected(ct, scope, size_bytes)
    assert job.finish()[0] == 3
    wait_put_back(ct, scope)


@pytest.mark.usefixtures("protecting")
def test_a_stop_puts_everything_back(ct, borrower):
    job, scope, size_bytes = borrower
    assert_protected(ct, scope, size_bytes)
    ct.run(["systemctl", "stop", SERVICE])
    assert memory_min(ct, (*CHAIN, scope)) == {unit: "0" for unit in (*CHAIN, scope)}
    assert settings(ct, scope)["ActiveState"] == "active"    # nothing killed


def test_without_the_seam_the_daemon_says_once_why_loans_are_not_protected(ct):
    restart_empty(ct)
    pid = settings_of_service(ct)["MainPID"]
    said = [e["MESSAGE"] for e in ct_journal(ct, "HOLDINGPEN_EVENT=unprotected", f"_PID={pid}")]
    assert len(said) == 1 and "is not a cgroup v2 hierarchy" in said[0], said
    job = ct.popen(["runuser", "-l", "alice", "-c",
                    "gatekeeper --strict sh -c 'echo holding; read _; exit 3'"])
    try:
        assert job.read_line(timeout_s=30) == "holding"
        [loan] = status_json(ct)["loans"]
        assert loan["protected_units"] == [] and "cgroup v2" in loan["unprotected"]
        assert settings(ct, "user.slice")["MemoryMin"] == "0"
    finally:
        job.stop()


def test_the_service_is_rated_at_most_0_8(ct):
    done = ct.run(["systemd-analyze", "security", "--no-pager", SERVICE])
    match = re.search(rf"Overall exposure level for {re.escape(SERVICE)}: (\d+\.\d+)",
                      done.stdout)
    assert match and float(match.group(1)) <= 0.8, done.stdout[-300:]


def settings_of_service(ct):
    out = ct.run(["systemctl", "show", SERVICE, "-pMainPID", "-pActiveState",
                  "-pSubState"]).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def ct_journal(ct, *matches):
    ct.run(["journalctl", "--sync"])
    out = ct.run(["journalctl", "--no-pager", "-q", "-o", "json", "-u", "holdingpen",
                  *matches]).stdout
    return [json.loads(line) for line in out.splitlines()]
