"""The wrapped command: our child, started the moment we hold the lock.

The child is forked before we join the queue and waits on a pipe, so when our
turn comes only exec(2) is left: forking a Python process and setting up the
child takes over a millisecond, which every hand-off would otherwise pay. It
is forked before any lock descriptor is opened, so it never holds one.

Signals: the child dies with us (PR_SET_PDEATHSIG), so it never runs without
the lock. While it runs, signals are blocked and taken with sigwaitinfo():
none is lost between start and wait, and a terminal's signal (si_code
SI_KERNEL, already sent to the whole foreground group, the job included) is
told apart from a kill(2) aimed at us, which we pass on.
"""

import _signal as signal   # the signal module only wraps it in enums, which cost 5 ms to import
import os

from holdingpen.common import deathsig, exits

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_SI_KERNEL = 0x80


def exit_status(wait_status):
    """A waitpid() status as an exit status: the code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(wait_status)
    return code if code >= 0 else exits.SIGNAL_BASE - code


class Job:
    """A command forked now, run by run(), or dropped by cancel().

    Args:
        prog: our name, for error messages.
        program: the file to execute (find_program()).
        argv: the command line, argv[0] included.

    Raises:
        OSError: fork failed.
    """

    def __init__(self, prog, program, argv):
        parent = os.getpid()
        go_read, self._go = os.pipe()      # both close-on-exec
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self._go)
            _child(prog, program, argv, go_read, parent)
        os.close(go_read)
        self._status = None

    def run(self):
        """Start the command, pass signals on, and wait for it; its exit status."""
        watched = {*FORWARDED, signal.SIGCHLD}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
        try:
            try:
                os.write(self._go, b"g")
            except BrokenPipeError:
                pass                        # it died while we waited; its status says how
            self._close_go()
            while not self._reaped(os.WNOHANG):
                info = signal.sigwaitinfo(watched)
                if info.si_signo != signal.SIGCHLD and info.si_code != _SI_KERNEL:
                    os.kill(self.pid, info.si_signo)
            return self._status
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def cancel(self):
        """Make sure the command never starts; the child exits on its own."""
        if self._go is not None:
            self._close_go()
            self._reaped(0)

    def _close_go(self):
        os.close(self._go)
        self._go = None

    def _reaped(self, flags):
        if self._status is None:
            pid, status = os.waitpid(self.pid, flags)
            if pid == self.pid:
                self._status = exit_status(status)
        return self._status is not None


def _child(prog, program, argv, go_read, parent):
    """In the child: undo what Python and our parent changed, wait for go, exec."""
    try:
        # Our parent's handlers raise Python exceptions; ignored SIGPIPE and
        # SIGXFSZ (Python's doing) would survive exec.
        for sig in (*FORWARDED, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        deathsig.set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != parent:          # it died before the line above took effect
            os._exit(exits.SIGNAL_BASE + signal.SIGKILL)
        if os.read(go_read, 1) != b"g":     # our parent gave up: the queue, a signal
            os._exit(0)
        os.execv(program, argv)
    except FileNotFoundError:
        os.write(2, f"{prog}: {argv[0]}: command not found\n".encode(errors="replace"))
        os._exit(exits.NOT_FOUND)
    except OSError as e:
        os.write(2, f"{prog}: cannot run {argv[0]}: {e.strerror}\n".encode(errors="replace"))
        os._exit(exits.CANNOT_RUN)
    finally:
        os._exit(exits.CANNOT_RUN)
