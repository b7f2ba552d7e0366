"""wholock: who holds the machine, and who waits for it, in order.

    wholock [--lock PATH] [--json | --openmetrics | --textfile DIR]
"""

import sys
import time

from holdingpen.common import cmdline, exits, text
from holdingpen.lock.perflock import LockError, lock_path


OPTIONS = [
    cmdline.Option(None, "--lock", "lock", "PATH"),
    cmdline.Option(None, "--json", "json"),
    cmdline.Option(None, "--openmetrics", "openmetrics"),
    cmdline.Option(None, "--textfile", "textfile", "DIR"),
    cmdline.Option("-h", "--help", "help"),
]
USAGE = "usage: wholock [--lock PATH] [--json | --openmetrics | --textfile DIR]\n"
HELP = """
List who holds the machine lock, then who waits for it, in the order they
will get it: perflock and pls jobs, and plain flock(1) users of the lock file.

      --lock PATH     the lock file (default $PERFLOCK_LOCK, else /run/perflock)
      --json          a JSON list of {"pid", "user", "mode", "state", "since",
                      "command", "message"}; since is Unix time
      --openmetrics   holders and waiters by mode, the longest wait and hold,
                      as OpenMetrics text for Prometheus
      --textfile DIR  the same metrics written to DIR/perflock.prom, atomically,
                      for node_exporter's textfile collector

Exit status: 0; 64 usage; 66 lock file missing; 73 DIR not writable.
"""
COLUMNS = ("USER", "PID", "MODE", "STATE", "SINCE", "MESSAGE", "COMMAND")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts, _ = cmdline.parse(OPTIONS, argv, takes_command=False)
    except cmdline.UsageError as e:
        sys.stderr.write(f"wholock: {e}\n{USAGE}")
        return exits.USAGE
    if opts["help"]:
        sys.stdout.write(USAGE + HELP)
        return 0
    if sum(bool(opts[k]) for k in ("json", "openmetrics", "textfile")) > 1:
        sys.stderr.write(f"wholock: choose one of --json, --openmetrics, --textfile\n{USAGE}")
        return exits.USAGE
    from holdingpen.lock import who
    path = lock_path(opts["lock"])
    try:
        rows = who.survey(path)
    except LockError as e:
        sys.stderr.write(f"wholock: {e}\n")
        return exits.NOINPUT
    if opts["openmetrics"] or opts["textfile"]:
        return _metrics(rows, opts["textfile"])
    if opts["json"]:
        import json
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(table(rows, time.time()) if rows else f"{path} is free\n")
    return 0


def _metrics(rows, textfile_dir):
    from holdingpen.common import openmetrics
    from holdingpen.lock import metrics
    if not textfile_dir:
        sys.stdout.write(metrics.render(rows, time.time()))
        return 0
    try:
        openmetrics.write_textfile(textfile_dir, metrics.FILE_NAME,
                                   metrics.render(rows, time.time(), openmetrics_format=False))
    except OSError as e:
        sys.stderr.write(f"wholock: cannot write {metrics.FILE_NAME} in {textfile_dir}: "
                         f"{e.strerror}; is it node_exporter's textfile directory, and yours to write?\n")
        return exits.CANTCREAT
    return 0


def table(rows, now):
    """The rows as aligned text columns, the command last and unclipped."""
    lines = [COLUMNS]
    for r in rows:
        lines.append((r["user"], str(r["pid"]), r["mode"], r["state"],
                      text.age(now - r["since"]), r["message"] or "-", r["command"]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS) - 1)]
    return "".join("  ".join(f"{cell:<{w}}" for cell, w in zip(line, widths)) + "  " + line[-1] + "\n"
                   for line in lines)

