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

from holdingpen import cmdline
from holdingpen.perflock import LockBusy, LockError, PerfLock

# Exit codes (also in README.md). The job's own status passes through.
EXIT_BUSY = 1            # not obtained with --nonblock/--timeout (or --conflict-exit-code)
EXIT_USAGE = 64          # EX_USAGE, as flock(1)
EXIT_LOCK_FILE = 66      # EX_NOINPUT, as flock(1): lock file missing or unusable
EXIT_OSERR = 71          # EX_OSERR: could not fork
EXIT_CANNOT_RUN = 126    # CMD found but not executable, as the shell
EXIT_NOT_FOUND = 127     # CMD not found, as the shell
SIGNAL_BASE = 128        # 128+N: the job (or we, while waiting) died of signal N

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_SI_KERNEL = 0x80        # si_code of a signal the terminal sent to the foreground group

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


def main_perflock(argv=None):
    return run("perflock", sys.argv[1:] if argv is None else argv, shared=False)


def main_pls(argv=None):
    return run("pls", sys.argv[1:] if argv is None else argv, shared=True)


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
        return EXIT_USAGE

    say = _quiet if opts["quiet"] else _Say(prog)
    lock = PerfLock(shared or opts["shared"], nonblock=opts["nonblock"],
                    timeout_s=opts["timeout_s"], message=opts["message"] or "",
                    path=opts["lock"], command=command, on_wait=say.waiting)
    busy_exit = EXIT_BUSY if opts["conflict_exit"] is None else opts["conflict_exit"]
    previous = {sig: signal.signal(sig, _interrupted) for sig in FORWARDED}
    try:
        try:
            lock.acquire()
        except LockBusy:
            say.busy(lock, opts["timeout_s"])
            return busy_exit
        except LockError as e:
            sys.stderr.write(f"{prog}: {e}\n")
            return EXIT_LOCK_FILE
        try:
            say.got(lock)
            return _run_job(prog, command)
        finally:
            lock.release()
    except _Interrupted as e:
        return SIGNAL_BASE + e.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Interrupted(BaseException):
    def __init__(self, signum):
        self.signum = signum


def _interrupted(signum, frame):
    # While we wait: leave the queue cleanly (the finally blocks), then exit 128+N.
    raise _Interrupted(signum)


def _run_job(prog, command):
    """Run command as our child until it exits; return its exit status.

    Signals are blocked and taken synchronously with sigwaitinfo(), so none is
    lost between fork and wait, and we can tell a terminal's signal (already
    sent to the job too, as it is in our process group) from a kill(2) aimed
    at us, which we pass on.
    """
    watched = {*FORWARDED, signal.SIGCHLD}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    try:
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError as e:
            sys.stderr.write(f"{prog}: cannot start {command[0]}: {e.strerror}\n")
            return EXIT_OSERR
        if pid == 0:
            _become_job(prog, command, parent, old_mask)
        while True:
            info = signal.sigwaitinfo(watched)
            if info.si_signo == signal.SIGCHLD:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done == pid:
                    code = os.waitstatus_to_exitcode(status)
                    return code if code >= 0 else SIGNAL_BASE - code
            elif info.si_code != _SI_KERNEL:
                os.kill(pid, info.si_signo)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _become_job(prog, command, parent, old_mask):
    """In the child: undo what Python and we changed, then exec command."""
    try:
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        # Python ignores SIGPIPE and SIGXFSZ, and ignoring survives exec.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        _die_with_parent()
        if os.getppid() != parent:   # we were killed before the line above took effect
            os._exit(SIGNAL_BASE + signal.SIGKILL)
        os.execvp(command[0], command)
    except FileNotFoundError:
        os.write(2, f"{prog}: {command[0]}: command not found\n".encode(errors="replace"))
        os._exit(EXIT_NOT_FOUND)
    except OSError as e:
        os.write(2, f"{prog}: cannot run {command[0]}: {e.strerror}\n".encode(errors="replace"))
        os._exit(EXIT_CANNOT_RUN)
    finally:
        os._exit(EXIT_CANNOT_RUN)


def _load_deathsig():
    """Load what the child needs ahead of time, while a job waits, so the hand-off is quick."""
    from holdingpen import deathsig
    return deathsig


def _die_with_parent():
    try:
        _load_deathsig().set_parent_death_signal(signal.SIGKILL)
    except OSError:
        os._exit(EXIT_OSERR)


class _Say:
    """What we tell the user on stderr while they wait."""

    def __init__(self, prog):
        self.prog = prog
        self.waited = False

    def waiting(self, lock):
        self.waited = True
        _load_deathsig()
        line = "waiting for the machine"
        rows = _survey(lock.path)
        if rows is not None:
            from holdingpen import text
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
            from holdingpen import text
            sys.stderr.write(f"{self.prog}: got the machine after {text.age(lock.waited_s)}\n")
            sys.stderr.flush()

    def busy(self, lock, timeout_s):
        from holdingpen import text
        rows = _survey(lock.path)
        holders = text.holders(rows, time.time()) if rows else None
        why = f"gave up after {text.age(timeout_s)}" if timeout_s else "the machine is busy"
        sys.stderr.write(f"{self.prog}: {why}" + (f": {holders}" if holders else "") + "\n")


class _Quiet:
    def waiting(self, lock):
        _load_deathsig()

    def got(self, lock):
        pass

    def busy(self, lock, timeout_s):
        pass


_quiet = _Quiet()


def _survey(path):
    """Who holds and waits, or None if that cannot be told (it is only for the message)."""
    from holdingpen import who
    try:
        return who.survey(path)
    except (OSError, LockError):
        return None
