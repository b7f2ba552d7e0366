"""A loan lasts: the console user's program keeps its memory beside a thrashing job.

In one VM boot (conftest.py), for `gatekeeper` and `gatekeeper --fd`: another
user's job touches 2.3 GiB in a loop; alice's program borrows the one 768 MiB
reservation, fills 640 MiB, waits 60 s, reads it again, exits. The same
program run without holdingpen ("loaded") shows that the pressure is real. The guest is
emulated (TCG) where KVM does not boot, so no absolute time is asserted here:
tests/bench/loan_lasts.py puts the times beside its baselines.
"""

import pytest

from vm import TIER_SCENARIOS as SCENARIOS

LOANS = ("gatekeeper", "gatekeeper-fd")     # the scenarios that borrow

LOAN_BYTES = 768 << 20
FILL_MIB = 640
SWAP_ALLOWED = 0.05       # of the program's memory, after the wait
LIBRARIES = ["python3-jeepney", "python3-psutil", "python3-systemd"]


def scenario(machine, name):
    """The guest's results for one scenario; fails with the job's log if it has none."""
    run = machine.results.get("runs", {}).get(name)
    assert run and "error" not in run and "returncode" in run.get("program", {}), (
        f"no results for {name}: {run}\njob log ends:\n{machine.job_log[-3000:]}")
    return run


def mib(kib):
    return kib / 1024


def test_vm_ran(machine, figure):
    facts = machine.results.get("facts", {})
    built = f"image built in {machine.image.built_s:.0f} s" if machine.image.built_s else "image cached"
    figure(f"VM on {machine.run.accel} ({machine.run.why}); {built}; boot + install + "
           f"{len(SCENARIOS)} scenarios + power-off {machine.run.elapsed_s:.0f} s; "
           f"guest kernel {facts.get('kernel')}")
    assert facts, f"the guest job did not get to the scenario; its log ends:\n{machine.job_log[-3000:]}"


def test_install_brings_the_libraries(machine):
    """The image has none of holdingpen's libraries: the README's install must get them from apt."""
    install = machine.results.get("install")
    assert install, f"the install did not finish; job log ends:\n{machine.job_log[-3000:]}"
    assert install["libraries_before"] == []
    assert sorted(install["libraries_after"]) == LIBRARIES


@pytest.mark.parametrize("name", LOANS)
def test_program_runs_on_the_loan(machine, name):
    """While the program runs, `holdingpen status` shows alice's loan of the reservation."""
    program = scenario(machine, name)["program"]
    loans = program.get("loans_while_running")
    assert loans is not None, f"holdingpen status failed: {program.get('status_while_running')}"
    assert [(loan["user"], loan["kind"], loan["size"], loan["fd"]) for loan in loans] == [
        ("alice", "memory", LOAN_BYTES, name == "gatekeeper-fd")]
    assert scenario(machine, name)["program"]["from_fd"] == (name == "gatekeeper-fd")


def test_thrasher_pushes_an_unprotected_program_into_swap(machine, figure):
    """The control: without holdingpen the same program loses more than the 5% a loan may.

    Otherwise the swap test below could pass on a thrasher too weak to matter.
    """
    program = scenario(machine, "loaded")["program"]
    swap_kib = max(program["vm_swap_kib"], program["swap_kib"])
    figure(f"loaded (no holdingpen): filled {FILL_MIB} MiB in {program['fill_s']:.1f} s; "
           f"{mib(swap_kib):.0f} MiB in swap after 60 s; re-read {program['reread_s']:.1f} s")
    assert mib(swap_kib) > SWAP_ALLOWED * FILL_MIB


@pytest.mark.parametrize("name", LOANS)
def test_loan_stays_out_of_swap(machine, name, figure):
    """Nothing of a protected loan is in swap after 60 s beside the thrasher (at most 5%)."""
    run = scenario(machine, name)
    program = run["program"]
    swap_kib = max(program["vm_swap_kib"], program["swap_kib"])
    figure(f"{name}: filled {FILL_MIB} MiB in {program['fill_s']:.1f} s; after 60 s beside the "
           f"thrasher {mib(swap_kib):.0f} MiB in swap (VmSwap {mib(program['vm_swap_kib']):.0f} "
           f"MiB, smaps Swap {mib(program['swap_kib']):.0f} MiB); re-read {program['reread_s']:.1f} s")
    assert run["thrasher_alive_at_end"], "the thrasher died: there was no pressure to resist"
    assert mib(swap_kib) <= SWAP_ALLOWED * FILL_MIB, (
        f"{mib(swap_kib):.0f} MiB of the program's {FILL_MIB} MiB was in swap after the wait")


@pytest.mark.parametrize("name", LOANS)
def test_borrower_is_not_oom_killed(machine, name):
    program = scenario(machine, name)["program"]
    assert program["returncode"] == 0, f"the program ended with {program['returncode']}: {program}"
    assert program["intact_pages"] == program["pages"]


@pytest.mark.parametrize("name", LOANS)
def test_loan_returned_after_the_program(machine, name, figure):
    """After CMD exits the loan is returned and the pool is whole again."""
    run = scenario(machine, name)
    status = run["status_after"]
    figure(f"{name}: pool whole {run['pool_whole_after_s']} s after the program exited")
    assert "failed" not in status, f"holdingpen status failed: {status['failed']}"
    assert status["loans"] == []
    assert [(pool["kind"], pool["held"], pool["count"]) for pool in status["pools"]] == [("memory", 1, 1)]
