"""Metrics as a lab's Prometheus gets them: Debian's own node_exporter, in the
booted container, scraped on its loopback (the container's private network)
while ordinary users' perflock jobs hold and wait, after our timer's service
has run; and `holdingpen status --openmetrics` against the installed daemon
while a loan is out. Every text is read back by prometheus_client's parsers.

node_exporter is installed on the host (tests/run's package list), so the
container, an overlay of the host's root, has it; it starts here, not at boot.
"""

import json
import stat
import time
from contextlib import ExitStack, contextmanager

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from conftest import CONFIG_DIR, install_from_readme, remove_config
from daemonctl import borrowing, wait_for
from test_perflock_system import holding

from holdingpen.common.openmetrics import write_textfile
from holdingpen.pen import metrics as pen_metrics

EXPORTER = "prometheus-node-exporter.service"
METRICS_SERVICE = "holdingpen-lock-metrics.service"
METRICS_TIMER = "holdingpen-lock-metrics.timer"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
LOCK_FILE = f"{TEXTFILE_DIR}/perflock.prom"
URL = "http://127.0.0.1:9100/metrics"
SCRAPE = f"import sys, urllib.request; sys.stdout.write(urllib.request.urlopen({URL!r}, timeout=5).read().decode())"
WAIT = ["sh", "-c", "echo running; read _"]


@pytest.fixture(scope="module")
def exporter(ct):
    """node_exporter running in the container, answering on its loopback."""
    if not ct.path("/usr/bin/prometheus-node-exporter").exists():
        pytest.fail("prometheus-node-exporter is not installed on the host: run tests/run, "
                    "which installs its package list")
    ct.run(["systemctl", "start", EXPORTER])
    wait_for("node_exporter to answer on 127.0.0.1:9100", lambda: scrape_text(ct, check=False))
    yield
    ct.run(["systemctl", "stop", EXPORTER])
    ct.path(LOCK_FILE).unlink(missing_ok=True)


def scrape_text(ct, check=True):
    done = ct.run(["python3", "-c", SCRAPE], check=check)
    return done.stdout if done.returncode == 0 else ""


def scrape(ct):
    """{family name: family}, as Prometheus would store what node_exporter serves."""
    return {f.name: f for f in parse_text(scrape_text(ct))}


def by_mode(family):
    return {s.labels["mode"]: s.value for s in family.samples}


def waiting(ct, user, argv):
    """A job of user's that queues behind the holder; returns once wholock shows it waiting."""
    job = ct.popen(argv, user=user)
    pid = job.pid
    wait_for(f"{user}'s {argv[0]} to wait", lambda: wholock_states(ct).get(pid),
             lambda state: state == "waiting")
    return job


def wholock_states(ct):
    return {r["pid"]: r["state"] for r in json.loads(ct.run(["wholock", "--json"]).stdout)}


@contextmanager
def stopping(job):
    try:
        yield job
    finally:
        job.stop()


def test_timer_is_installed_enabled_and_runs_the_service(ct):
    assert ct.run(["systemctl", "is-enabled", METRICS_TIMER]).stdout.strip() == "enabled"
    assert ct.run(["systemctl", "is-active", METRICS_TIMER]).stdout.strip() == "active"
    timers = ct.run(["systemctl", "show", METRICS_TIMER, "-pTimersMonotonic", "-pAccuracyUSec"]).stdout
    assert "OnUnitActiveUSec=15s" in timers and "AccuracyUSec=1s" in timers
    # systemd-analyze verify exits 0 on unknown keys: stderr is the verdict.
    done = ct.run(["systemd-analyze", "verify", f"/lib/systemd/system/{METRICS_TIMER}",
                   f"/lib/systemd/system/{METRICS_SERVICE}"], check=False)
    assert (done.returncode, done.stderr) == (0, "")
    exposure = ct.run(["systemd-analyze", "security", "--threshold=12", METRICS_SERVICE], check=False)
    assert exposure.returncode == 0, exposure.stdout[-300:]


def test_without_node_exporters_directory_the_run_is_skipped_not_failed(ct):
    aside = TEXTFILE_DIR + ".aside"
    ct.run(["mv", TEXTFILE_DIR, aside])
    try:
        ct.run(["systemctl", "start", METRICS_SERVICE])
        got = ct.run(["systemctl", "show", METRICS_SERVICE, "-pConditionResult", "-pResult",
                      "-pActiveState"]).stdout.split()
        assert sorted(got) == ["ActiveState=inactive", "ConditionResult=no", "Result=success"]
        assert not ct.path(TEXTFILE_DIR).exists()
    finally:
        ct.run(["mv", aside, TEXTFILE_DIR])


