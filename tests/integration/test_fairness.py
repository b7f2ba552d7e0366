"""Fair order: arrival order, shared jobs together, no starvation of exclusive jobs."""

import subprocess
import time

from holdingpen.lock.perflock import PerfLock

from lockjobs import pids, wait_until


def test_ten_exclusive_jobs_run_in_arrival_order(jobs, lock, shared_tmp):
    log = shared_tmp / "order"
    with PerfLock(path=str(lock)):        # hold the machine while the queue forms
        started = [jobs.queue(lock, ["perflock", "-q", "sh", "-c", f"echo {i} >> {log}"])
                   for i in range(10)]
        assert pids(lock, "waiting") == [p.pid for p in started]
    assert [p.wait(30) for p in started] == [0] * 10
    assert log.read_text().split() == [str(i) for i in range(10)]
    assert list((shared_tmp / "perflock.d").iterdir()) == []


def test_shared_job_behind_a_waiting_exclusive_job_waits(jobs, lock, shared_tmp):
    log = shared_tmp / "log"
    with PerfLock(shared=True, path=str(lock)):     # a shared job holds the machine
        x = jobs.queue(lock, ["perflock", "-q", "sh", "-c",
                              f"echo X start >> {log}; sleep 0.2; echo X end >> {log}"])
        # The kernel alone would let another shared locker in now ...
        assert subprocess.run(["flock", "-n", "-s", str(lock), "true"]).returncode == 0
        # ... the queue does not: the exclusive job came first.
        assert jobs.run(["pls", "-n", "true"]).returncode == 1
        s = jobs.queue(lock, ["pls", "-q", "sh", "-c", f"echo S >> {log}"])
    assert (x.wait(30), s.wait(30)) == (0, 0)
    assert log.read_text().splitlines() == ["X start", "X end", "S"]


def test_shared_jobs_at_the_head_run_together(jobs, lock, shared_tmp):
    with PerfLock(path=str(lock)):
        shared = [jobs.queue(lock, ["pls", "-q", "sh", "-c",
                                    f"touch {shared_tmp}/{i}; while [ ! -e {shared_tmp}/go ]; "
                                    "do sleep 0.01; done"]) for i in range(3)]
    # All three run at once: each waits for a file only the test creates.
    wait_until(lambda: all((shared_tmp / str(i)).exists() for i in range(3)),
               "three shared jobs running together")
    assert len(pids(lock, "holding")) == 3
    (shared_tmp / "go").touch()
    assert [p.wait(30) for p in shared] == [0, 0, 0]


def test_a_stream_of_shared_jobs_cannot_starve_an_exclusive_job(jobs, lock, shared_tmp):
    log = shared_tmp / "log"

    def shared_job(name):
        return jobs.start(["pls", "-q", "sh", "-c",
                           f"echo start {name} >> {log}; sleep 0.2; echo end {name} >> {log}"])

    before = []
    for i in range(8):                         # overlapping shared jobs: always one running
        before.append(shared_job(f"b{i}"))
        time.sleep(0.05)
    x = jobs.queue(lock, ["perflock", "-q", "sh", "-c", f"echo start X >> {log}; echo end X >> {log}"])
    after = []
    for i in range(15):                        # the stream goes on behind the exclusive job
        after.append(shared_job(f"a{i}"))
        time.sleep(0.05)
    assert all(p.wait(60) == 0 for p in before + [x] + after)

    events = log.read_text().split("\n")
    x_start, x_end = events.index("start X"), events.index("end X")
    assert x_end == x_start + 1, "a shared job ran beside the exclusive one"
    for i in range(8):
        assert events.index(f"end b{i}") < x_start, f"b{i} (arrived first) must finish first"
    for i in range(15):
        assert events.index(f"start a{i}") > x_end, f"a{i} (arrived later) overtook the exclusive job"
