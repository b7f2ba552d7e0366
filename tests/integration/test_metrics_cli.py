"""`wholock --openmetrics`, `wholock --textfile DIR` and `holdingpen status
--openmetrics`, run as users run them, against real jobs and a real daemon."""

import stat
import subprocess

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from lockjobs import nobody
from pen import Pen, write_config


def values(families):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_wholock_metrics_count_holders_and_waiters(jobs, lock, shared_tmp):
    jobs.queue(lock, ["pls", "-q", "sleep", "60"], state="holding")
    jobs.queue(lock, ["pls", "-q", "sleep", "60"], state="holding")
    jobs.queue(lock, ["perflock", "-q", "sleep", "60"])
    jobs.queue(lock, ["pls", "-q", "sleep", "60"])

    done = jobs.run(["wholock", "--openmetrics"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("# EOF\n")
    got = values(parse_openmetrics(done.stdout))
    assert got[("perflock_holders", (("mode", "shared"),))] == 2
    assert got[("perflock_holders", (("mode", "exclusive"),))] == 0
    assert got[("perflock_waiters", (("mode", "exclusive"),))] == 1
    assert got[("perflock_waiters", (("mode", "shared"),))] == 1
    assert 0 < got[("perflock_oldest_wait_seconds", ())] < 60
    assert got[("perflock_hold_seconds", ())] >= got[("perflock_oldest_wait_seconds", ())]

    out = shared_tmp / "textfile"
    out.mkdir()
    done = jobs.run(["wholock", "--textfile", str(out)])
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    written = out / "perflock.prom"
    assert [p.name for p in out.iterdir()] == ["perflock.prom"]
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    text_values = values(parse_text(written.read_text()))
    assert text_values[("perflock_waiters", (("mode", "exclusive"),))] == 1
    assert "# EOF" not in written.read_text()


def test_wholock_textfile_errors_name_the_directory(jobs, shared_tmp):
    missing = shared_tmp / "no-such-dir"
    done = jobs.run(["wholock", "--textfile", str(missing)])
    assert done.returncode == 73
    assert done.stderr == (f"wholock: cannot write perflock.prom in {missing}: No such file or "
                           "directory; is it node_exporter's textfile directory, and yours to write?\n")

    theirs = shared_tmp / "roots"
    theirs.mkdir(mode=0o755)
    done = jobs.run(nobody() + ["wholock", "--textfile", str(theirs)])
    assert done.returncode == 73
    assert "Permission denied" in done.stderr
    assert list(theirs.iterdir()) == []


def test_one_output_format_at_a_time(jobs, bindir, shared_tmp):
    for argv in (["wholock", "--json", "--openmetrics"],
                 ["wholock", "--openmetrics", "--textfile", str(shared_tmp)],
                 ["holdingpen", "status", "--json", "--openmetrics"]):
        done = jobs.run(argv)
        assert done.returncode == 64, argv
        assert "choose" in done.stderr.splitlines()[0]


def test_holdingpen_status_openmetrics_shows_a_loan(bindir, shared_tmp):
    pen = Pen(bindir, shared_tmp, write_config(shared_tmp / "pool.toml", memory_count=2, size="16M"))
    try:
        pen.wait_full()
        job = subprocess.Popen(["gatekeeper", "sh", "-c", "echo holding; read _"], env=pen.env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert job.stdout.readline() == "holding\n"
        loan, = pen.status()["loans"]
        done = pen.run(["holdingpen", "status", "--openmetrics"])
        job.stdin.close()
        job.wait(30)
        job.stdout.close()
    finally:
        assert pen.stop() == 0
    assert done.returncode == 0, done.stderr
    got = values(parse_openmetrics(done.stdout))
    memory = (("kind", "memory"),)
    assert got[("holdingpen_ready", ())] == 1
    assert got[("holdingpen_pool_reservation_size_bytes", memory)] == 16 << 20
    assert got[("holdingpen_pool_reservations_configured", memory)] == 2
    states = {state: got[("holdingpen_pool_reservations", (("kind", "memory"), ("state", state)))]
              for state in ("held", "lent", "reserving", "missing")}
    assert states["lent"] == 1 and sum(states.values()) == 2
    assert got[("holdingpen_pool_short", memory)] == 0
    labels = (("kind", "memory"), ("pid", str(job.pid)), ("user", loan["user"]))
    assert got[("holdingpen_loan_start_time_seconds", labels)] == loan["since"]
