"""wholock, and plain flock(1) users of the same lock file, both ways."""

import json
import os
import re
import signal
import subprocess
import time

import pytest


from lockjobs import blocked, pids, wait_until


def flock_job(jobs, lock, *args):
    return jobs.start(["flock", *args, str(lock), "sleep", "60"])


def test_holders_then_the_queue_in_order(jobs, lock):
    # A plain flock(1) user and a pls job share the machine ...
    plain = flock_job(jobs, lock, "-s")
    wait_until(lambda: plain.pid in pids(lock, "holding"), "flock -s to hold")
    shared = jobs.queue(lock, ["pls", "-q", "-m", "docs", "sleep", "60"], state="holding")
    # ... an exclusive perflock job waits, a plain flock(1) writer waits at the lock
    # file itself, and a pls job waits behind the exclusive one.
    excl = jobs.queue(lock, ["perflock", "-q", "-m", "bench", "./run", "--all"])
    writer = flock_job(jobs, lock)
    wait_until(lambda: blocked(writer.pid), "flock to wait")
    late = jobs.queue(lock, ["pls", "-q", "make", "-j8"])

    listed = json.loads(jobs.run(["wholock", "--json"]).stdout)
    assert [(r["pid"], r["mode"], r["state"]) for r in listed] == [
        (shared.pid, "shared", "holding"),
        (plain.pid, "shared", "holding"),
        (writer.pid, "exclusive", "waiting"),
        (excl.pid, "exclusive", "waiting"),
        (late.pid, "shared", "waiting"),
    ]
    assert all(set(r) == {"pid", "user", "mode", "state", "since", "command", "message"}
               for r in listed)
    assert [r["command"] for r in listed] == [
        "sleep 60", f"flock -s {lock} sleep 60", f"flock {lock} sleep 60", "./run --all", "make -j8"]
    assert [r["message"] for r in listed] == ["docs", "", "", "bench", ""]
    assert {r["user"] for r in listed} == {"root"}
    now = time.time()
    assert all(now - 60 < r["since"] <= now for r in listed)

    text = jobs.run(["wholock"]).stdout.splitlines()
    assert text[0].split() == ["USER", "PID", "MODE", "STATE", "SINCE", "MESSAGE", "COMMAND"]
    assert [line.split(None, 6) for line in text[1:]] == [
        ["root", str(r["pid"]), r["mode"], r["state"], line.split()[4], r["message"] or "-",
         r["command"]] for r, line in zip(listed, text[1:])]
    assert len(text) == 1 + len(listed)


def test_a_free_machine(jobs, lock):
    done = jobs.run(["wholock"])
    assert (done.returncode, done.stdout) == (0, f"{lock} is free\n")
    assert json.loads(jobs.run(["wholock", "--json"]).stdout) == []


def test_wholock_without_a_lock_file(jobs, shared_tmp):
    done = jobs.run(["wholock", "--lock", str(shared_tmp / "nope")])
    assert done.returncode == 66
    assert done.stderr.startswith(f"wholock: the lock file {shared_tmp / 'nope'} does not exist;")


# (how flock(1) holds the file, perflock -n's status, pls -n's status)
FLOCK_HOLDS = [
    ("-x", 1, 1),
    ("-s", 1, 0),
]


@pytest.mark.parametrize("how, perflock_status, pls_status", FLOCK_HOLDS)
def test_flock_users_exclude_perflock(jobs, lock, how, perflock_status, pls_status):
    p = flock_job(jobs, lock, how)
    wait_until(lambda: p.pid in pids(lock, "holding"), "flock to hold")
    assert jobs.run(["perflock", "-n", "true"]).returncode == perflock_status
    assert jobs.run(["pls", "-n", "true"]).returncode == pls_status


# (who holds, flock -n -x's status, flock -n -s's status)
PERFLOCK_HOLDS = [
    ("perflock", 1, 1),
    ("pls", 1, 0),
]


@pytest.mark.parametrize("prog, x_status, s_status", PERFLOCK_HOLDS)
def test_perflock_excludes_flock_users(jobs, lock, prog, x_status, s_status):
    jobs.queue(lock, [prog, "-q", "sleep", "60"], state="holding")
    assert subprocess.run(["flock", "-n", "-x", str(lock), "true"]).returncode == x_status
    assert subprocess.run(["flock", "-n", "-s", str(lock), "true"]).returncode == s_status


def test_perflock_waits_for_a_flock_user_and_then_runs(jobs, lock, shared_tmp):
    p = flock_job(jobs, lock)
    wait_until(lambda: p.pid in pids(lock, "holding"), "flock to hold")
    waiter = jobs.queue(lock, ["perflock", "sh", "-c", f"touch {shared_tmp}/ran"])
    message = waiter.stderr.readline().decode()
    assert re.fullmatch(fr"perflock: waiting for the machine: root holds it exclusively "
                        fr"\(pid {p.pid}, [\d.]+s: flock {lock} sleep 60\); 1 job ahead\n", message)
    assert not (shared_tmp / "ran").exists()
    os.killpg(p.pid, signal.SIGKILL)       # flock and its command, which holds the lock too
    assert waiter.wait(30) == 0
    assert (shared_tmp / "ran").exists()
