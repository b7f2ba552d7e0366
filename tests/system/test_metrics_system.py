"""Metrics as a lab's Prometheus gets them: Debian's own node_exporter, in the
booted container, scraped on its loopback (the container's private network)
while ordinary users' perflock jobs hold and wait, after our timer's service
has run; and `holdingpen status --openmetrics` against the installed daemon
while a loan is out. Every text is read back by prometheus_client's parsers.

node_exporter is installed on the host (tests/run's package list), so the
container, an overlay of the host's root, has it; it starts here, not at boot.
"""

import json
import re
import stat
import time
from contextlib import ExitStack, contextmanager

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from conftest import CONFIG_DIR, install_from_readme, remove_config
from daemonctl import borrowing, show, wait_for
from test_perflock_system import holding

EXPORTER = "prometheus-node-exporter.service"
METRICS_SERVICE = "holdingpen-lock-metrics.service"
METRICS_TIMER = "holdingpen-lock-metrics.timer"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
LOCK_FILE = f"{TEXTFILE_DIR}/perflock.prom"
DAEMON_FILE = f"{TEXTFILE_DIR}/holdingpen.prom"     # the package's link to the daemon's file
CONFIG_PATH = f"{CONFIG_DIR}/holdingpen.toml"
SHORT_POOL_CONFIG = """\
[memory]
size = "16M"
count = 1

[[disk]]
path = "/var/tmp"
size = "1T"       # more than the disk: always short
count = 1
"""
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
    assert ct.path(DAEMON_FILE).is_symlink()
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
    # No temporary file left (holdingpen.prom: the package's link to the daemon's file).
    assert sorted(p.name for p in ct.path(TEXTFILE_DIR).iterdir()) == ["holdingpen.prom",
                                                                       "perflock.prom"]

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


def sample(got, name, **labels):
    """A sample's value in a scrape, or None if there is none such."""
    family = next((f for f in got.values() if any(s.name == name for s in f.samples)), None)
    return next((s.value for s in (family.samples if family else ())
                 if s.name == name and s.labels == labels), None)


@pytest.fixture
def short_pool(ct):
    """The daemon serving SHORT_POOL_CONFIG from an empty store; afterwards the default again."""
    assert not ct.path(CONFIG_PATH).exists(), f"{CONFIG_PATH} left by an earlier test"
    ct.path(CONFIG_DIR).mkdir(exist_ok=True)
    ct.path(CONFIG_PATH).write_text(SHORT_POOL_CONFIG)
    restart_empty(ct)
    yield
    ct.path(CONFIG_PATH).unlink()
    ct.path(CONFIG_DIR).rmdir()
    restart_empty(ct)


def restart_empty(ct):
    ct.run(["systemctl", "stop", "holdingpen.service"])
    ct.run(["systemctl", "start", "holdingpen.service"])


def scrape_until(ct, what, ok):
    return wait_for(what, lambda: scrape(ct), ok)


def test_the_package_links_the_daemons_file_into_node_exporters_directory(ct):
    link = ct.path(DAEMON_FILE)
    assert link.is_symlink() and str(link.readlink()) == "/var/lib/holdingpen/holdingpen.prom"
    # node_exporter installed after holdingpen: its directory's arrival triggers the link.
    link.unlink()
    ct.run(["dpkg-trigger", "--no-await", TEXTFILE_DIR])
    ct.run(["dpkg", "--triggers-only", "--pending"])
    assert link.is_symlink() and str(link.readlink()) == "/var/lib/holdingpen/holdingpen.prom"
    # The daemon's own writable place is its StateDirectory=, read by all.
    assert stat.S_IMODE(ct.path("/var/lib/holdingpen").stat().st_mode) == 0o755


def test_the_metrics_directory_costs_the_service_no_exposure(ct):
    # 0.6 before the daemon had a directory to write (StateDirectory=) at all.
    done = ct.run(["systemd-analyze", "security", "--no-pager", "holdingpen.service"])
    match = re.search(r"Overall exposure level for holdingpen.service: (\d+\.\d+)", done.stdout)
    assert match, done.stdout[-500:]
    assert float(match.group(1)) <= 0.6, match.group(0)


