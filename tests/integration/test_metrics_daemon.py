"""The daemon's own metrics file, with the daemon run by hand on a temporary
textfile directory ([metrics] textfile_dir): it appears, is replaced
atomically, and says what happened (borrows, returns, refusals by reason,
shortfalls), as node_exporter's parser reads it."""

import json
import os
import signal
import stat
import subprocess
import time

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from holdingpen.pen.metricsloop import EVERY_S
from lockjobs import needs_root, nobody, wait_until
from pen import Pen, connect, read_line, write_config


def values(text):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in parse_text(text) for s in f.samples}


def status_metrics(pen):
    """What `holdingpen status --openmetrics` prints, as values()."""
    done = pen.run(["holdingpen", "status", "--openmetrics"])
    assert done.returncode == 0, done.stderr
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in parse_openmetrics(done.stdout) for s in f.samples}


def ask_borrow(pen, kind):
    with connect(pen.socket) as s:
        s.sendall(json.dumps({"action": "borrow", "kind": kind}).encode() + b"\n")
        return json.loads(read_line(s))


def start(bindir, tmp, textfile_dir, extra=""):
    disk = tmp / "disk"
    disk.mkdir(exist_ok=True)
    # A disk pool far larger than the disk: always short.
    extra = (f'[[disk]]\npath = "{disk}"\nsize = "1T"\ncount = 1\n'
             f'[metrics]\ntextfile_dir = "{textfile_dir}"\n' + extra)
    config = write_config(tmp / "pool.toml", memory_count=1, size="16M", extra=extra)
    pen = Pen(bindir, tmp, config)
    pen.wait_full()
    return pen, disk


def metric(prom, name, **labels):
    """A sample's value in the file now, or None if it has no such sample."""
    return values(prom.read_text()).get((name, tuple(sorted(labels.items()))))


