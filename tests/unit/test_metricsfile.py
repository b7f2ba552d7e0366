"""When the daemon's metrics file is written, and what a failure does."""

import errno

import pytest

from holdingpen.common.openmetrics import write_textfile
from holdingpen.pen.metricsfile import REFRESH_S, MetricsFile


def snapshot(held=1):
    return {"ready": True, "loans": [],
            "pools": [{"name": "memory", "kind": "memory", "path": None, "size": 1, "count": 1,
                       "held": held, "lent": 1 - held, "reserving": 0, "shortfall": None}]}


class Recorder:
    def __init__(self, fail=None):
        self.writes, self.fail = [], fail

    def __call__(self, directory, name, text):
        if self.fail:
            raise self.fail
        self.writes.append((directory, name, text))


# (seconds since the first update, held): whether that update writes
TIMELINE = [
    (0.0, 1, True),                # the first one always
    (1.0, 1, False),               # nothing changed
    (2.0, 0, True),                # a loan: at once
    (2.5, 0, False),
    (2.0 + REFRESH_S - 0.1, 0, False),
    (2.0 + REFRESH_S, 0, True),    # unchanged, but REFRESH_S old
    (2.0 + REFRESH_S + 0.1, 1, True),
]


def test_writes_on_change_and_every_refresh():
    record = Recorder()
    f = MetricsFile("/metrics", write=record)
    wrote = [f.update(snapshot(held), 100.0 + t) for t, held, _ in TIMELINE]
    assert wrote == [w for *_, w in TIMELINE]
    assert len(record.writes) == sum(wrote)
    assert {(d, n) for d, n, _ in record.writes} == {("/metrics", "holdingpen.prom")}
    assert 'holdingpen_pool_reservations{kind="memory",state="lent"} 1\n' in record.writes[1][2]
    assert "# EOF" not in record.writes[0][2]      # node_exporter's spelling


def test_due_in_bounds_the_loops_wait():
    f = MetricsFile("/metrics", write=Recorder())
    assert f.due_in(0.0) == REFRESH_S
    f.update(snapshot(), 10.0)
    assert f.due_in(11.0) == REFRESH_S - 1.0
    assert f.due_in(10.0 + REFRESH_S + 3) == 0.0


def test_an_empty_directory_turns_it_off():
    record = Recorder()
    f = MetricsFile("", write=record)
    assert f.update(snapshot(), 0.0) is False
    assert record.writes == []


def test_a_missing_directory_is_silent_and_tried_again(tmp_path):
    said = []
    directory = tmp_path / "node-exporter"
    f = MetricsFile(str(directory), write=write_textfile, on_error=said.append)
    assert f.update(snapshot(), 0.0) is False
    directory.mkdir()                              # node_exporter installed meanwhile
    assert f.update(snapshot(), 1.0) is False      # not before the refresh is due
    assert f.update(snapshot(), REFRESH_S) is True
    assert (directory / "holdingpen.prom").read_text().startswith("# HELP holdingpen_ready ")
    assert said == []
    f.clear()
    assert [(p.name, p.read_text()) for p in directory.iterdir()] == [("holdingpen.prom", "")]


@pytest.mark.parametrize("error", [OSError(errno.EACCES, "Permission denied"),
                                   OSError(errno.EROFS, "Read-only file system")])
def test_a_failure_is_said_once_with_the_fix(tmp_path, error):
    said = []
    f = MetricsFile(str(tmp_path), write=Recorder(fail=error), on_error=said.append)
    for t in range(0, 100, 5):
        assert f.update(snapshot(held=t % 2), float(t)) is False
    assert said == [f"cannot write holdingpen.prom in {tmp_path}: {error.strerror}; give the daemon "
                    'write access there, or set it to "" to turn the metrics file off']
