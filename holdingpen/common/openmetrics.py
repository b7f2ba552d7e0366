"""Metrics as text for Prometheus: families in, exact text out; and the file a
node_exporter textfile collector reads, written atomically.

Two spellings of the same families:

* OpenMetrics 1.0 (`render(families)`): what `--openmetrics` prints. A counter
  family `x` has the samples `x_total` and `x_created`; `# UNIT` lines; `# EOF`.
* The Prometheus text format 0.0.4 (`render(families, openmetrics=False)`):
  what node_exporter's textfile collector parses. Measured with Debian's
  node_exporter 1.5: an OpenMetrics counter came out `untyped` as `x_total`
  and `x_created`, so here the counter family is `x_total` itself and the
  time it started counting is a gauge family `x_created`.

    >>> print(render([gauge("jobs", "Jobs running.", [({"mode": "shared"}, 2)])]), end="")
    # HELP jobs Jobs running.
    # TYPE jobs gauge
    jobs{mode="shared"} 2
    # EOF
"""

import math
import os
import re
import tempfile

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
# What a family's name may not end with: the samples of counters, histograms
# and summaries end so, and a reader would take it for one of theirs.
_RESERVED_SUFFIXES = ("_total", "_created", "_count", "_sum", "_bucket", "_info")


class Family:
    """One metric family: a name, its type, a help text, and its samples.

    Args:
        name: the family's name, e.g. "perflock_waiters"; for a counter
            without "_total".
        type: "gauge" or "counter".
        help: one sentence for the HELP line.
        samples: [(labels, value)]: labels a dict {name: text}, rendered in
            its order; value a number (a bool is 1 or 0).
        unit: the unit the name ends with ("bytes", "seconds"), or "".
        created_s: for a counter, the Unix time it started counting from 0.

    Raises:
        ValueError: a name, label or unit Prometheus would not take.
    """

    def __init__(self, name, type, help, samples, unit="", created_s=None):
        if not _NAME.match(name) or name.endswith(_RESERVED_SUFFIXES):
            raise ValueError(f"bad metric name {name!r}: letters, digits, _ and :, "
                             f"not ending in any of {', '.join(_RESERVED_SUFFIXES)}")
        if type not in ("gauge", "counter"):
            raise ValueError(f"metric {name}: type {type!r} is not gauge or counter")
        if unit and not name.endswith("_" + unit):
            raise ValueError(f"metric {name}: its name must end with its unit, _{unit}")
        if type == "counter" and created_s is None:
            raise ValueError(f"counter {name}: give created_s, when it started counting")
        for labels, _ in samples:
            for label in labels:
                if not _LABEL.match(label) or label.startswith("__"):
                    raise ValueError(f"metric {name}: bad label name {label!r}")
        self.name, self.type, self.help, self.unit = name, type, help, unit
        self.samples, self.created_s = list(samples), created_s


def gauge(name, help, samples, unit=""):
    return Family(name, "gauge", help, samples, unit)


def counter(name, help, samples, created_s, unit=""):
    return Family(name, "counter", help, samples, unit, created_s)


def render(families, openmetrics=True):
    """The families as text, in the order given.

    Args:
        families: Family objects with distinct names.
        openmetrics: OpenMetrics 1.0 if true, else the text format 0.0.4
            (see the module's docstring).

    Raises:
        ValueError: two families of one name.
    """
    names = [f.name for f in families]
    if len(set(names)) != len(names):
        raise ValueError(f"metric families named twice: {sorted({n for n in names if names.count(n) > 1})}")
    lines = []
    for f in families:
        lines += _openmetrics(f) if openmetrics else _text(f)
    if openmetrics:
        lines.append("# EOF")
    return "".join(line + "\n" for line in lines)


def _openmetrics(f):
    lines = [f"# HELP {f.name} {_escape(f.help, quotes=True)}", f"# TYPE {f.name} {f.type}"]
    if f.unit:
        lines.append(f"# UNIT {f.name} {f.unit}")
    for labels, value in f.samples:
        if f.type == "counter":
            lines.append(_sample(f.name + "_total", labels, value))
            lines.append(_sample(f.name + "_created", labels, f.created_s))
        else:
            lines.append(_sample(f.name, labels, value))
    return lines


def _text(f):
    if f.type == "gauge":
        return [f"# HELP {f.name} {_escape(f.help)}", f"# TYPE {f.name} gauge"] + \
            [_sample(f.name, labels, value) for labels, value in f.samples]
    total, created = f.name + "_total", f.name + "_created"
    lines = [f"# HELP {total} {_escape(f.help)}", f"# TYPE {total} counter"]
    lines += [_sample(total, labels, value) for labels, value in f.samples]
    if f.samples:
        lines += [f"# HELP {created} When {total} started counting from 0 (Unix time).",
                  f"# TYPE {created} gauge"]
        lines += [_sample(created, labels, f.created_s) for labels, _ in f.samples]
    return lines


def _sample(name, labels, value):
    if labels:
        name += "{" + ",".join(f'{k}="{_escape(str(v), quotes=True)}"' for k, v in labels.items()) + "}"
    return f"{name} {_number(value)}"


def _escape(text, quotes=False):
    # Both formats escape \ and newline; OpenMetrics also " everywhere, the
    # text format 0.0.4 only in label values (its HELP takes \" as an error).
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quotes else text


def _number(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def write_textfile(directory, name, text):
    """Put text in directory/name atomically, mode 0644, for node_exporter's
    textfile collector: a reader sees the old file or the new one, never half.

    The text goes to a temporary file beside it (named so that the collector,
    which reads *.prom, passes it over), is flushed to disk, then renamed over
    the old one.

    Raises:
        OSError: the directory is missing or not writable (the message names it).
    """
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            # The collector runs as another user (prometheus): it must read it.
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(directory, name))
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