@needs_root
def test_the_file_appears_and_counts_borrows_returns_refusals_and_shortfalls(bindir, shared_tmp):
    textfile_dir = shared_tmp / "textfile"
    textfile_dir.mkdir()
    prom = textfile_dir / "holdingpen.prom"
    pen, disk = start(bindir, shared_tmp, textfile_dir)
    disk_kind = f"disk:{disk}"
    try:
        wait_until(lambda: prom.exists() and metric(prom, "holdingpen_shortfalls_total",
                                                    kind=disk_kind), "the file, with a shortfall")
        assert stat.S_IMODE(prom.stat().st_mode) == 0o644
        assert metric(prom, "holdingpen_ready") == 1
        assert metric(prom, "holdingpen_pool_reservation_size_bytes", kind="memory") == 16 << 20
        assert metric(prom, "holdingpen_pool_reservations", kind="memory", state="held") == 1
        assert metric(prom, "holdingpen_pool_short", kind="memory") == 0
        assert metric(prom, "holdingpen_pool_short", kind=disk_kind) == 1
        assert metric(prom, "holdingpen_pool_reservations", kind=disk_kind, state="missing") == 1
        assert metric(prom, "holdingpen_borrows_total", kind="memory") is None   # none yet
        start_s = metric(prom, "holdingpen_start_time_seconds")
        # Counted from the daemon's first start (there was no store to keep counts in before).
        assert metric(prom, "holdingpen_shortfalls_created", kind=disk_kind) == start_s
        inode = prom.stat().st_ino

        job = subprocess.Popen(["gatekeeper", "sh", "-c", "echo holding; read _"], env=pen.env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert job.stdout.readline() == "holding\n"
        wait_until(lambda: metric(prom, "holdingpen_borrows_total", kind="memory") == 1,
                   "the borrow in the file")
        assert prom.stat().st_ino != inode        # replaced by a rename, never rewritten in place
        assert metric(prom, "holdingpen_pool_reservations", kind="memory", state="lent") == 1
        assert metric(prom, "holdingpen_loan_start_time_seconds", kind="memory", user="root",
                      pid=str(job.pid)) is not None

        assert ask_borrow(pen, "memory")["error"] == "pool-empty"
        assert ask_borrow(pen, "memory")["error"] == "pool-empty"
        assert ask_borrow(pen, "tape")["error"] == "unknown-kind"
        refused = pen.run([*nobody(), "gatekeeper", "--strict", "true"])
        assert "(not-authorized)" in refused.stderr
        wait_until(lambda: metric(prom, "holdingpen_refusals_total", reason="not-authorized") == 1,
                   "the refusals in the file")
        assert metric(prom, "holdingpen_refusals_total", reason="pool-empty") == 2
        assert metric(prom, "holdingpen_refusals_total", reason="unknown-kind") == 1

        job.stdin.close()
        job.wait(30)                      # read _ at end of input: its exit is 1
        wait_until(lambda: metric(prom, "holdingpen_returns_total", kind="memory") == 1,
                   "the return in the file")
        assert metric(prom, "holdingpen_borrows_total", kind="memory") == 1
        assert metric(prom, "holdingpen_start_time_seconds") == start_s

        # `holdingpen status --openmetrics` says the same (in OpenMetrics' spelling).
        # (Not the disk pool's, which tries again and again meanwhile.)
        wait_until(lambda: metric(prom, "holdingpen_pool_reservations", kind="memory",
                                  state="held") == 1, "the pool full again")

        def steady(got):
            return {key: value for key, value in got.items() if ("kind", disk_kind) not in key[1]}
        assert steady(status_metrics(pen)) == steady(values(prom.read_text()))
        assert os.listdir(textfile_dir) == ["holdingpen.prom"]     # no temporary file left
    finally:
        assert pen.stop() == 0
    # A clean stop leaves an empty file: no pool that is no longer there.
    assert prom.read_text() == ""


@needs_root
def test_a_missing_directory_is_no_error(bindir, shared_tmp):
    missing = shared_tmp / "no-node-exporter-here"
    pen, _ = start(bindir, shared_tmp, missing)
    try:
        assert pen.run(["gatekeeper", "true"]).returncode == 0
        assert status_metrics(pen)[("holdingpen_borrows_total", (("kind", "memory"),))] == 1
        logged = pen.logged()
    finally:
        assert pen.stop() == 0
    assert not missing.exists()
    assert "holdingpen.prom" not in logged    # silently: no node_exporter, no file


@needs_root
def test_a_directory_it_cannot_write_is_told_once_with_the_fix(bindir, shared_tmp):
    not_a_dir = shared_tmp / "a-file"
    not_a_dir.write_text("")
    pen, _ = start(bindir, shared_tmp, not_a_dir)
    try:
        for _ in range(3):
            assert pen.run(["gatekeeper", "true"]).returncode == 0
        wait_until(lambda: "holdingpen.prom" in pen.logged(), "the failure in the log")
        logged = pen.logged()
    finally:
        assert pen.stop() == 0
    said = [line for line in logged.splitlines() if "holdingpen.prom" in line]
    assert len(said) == 1, said
    assert (f"cannot write holdingpen.prom in {not_a_dir}: Not a directory; give the daemon "
            'write access there, or set it to "" to turn the metrics file off') in said[0]


@needs_root
def test_a_reload_to_no_metrics_file_empties_the_old_one(bindir, shared_tmp):
    textfile_dir = shared_tmp / "textfile"
    textfile_dir.mkdir()
    prom = textfile_dir / "holdingpen.prom"
    pen, _ = start(bindir, shared_tmp, textfile_dir)
    try:
        wait_until(lambda: prom.exists() and metric(prom, "holdingpen_ready") == 1, "the file")
        config = shared_tmp / "pool.toml"
        config.write_text(config.read_text().replace(f'textfile_dir = "{textfile_dir}"',
                                                     'textfile_dir = ""'))
        pen.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded:" in pen.logged(), "the reload")
        assert prom.read_text() == ""
        assert pen.run(["gatekeeper", "true"]).returncode == 0
        time.sleep(3 * EVERY_S)
        assert prom.read_text() == ""            # and it stays so
    finally:
        assert pen.stop() == 0
