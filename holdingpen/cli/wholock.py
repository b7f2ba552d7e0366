"""wholock: who holds the machine, and who waits for it, in order.

    wholock [--lock PATH] [--json]
"""

import sys
import time

from holdingpen.common import cmdline, exits, text
from holdingpen.lock.perflock import LockError, lock_path


OPTIONS = [
    cmdline.Option(None, "--lock", "lock", "PATH"),
    cmdline.Option(None, "--json", "json"),
    cmdline.Option("-h", "--help", "help"),
]
USAGE = "usage: wholock [--lock PATH] [--json]\n"
HELP = """
List who holds the machine lock, then who waits for it, in the order they
will get it: perflock and pls jobs, and plain flock(1) users of the lock file.

      --lock PATH   the lock file (default $PERFLOCK_LOCK, else /run/perflock)
      --json        a JSON list of {"pid", "user", "mode", "state", "since",
                    "command", "message"}; since is Unix time

Exit status: 0; 64 usage; 66 lock file missing.
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
    from holdingpen.lock import who
    path = lock_path(opts["lock"])
    try:
        rows = who.survey(path)
    except LockError as e:
        sys.stderr.write(f"wholock: {e}\n")
        return exits.NOINPUT
    if opts["json"]:
        import json
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(table(rows, time.time()) if rows else f"{path} is free\n")
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

