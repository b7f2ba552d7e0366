"""perflock and pls: run a command with the machine to itself, or shared.

    perflock [-s] [-n] [-w SECONDS] [-E N] [-m TEXT] [-q] [--lock PATH] [--] CMD [ARG...]
    pls      (the same; always shared)

The command runs as our child while we hold the lock, and we exit with its
status. Signals sent to us reach it; if we are killed it is killed too
(PR_SET_PDEATHSIG), so it never runs without the lock. Start-up cost matters
here (it is paid by every wrapped command), so heavy modules load only when
a job has to wait.
"""

import _signal as signal   # the signal module only wraps it in enums, which cost 5 ms to import
import os
import sys
import time

from holdingpen.common import cmdline, exits, job
from holdingpen.lock.perflock import LockBusy, LockError, PerfLock

# Exit codes (also in README.md). The job's own status passes through.
EXIT_BUSY = 1            # not obtained with --nonblock/--timeout (or --conflict-exit-code)
# and job.py's: 126 CMD not executable, 127 CMD not found, 128+N died of signal N

OPTIONS = [
    cmdline.Option("-s", "--shared", "shared"),
    cmdline.Option("-n", "--nonblock", "nonblock"),
    cmdline.Option("-w", "--timeout", "timeout_s", "SECONDS", cmdline.seconds),
    cmdline.Option("-E", "--conflict-exit-code", "conflict_exit", "N", cmdline.exit_code),
    cmdline.Option("-m", "--message", "message", "TEXT"),
    cmdline.Option("-q", "--quiet", "quiet"),
    cmdline.Option(None, "--lock", "lock", "PATH"),
    cmdline.Option("-h", "--help", "help"),
]

USAGE = """\
usage: {prog} [-s|--shared] [-n|--nonblock] [-w|--timeout SECONDS] [-E|--conflict-exit-code N]
       {pad} [-m|--message TEXT] [-q|--quiet] [--lock PATH] [--] CMD [ARG...]
"""

HELP = """
Run CMD {what}, waiting in a fair queue for its turn.

  -s, --shared          share the machine with other shared jobs (what pls does)
  -n, --nonblock        do not wait: fail at once if the machine is busy
  -w, --timeout SECONDS wait at most this long
  -E, --conflict-exit-code N
                        exit with N, not 1, when the machine was busy
  -m, --message TEXT    a note for wholock, e.g. what the job is for
  -q, --quiet           do not say that we wait, or for how long we waited
      --lock PATH       the lock file (default $PERFLOCK_LOCK, else /run/perflock)

Exit status: CMD's own; 1 (or N) if the machine was busy; 64 usage; 66 lock
file missing or unusable; 126 CMD not executable; 127 CMD not found; 128+N if
CMD died of signal N.
"""


def main_perflock():
    _exit(run("perflock", sys.argv[1:], shared=False))


def main_pls():
    _exit(run("pls", sys.argv[1:], shared=True))


def _exit(status):
    """Exit at once, skipping the interpreter's clean-up.

    The lock is already released and nothing is left to tidy, but tearing
    down the interpreter takes milliseconds of CPU, just when the next job in
    the queue is starting on the same cores.
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


def run(prog, argv, shared):
    """The whole command: parse, wait for the machine, run the job; the exit status."""
    usage = USAGE.format(prog=prog, pad=" " * len(prog))
    try:
        opts, command = cmdline.parse(OPTIONS, argv)
        if opts["help"]:
            what = "alongside other shared jobs" if shared else "with the machine to itself"
            sys.stdout.write(usage + HELP.format(what=what))
            return 0
        if not command:
            raise cmdline.UsageError("no command given")
    except cmdline.UsageError as e:
        sys.stderr.write(f"{prog}: {e}\n{usage}")
        return exits.USAGE

    found = cmdline.find_program(command[0], os.environ.get("PATH", os.defpath))
    if found is None:
        sys.stderr.write(f"{prog}: {command[0]}: command not found\n")
        return exits.NOT_FOUND
    say = _quiet if opts["quiet"] else _Say(prog)
    lock = PerfLock(shared or opts["shared"], nonblock=opts["nonblock"],
                    timeout_s=opts["timeout_s"], message=opts["message"] or "",
                    path=opts["lock"], command=command, on_wait=say.waiting)
    busy_exit = EXIT_BUSY if opts["conflict_exit"] is None else opts["conflict_exit"]
    previous = {sig: signal.signal(sig, _interrupted) for sig in job.FORWARDED}
    task = None
    try:
        try:
            task = job.Job(prog, found, command)
        except OSError as e:
            sys.stderr.write(f"{prog}: cannot start {command[0]}: {e.strerror}\n")
            return exits.OSERR
        try:
            lock.acquire()
        except LockBusy:
            say.busy(lock, opts["timeout_s"])
            return busy_exit
        except LockError as e:
            sys.stderr.write(f"{prog}: {e}\n")
            return exits.NOINPUT
        try:
            say.got(lock)
            return task.run()
        finally:
            lock.release()      # only once the job has exited: run() waits for it
    except _Interrupted as e:
        return exits.SIGNAL_BASE + e.signum
    finally:
        if task is not None:
            task.cancel()     # never started (busy, interrupted): the child just exits
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Interrupted(BaseException):
    def __init__(self, signum):
        self.signum = signum


def _interrupted(signum, frame):
    # While we wait: leave the queue cleanly (the finally blocks), then exit 128+N.
    raise _Interrupted(signum)


class _Say:
    """What we tell the user on stderr while they wait."""

    def __init__(self, prog):
        self.prog = prog
        self.waited = False

    def waiting(self, lock):
        self.waited = True
        line = "waiting for the machine"
        rows = _survey(lock.path)
        if rows is not None:
            from holdingpen.common import text
            me = os.getpid()
            ahead = next((i for i, r in enumerate(rows) if r["pid"] == me), len(rows))
            holders = text.holders(rows, time.time())
            if holders:
                line += f": {holders}"
            line += f"; {ahead} job{'s' * (ahead != 1)} ahead"
        sys.stderr.write(f"{self.prog}: {line}\n")
        sys.stderr.flush()

    def got(self, lock):
        if self.waited:
            from holdingpen.common import text
            sys.stderr.write(f"{self.prog}: got the machine after {text.age(lock.waited_s)}\n")
            sys.stderr.flush()

    def busy(self, lock, timeout_s):
        from holdingpen.common import text
        rows = _survey(lock.path)
        holders = text.holders(rows, time.time()) if rows else None
        why = f"gave up after {text.age(timeout_s)}" if timeout_s else "the machine is busy"
        sys.stderr.write(f"{self.prog}: {why}" + (f": {holders}" if holders else "") + "\n")


class _Quiet:
    def waiting(self, lock):
        pass

    def got(self, lock):
        pass

    def busy(self, lock, timeout_s):
        pass


_quiet = _Quiet()


def _survey(path):
    """Who holds and waits, or None if that cannot be told (it is only for the message)."""
    from holdingpen.lock import who
    try:
        return who.survey(path)
    except (OSError, LockError):
        return None
