"""Metric families to exact text, in both spellings; and the atomic textfile writer."""

import os
import stat

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from holdingpen.common.openmetrics import counter, gauge, render, write_textfile


CASES = [
    # (families, OpenMetrics text, text format 0.0.4)
    ([gauge("up", "Up.", [({}, True)])],
     "# HELP up Up.\n# TYPE up gauge\nup 1\n# EOF\n",
     "# HELP up Up.\n# TYPE up gauge\nup 1\n"),
    ([gauge("size_bytes", "Size.", [({"kind": "memory"}, 268435456), ({"kind": "disk:/var/tmp"}, 0)],
            unit="bytes")],
     '# HELP size_bytes Size.\n# TYPE size_bytes gauge\n# UNIT size_bytes bytes\n'
     'size_bytes{kind="memory"} 268435456\nsize_bytes{kind="disk:/var/tmp"} 0\n# EOF\n',
     '# HELP size_bytes Size.\n# TYPE size_bytes gauge\n'
     'size_bytes{kind="memory"} 268435456\nsize_bytes{kind="disk:/var/tmp"} 0\n'),
    ([counter("borrows", "Borrows.", [({"kind": "memory"}, 3)], created_s=1764769000.5)],
     '# HELP borrows Borrows.\n# TYPE borrows counter\n'
     'borrows_total{kind="memory"} 3\nborrows_created{kind="memory"} 1764769000.5\n# EOF\n',
     '# HELP borrows_total Borrows.\n# TYPE borrows_total counter\nborrows_total{kind="memory"} 3\n'
     '# HELP borrows_created When borrows_total started counting from 0 (Unix time).\n'
     '# TYPE borrows_created gauge\nborrows_created{kind="memory"} 1764769000.5\n'),
    # A counter nothing was counted in yet: its family, no samples.
    ([counter("refusals", "Refusals.", [], created_s=1.0)],
     "# HELP refusals Refusals.\n# TYPE refusals counter\n# EOF\n",
     "# HELP refusals_total Refusals.\n# TYPE refusals_total counter\n"),
    # Escapes: a user's name or a path may hold anything.
    ([gauge("odd", 'Says "hi"\\n and\nmore.', [({"user": 'a"b\\c\nd'}, 0.25)])],
     '# HELP odd Says \\"hi\\"\\\\n and\\nmore.\n# TYPE odd gauge\n'
     'odd{user="a\\"b\\\\c\\nd"} 0.25\n# EOF\n',
     '# HELP odd Says "hi"\\\\n and\\nmore.\n# TYPE odd gauge\n'
     'odd{user="a\\"b\\\\c\\nd"} 0.25\n'),
    ([gauge("v", "V.", [({"x": "inf"}, float("inf")), ({"x": "-inf"}, float("-inf")),
                         ({"x": "nan"}, float("nan")), ({"x": "float"}, 1e-3), ({"x": "no"}, False)])],
     '# HELP v V.\n# TYPE v gauge\nv{x="inf"} +Inf\nv{x="-inf"} -Inf\nv{x="nan"} NaN\n'
     'v{x="float"} 0.001\nv{x="no"} 0\n# EOF\n',
     '# HELP v V.\n# TYPE v gauge\nv{x="inf"} +Inf\nv{x="-inf"} -Inf\nv{x="nan"} NaN\n'
     'v{x="float"} 0.001\nv{x="no"} 0\n'),
    ([], "# EOF\n", ""),
]


@pytest.mark.parametrize("families, openmetrics_text, text", CASES)
def test_render(families, openmetrics_text, text):
    assert render(families) == openmetrics_text
    assert render(families, openmetrics=False) == text


@pytest.mark.parametrize("families, openmetrics_text, text", CASES)
def test_real_parsers_read_back_what_was_meant(families, openmetrics_text, text):
    """prometheus_client's parsers (OpenMetrics, and the 0.0.4 text format
    node_exporter reads) find each family with its type, help and values."""
    want = {f.name: f for f in families}
    for parsed in parse_openmetrics(openmetrics_text):
        f = want[parsed.name]
        assert (parsed.type, parsed.documentation, parsed.unit) == (f.type, f.help, f.unit)
        values = [s.value for s in parsed.samples if not s.name.endswith("_created")]
        assert _same(values, [float(v) for _, v in f.samples])
        assert [s.labels for s in parsed.samples if not s.name.endswith("_created")] == \
            [labels for labels, _ in f.samples]
    for parsed in parse_text(text):
        name = parsed.name.removesuffix("_created")
        if name != parsed.name:     # the 0.0.4 spelling's companion gauge of a counter
            assert parsed.type == "gauge" and want[name].type == "counter"
            assert [s.value for s in parsed.samples] == [want[name].created_s] * len(want[name].samples)
            continue
        f = want[name]
        assert (parsed.type, parsed.documentation) == (f.type, f.help)
        assert _same([s.value for s in parsed.samples], [float(v) for _, v in f.samples])


def _same(a, b):
    return len(a) == len(b) and all(x == y or (x != x and y != y) for x, y in zip(a, b))


@pytest.mark.parametrize("make, message", [
    (lambda: gauge("bad name", "x", []), "bad metric name"),
    (lambda: gauge("jobs_total", "x", []), "not ending in"),
    (lambda: counter("borrows_total", "x", [], 0.0), "not ending in"),
    (lambda: gauge("wait", "x", [], unit="seconds"), "must end with its unit, _seconds"),
    (lambda: counter("borrows", "x", [], None), "give created_s"),
    (lambda: gauge("g", "x", [({"bad-label": "v"}, 1)]), "bad label name"),
    (lambda: gauge("g", "x", [({"__name__": "v"}, 1)]), "bad label name"),
    (lambda: render([gauge("g", "x", []), gauge("g", "y", [])]), "named twice"),
])
def test_refuses_what_prometheus_would_not_take(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_write_textfile_replaces_the_file_whole_and_world_readable(tmp_path):
    old = tmp_path / "x.prom"
    old.write_text("old\n")
    umask = os.umask(0o077)     # a strict umask must not hide it from node_exporter
    try:
        write_textfile(str(tmp_path), "x.prom", "new\n")
    finally:
        os.umask(umask)
    assert old.read_text() == "new\n"
    assert stat.S_IMODE(old.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["x.prom"]   # no temporary file left


def test_a_reader_never_sees_half_a_file(tmp_path):
    # The old inode stays whole under an open reader; the new one appears at once.
    write_textfile(str(tmp_path), "x.prom", "a" * 100000)
    with open(tmp_path / "x.prom") as reader:
        write_textfile(str(tmp_path), "x.prom", "b" * 10)
        assert reader.read() == "a" * 100000
    assert (tmp_path / "x.prom").read_text() == "b" * 10


def test_write_textfile_into_a_missing_directory_raises_and_leaves_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_textfile(str(tmp_path / "nope"), "x.prom", "x\n")
    assert list(tmp_path.iterdir()) == []


def test_write_textfile_failing_midway_leaves_no_temporary_file(tmp_path):
    with pytest.raises(TypeError):
        write_textfile(str(tmp_path), "x.prom", b"not text")
    assert list(tmp_path.iterdir()) == []
