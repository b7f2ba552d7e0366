"""Does a loan last? The console user's 640 MiB program beside another user's thrashing job.

In one throw-away Debian 12 VM (the machine tier's harness, tests/machine/vm.py:
2 CPUs, 3 GiB, 2 GiB swap, one 768 MiB reservation), four runs of the same
program (allocate and fill 640 MiB, wait 60 s, read it all again):

  idle           alone, holdingpen stopped                 the baseline
  loaded         beside a job touching 2.3 GiB in a loop,  "without holdingpen"
                 holdingpen stopped
  gatekeeper     loaded, under `gatekeeper`
  gatekeeper-fd  loaded, under `gatekeeper --fd`

It prints, per run, the time to allocate and fill, the MiB in swap after the
wait (the larger of VmSwap and smaps_rollup's Swap, which also counts a
memfd's pages) and the time to re-read, with each time as a ratio against idle
and against loaded. The guest CPU may be emulated (TCG): compare ratios only.
Takes about 12 minutes (once more the first time, to build the image).
As root: /usr/bin/python3 tests/bench/loan_lasts.py
"""

import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "machine"))
sys.path.insert(0, str(REPO / "tests"))      # helpers, which vm imports

import vm  # noqa: E402

RUNS = ("idle", "loaded", "gatekeeper", "gatekeeper-fd")
TIMEOUT_S = 2400


def ratio(value, base):
    return f"{value / base:6.1f}x" if value is not None and base else "      -"


def seconds(value):
    return f"{value:7.2f}" if value is not None else "      -"


def table(runs):
    """The benchmark's table as lines (pure: results.json's "runs" in, text out)."""
    measured = {}
    for name in RUNS:
        program = runs.get(name, {}).get("program", {})
        swap_kib = max(program.get("vm_swap_kib", 0), program.get("swap_kib", 0))
        measured[name] = (program.get("fill_s"), swap_kib / 1024 if program else None,
                          program.get("reread_s"))
    idle, loaded = measured["idle"], measured["loaded"]
    lines = [f"{'run':<14} {'fill s':>7} {'/idle':>7} {'/loaded':>7}   {'swap MiB':>8}   "
             f"{'re-read s':>9} {'/idle':>7} {'/loaded':>7}"]
    for name in RUNS:
        fill_s, swap_mib, reread_s = measured[name]
        swap = f"{swap_mib:8.0f}" if swap_mib is not None else "       -"
        lines.append(f"{name:<14} {seconds(fill_s)} {ratio(fill_s, idle[0])} "
                     f"{ratio(fill_s, loaded[0])}   {swap}   {seconds(reread_s):>9} "
                     f"{ratio(reread_s, idle[2])} {ratio(reread_s, loaded[2])}")
    for name in RUNS:
        run = runs.get(name, {})
        notes = [f"{key}={run[key]}" for key in ("error", "thrasher_ready_s", "oom_kills", "pages_swapped_out",
                                                 "pool_whole_after_s") if key in run]
        program = run.get("program", {})
        if program.get("returncode"):
            notes.append(f"program exit {program['returncode']}: {program.get('stderr', '')[-200:]}")
        if notes:
            lines.append(f"  {name}: " + ", ".join(notes))
    return lines


def main():
    print(__doc__.split("\n")[0])
    problem = vm.platform_problem()
    if problem:
        print(f"cannot run: {problem}")
        return
    try:
        outcome = vm.run_scenarios(REPO, RUNS, TIMEOUT_S)
    except Exception:       # a benchmark reports what it saw; it never crashes
        print("the VM run failed:")
        traceback.print_exc(file=sys.stdout)
        return
    facts = outcome.results.get("facts", {})
    print(f"VM: {outcome.run.accel} ({outcome.run.why}), {facts.get('cpus')} CPUs, kernel "
          f"{facts.get('kernel')}, {facts.get('meminfo', '').replace(chr(10), ', ')}; "
          f"{outcome.run.elapsed_s:.0f} s in all")
    runs = outcome.results.get("runs", {})
    if not runs:
        print("the guest ran no scenario; its job log ends:\n" + outcome.job_log[-3000:])
        return
    for line in table(runs):
        print(line)


if __name__ == "__main__":
    main()
