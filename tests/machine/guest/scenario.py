"""The machine tier's scenario, run as root in the VM after the install.

    python3 scenario.py RESULTS.json SCENARIO...

SCENARIO is one of:
  idle           the program alone (holdingpen stopped): the baseline
  loaded         beside the thrasher, holdingpen stopped: "without holdingpen"
  gatekeeper     beside the thrasher, under `gatekeeper`
  gatekeeper-fd  beside the thrasher, under `gatekeeper --fd`

The program runs as alice (in group holdingpen: the shipped polkit rule lets
her borrow from anywhere), the thrasher as bob (who may not borrow).
RESULTS.json is rewritten after each scenario, so a run cut short still
says what it saw. The host asserts; this script only measures.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILL_MIB = 640            # the program's memory; the reservation is 768 MiB
THRASH_MIB = 2355         # about 2.3 GiB, in a 3 GiB machine with 2 GiB swap
WAIT_S = 60               # beside the thrasher, between fill and re-read
THRASHER_READY_TIMEOUT_S = 600
PROGRAM_TIMEOUT_S = 900
POOL_WHOLE_TIMEOUT_S = 300
UNITS = ["holdingpen.socket", "holdingpen.service"]


def as_user(user, argv):
    """argv run as user in a login session of theirs (a logind session scope under
    user-UID.slice, as a console or ssh login puts it): where a loan's protection goes."""
    return ["runuser", "-l", user, "-c", "exec " + shlex.join(argv)]


def vmstat(key):
    with open("/proc/vmstat") as f:
        for line in f:
            name, value = line.split()
            if name == key:
                return int(value)
    return 0


def pool_status():
    """`holdingpen status --json`; or {"failed": what it said} if the daemon could not be asked."""
    try:
        done = subprocess.run(["holdingpen", "status", "--json"], capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        return {"failed": "no answer in 60 s"}
    if done.returncode != 0:
        return {"failed": f"exit {done.returncode}: {done.stderr.strip()[-500:]}"}
    return json.loads(done.stdout)


def pool_whole(status):
    return ("failed" not in status and status["ready"] and not status["loans"]
            and all(p["held"] == p["count"] for p in status["pools"]))


def wait_pool_whole(timeout_s):
    """Poll until no loan is out and every pool is full; the last status seen, and when."""
    started = time.monotonic()
    status = None
    while time.monotonic() - started < timeout_s:
        status = pool_status()
        if pool_whole(status):
            return status, time.monotonic() - started
        time.sleep(0.5)
    return status, None


def start_thrasher():
    proc = subprocess.Popen(as_user("bob", ["python3", str(HERE / "thrasher.py"), str(THRASH_MIB)]),
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    started = time.monotonic()
    line = proc.stdout.readline()    # "ready" after one full pass (TCG: tens of seconds)
    if line.strip() != "ready":
        raise RuntimeError(f"thrasher did not start: {line!r}, status {proc.poll()}")
    return proc, time.monotonic() - started


def stop(proc, user=None):
    """End proc's process group; with user, every process of theirs too (runuser
    leaves the command it started running when it is itself killed)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if user is not None:
        deadline = time.monotonic() + 30
        while subprocess.run(["pkill", "-KILL", "-u", user]).returncode == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{user}'s processes outlived 30 s of SIGKILLs")
            time.sleep(0.2)


def run_program(wrapper):
    """Run the program as alice under wrapper; its measurements and what we saw of the loan."""
    argv = as_user("alice", [*wrapper, "python3", str(HERE / "program.py"), str(FILL_MIB), str(WAIT_S)])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    result = {"argv": argv}
    first = proc.stdout.readline()
    if first and wrapper:
        # What `holdingpen status` shows while the program waits; every answer kept, as
        # a status that fails under pressure is worth knowing too.
        result["status_while_running"] = [pool_status()]
        while "failed" in result["status_while_running"][-1] and len(result["status_while_running"]) < 3:
            result["status_while_running"].append(pool_status())
        result["loans_while_running"] = result["status_while_running"][-1].get("loans")
    try:
        out, err = proc.communicate(timeout=PROGRAM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop(proc, "alice")
        out, err = proc.communicate()
        result["timed_out"] = True
    lines = [json.loads(line) for line in (first + out).splitlines() if line.startswith("{")]
    result.update(lines[-1] if lines else {})
    result["returncode"] = proc.returncode
    result["stderr"] = err[-2000:]
    return result


def run_scenario(name):
    holdingpen = name.startswith("gatekeeper")
    subprocess.run(["systemctl", "start" if holdingpen else "stop", *UNITS], check=True)
    result = {"scenario": name}
    if holdingpen:
        result["status_before"], result["pool_ready_s"] = wait_pool_whole(POOL_WHOLE_TIMEOUT_S)
    subprocess.run(["sync"])
    subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"])
    oom_kills_before = vmstat("oom_kill")
    swap_out_before = vmstat("pswpout")
    thrasher = None
    try:
        if name != "idle":
            thrasher, result["thrasher_ready_s"] = start_thrasher()
        wrapper = {"gatekeeper": ["gatekeeper"], "gatekeeper-fd": ["gatekeeper", "--fd"]}
        result["program"] = run_program(wrapper.get(name, []))
    finally:
        if thrasher is not None:
            result["thrasher_alive_at_end"] = thrasher.poll() is None
            stop(thrasher, "bob")
    result["oom_kills"] = vmstat("oom_kill") - oom_kills_before
    result["pages_swapped_out"] = vmstat("pswpout") - swap_out_before
    if holdingpen:
        result["status_after"], result["pool_whole_after_s"] = wait_pool_whole(POOL_WHOLE_TIMEOUT_S)
    return result


def facts():
    def out(*argv):
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip()
    return {"kernel": os.uname().release, "systemd": out("systemctl", "--version").split("\n")[0],
            "meminfo": out("grep", "-E", "MemTotal|SwapTotal", "/proc/meminfo"),
            "cpus": os.cpu_count()}


def main():
    results_path = Path(sys.argv[1])
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.update(facts=facts(), runs={})
    for name in sys.argv[2:]:
        try:
            results["runs"][name] = run_scenario(name)
        except Exception as e:      # say what went wrong and go on with the next
            results["runs"][name] = {"scenario": name, "error": repr(e)}
        results_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