def test_node_exporter_serves_who_holds_and_who_waits(ct, exporter):
    with ExitStack() as jobs:
        jobs.enter_context(holding(ct, "alice", "perflock", "-m", "nightly"))
        jobs.enter_context(stopping(waiting(ct, "bob", ["pls", *WAIT])))
        time.sleep(1.0)   # the oldest waiter's wait, not the newest's, is then over 1 s
        jobs.enter_context(stopping(waiting(ct, "bob", ["perflock", *WAIT])))

        ct.run(["systemctl", "start", METRICS_SERVICE])    # what the timer runs
        got = scrape(ct)

    assert by_mode(got["perflock_holders"]) == {"exclusive": 1, "shared": 0}
    assert by_mode(got["perflock_waiters"]) == {"exclusive": 1, "shared": 1}
    for name in ("perflock_holders", "perflock_waiters", "perflock_oldest_wait_seconds",
                 "perflock_hold_seconds"):
        assert got[name].type == "gauge"
        assert not got[name].documentation.startswith("Metric read from"), name   # our HELP
    wait_s = got["perflock_oldest_wait_seconds"].samples[0].value
    hold_s = got["perflock_hold_seconds"].samples[0].value
    assert 1.0 <= wait_s < 60 and wait_s < hold_s < 60
    assert got["node_textfile_scrape_error"].samples[0].value == 0
    mode = ct.path(LOCK_FILE).stat().st_mode
    assert stat.S_IMODE(mode) == 0o644
    assert [p.name for p in ct.path(TEXTFILE_DIR).iterdir()] == ["perflock.prom"]   # no temp left

    # The jobs are gone: the next run says the machine is free.
    ct.run(["systemctl", "start", METRICS_SERVICE])
    got = scrape(ct)
    assert by_mode(got["perflock_holders"]) == {"exclusive": 0, "shared": 0}
    assert by_mode(got["perflock_waiters"]) == {"exclusive": 0, "shared": 0}
    assert got["perflock_hold_seconds"].samples[0].value == 0


def test_the_timer_rewrites_the_file_every_15_s(ct, exporter):
    ct.run(["systemctl", "start", METRICS_SERVICE])
    before = ct.path(LOCK_FILE).stat().st_mtime
    wait_for("the timer to write perflock.prom again", lambda: ct.path(LOCK_FILE).stat().st_mtime,
             lambda mtime: mtime > before, timeout_s=20.0)
    result = ct.run(["systemctl", "show", METRICS_SERVICE, "-pResult"]).stdout.strip()
    assert result == "Result=success"


def test_status_openmetrics_from_the_installed_daemon_with_a_loan_out(ct):
    with borrowing(ct, "alice") as job:
        pid = job.pid
        done = ct.run(["holdingpen", "status", "--openmetrics"], user="bob")
        reply = json.loads(ct.run(["holdingpen", "status", "--json"]).stdout)
    assert done.stdout.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(done.stdout)}
    [memory] = [p for p in reply["pools"] if p["name"] == "memory"]

    def value(name, **labels):
        return next(s.value for s in families[name].samples if s.labels == labels)

    assert value("holdingpen_ready") == 1
    assert value("holdingpen_pool_reservation_size_bytes", kind="memory") == memory["size"]
    assert value("holdingpen_pool_reservations_configured", kind="memory") == memory["count"]
    assert value("holdingpen_pool_reservations", kind="memory", state="lent") == 1
    assert sum(value("holdingpen_pool_reservations", kind="memory", state=s)
               for s in ("held", "lent", "reserving", "missing")) == memory["count"]
    assert value("holdingpen_pool_short", kind="memory") == 0
    since = value("holdingpen_loan_start_time_seconds", kind="memory", user="alice", pid=str(pid))
    assert abs(time.time() - since) < 60
    assert families["holdingpen_pool_reservation_size_bytes"].unit == "bytes"


def test_node_exporter_types_the_pools_counters_in_the_textfile_spelling(ct, exporter):
    # What the daemon is to write (its wiring comes later): today's status reply
    # with counters, in the spelling node_exporter reads, where Prometheus gets it.
    reply = json.loads(ct.run(["holdingpen", "status", "--json"]).stdout)
    snapshot = dict(reply, started=1764769000.0,
                    counters={"since": 1764769000.0, "borrows": {"memory": 3},
                              "refusals": {"not-authorized": 2}})
    directory = ct.path(TEXTFILE_DIR)
    write_textfile(str(directory), pen_metrics.FILE_NAME,
                   pen_metrics.render(snapshot, openmetrics_format=False))
    try:
        text = scrape_text(ct)
    finally:
        (directory / pen_metrics.FILE_NAME).unlink()
    assert "# TYPE holdingpen_borrows_total counter\n" in text
    assert 'holdingpen_borrows_total{kind="memory"} 3\n' in text
    assert 'holdingpen_refusals_total{reason="not-authorized"} 2\n' in text
    assert "# TYPE holdingpen_pool_reservations gauge\n" in text
    got = {f.name: f for f in parse_text(text)}
    assert got["node_textfile_scrape_error"].samples[0].value == 0


def test_removing_the_package_stops_the_timer_and_removes_the_file(ct):
    ct.run(["systemctl", "start", METRICS_SERVICE])
    assert ct.path(LOCK_FILE).exists()
    try:
        ct.run(["apt-get", "remove", "-y", "-q", "holdingpen"], timeout_s=300)
        assert not ct.path(LOCK_FILE).exists()    # node_exporter would serve it, stale, forever
        state = ct.run(["systemctl", "is-active", METRICS_TIMER], check=False).stdout.strip()
        assert state in ("inactive", "unknown")   # 252 says "inactive" of a unit that is gone
    finally:
        install_from_readme(ct)
        if ct.path(CONFIG_DIR).exists():
            remove_config(ct)
    assert ct.run(["systemctl", "is-active", METRICS_TIMER]).stdout.strip() == "active"