@pytest.mark.usefixtures("short_pool")
def test_node_exporter_serves_the_daemons_metrics_and_counts_survive_a_kill(ct, exporter):
    memory, disk = {"kind": "memory"}, {"kind": "disk:/var/tmp"}
    before = scrape_until(ct, "the disk pool short", lambda got: sample(
        got, "holdingpen_shortfalls_total", **disk))
    assert before["holdingpen_shortfalls"].type == "counter"
    assert sample(before, "node_textfile_scrape_error") == 0
    assert sample(before, "holdingpen_pool_short", **disk) == 1
    assert sample(before, "holdingpen_pool_short", **memory) == 0
    assert sample(before, "holdingpen_pool_reservations", state="missing", **disk) == 1
    assert sample(before, "holdingpen_pool_reservation_size_bytes", **memory) == 16 << 20
    borrows = sample(before, "holdingpen_borrows_total", **memory) or 0
    refusals = {reason: sample(before, "holdingpen_refusals_total", reason=reason) or 0
                for reason in ("not-authorized", "pool-empty")}

    with borrowing(ct, "alice") as job:
        pid = job.pid
        lent = scrape_until(ct, "the loan", lambda got: sample(
            got, "holdingpen_pool_reservations", state="lent", **memory) == 1)
        assert sample(lent, "holdingpen_borrows_total", **memory) == borrows + 1
        assert sample(lent, "holdingpen_loan_start_time_seconds", user="alice", pid=str(pid),
                      **memory) is not None
        # alice again while her one reservation is out; bob, who may not borrow here.
        assert "(pool-empty)" in ct.run(["gatekeeper", "--strict", "true"], user="alice",
                                        check=False).stderr
        assert "(not-authorized)" in ct.run(["gatekeeper", "--strict", "true"], user="bob",
                                            check=False).stderr
        refused = scrape_until(ct, "the refusals", lambda got: sample(
            got, "holdingpen_refusals_total", reason="not-authorized") == refusals["not-authorized"] + 1)
        assert sample(refused, "holdingpen_refusals_total",
                      reason="pool-empty") == refusals["pool-empty"] + 1

        old_pid = show(ct, "MainPID")["MainPID"]
        ct.run(["systemctl", "kill", "-s", "KILL", "holdingpen"])
        wait_for("a new main process, ready", lambda: show(ct, "MainPID", "ActiveState"),
                 lambda now: now["MainPID"] not in ("0", old_pid) and now["ActiveState"] == "active")
        after = scrape_until(ct, "the new daemon's file", lambda got: sample(
            got, "holdingpen_start_time_seconds") != sample(refused, "holdingpen_start_time_seconds"))

    # Kept in the store with the loans: not one count lost, nor their start.
    for name, labels in (("holdingpen_borrows_total", memory),
                         ("holdingpen_refusals_total", {"reason": "not-authorized"}),
                         ("holdingpen_refusals_total", {"reason": "pool-empty"}),
                         ("holdingpen_borrows_created", memory)):
        assert sample(after, name, **labels) == sample(refused, name, **labels), name
    assert sample(after, "holdingpen_start_time_seconds") > sample(refused, "holdingpen_start_time_seconds")
    assert sample(after, "holdingpen_pool_reservations", state="lent", **memory) == 1   # kept, too
    assert sample(after, "node_textfile_scrape_error") == 0


def test_removing_the_package_stops_the_timer_and_removes_the_file(ct):
    ct.run(["systemctl", "start", METRICS_SERVICE])
    assert ct.path(LOCK_FILE).exists()
    try:
        ct.run(["apt-get", "remove", "-y", "-q", "holdingpen"], timeout_s=300)
        assert not ct.path(LOCK_FILE).exists()    # node_exporter would serve it, stale, forever
        assert not ct.path(DAEMON_FILE).is_symlink()   # dangling, a scrape error there
        state = ct.run(["systemctl", "is-active", METRICS_TIMER], check=False).stdout.strip()
        assert state in ("inactive", "unknown")   # 252 says "inactive" of a unit that is gone
    finally:
        install_from_readme(ct)
        if ct.path(CONFIG_DIR).exists():
            remove_config(ct)
    assert ct.run(["systemctl", "is-active", METRICS_TIMER]).stdout.strip() == "active"
    assert ct.path(DAEMON_FILE).is_symlink()
