"""The machine lock: a fair readers/writer lock built from flock(2) alone.

    from holdingpen.lock.perflock import PerfLock
    with PerfLock(shared=False, timeout_s=600, message="nightly benchmark"):
        run_the_benchmark()

Theory of operation
-------------------
The machine lock is flock(2) on one file, /run/perflock by default: LOCK_EX
for an exclusive job, LOCK_SH for a shared one. That alone is correct, and a
plain ``flock /run/perflock CMD`` excludes and is excluded, but it is not
fair: Linux grants a new LOCK_SH whenever only shared locks are held, so
overlapping shared jobs starve a waiting exclusive one.

Fairness comes from a queue beside it, the directory ``LOCK.d``. A job first
takes a ticket there (lockqueue.py has the rules): a file it creates, holds
LOCK_EX on while it waits and runs, and removes when done. Tickets are
numbered under a LOCK_EX on the directory itself and appear by rename(2)
already locked, so their order is the order of arrival. A job waits for an
earlier ticket to go by blocking on LOCK_SH on it, and asks for the lock file
only when no earlier conflicting ticket is left.

Every "I am here" is a lock the kernel drops when its process dies, so a job
killed in any way leaves nothing held: its ticket file may stay behind, but
unlocked, so waiters pass it at once, wholock ignores it, and the next job
allowed to delete it (its owner's, or root's) does.

Descriptors are close-on-exec: a job's children never hold the lock. A process
that forks without exec shares the lock with its child, as flock(2) does.
"""

import fcntl
import os
import time

from holdingpen.lock import lockqueue

DEFAULT_LOCK_PATH = "/run/perflock"
LOCK_PATH_ENV = "PERFLOCK_LOCK"
TMPFILES_FIX = "create it as root with: systemd-tmpfiles --create perflock.conf"
_UNPUBLISHED = ".new."     # a ticket being written, before its rename(2) into the queue


class LockError(Exception):
    """The lock file or queue cannot be used; the message names the fix."""


class LockBusy(Exception):
    """The machine was not free in time (nonblock or timeout_s)."""


def lock_path(path=None, environ=os.environ):
    """The lock file to use: path if given, else $PERFLOCK_LOCK, else /run/perflock."""
    return path or environ.get(LOCK_PATH_ENV) or DEFAULT_LOCK_PATH


def missing_lock_file(path):
    """The one-line error for a lock file that does not exist, with its fix."""
    if path == DEFAULT_LOCK_PATH:
        return f"the lock file {path} does not exist; {TMPFILES_FIX}"
    return (f"the lock file {path} does not exist; create it (touch {path}), "
            f"or use the default {DEFAULT_LOCK_PATH} (unset {LOCK_PATH_ENV}, no --lock)")


def queue_dir(path):
    """The queue directory that goes with the lock file at path."""
    return path + ".d"


class PerfLock:
    """The machine, exclusively or shared, for as long as the lock is held.

    Args:
        shared: share the machine with other shared jobs (pls) rather than
            have it alone (perflock).
        nonblock: raise LockBusy at once rather than wait.
        timeout_s: raise LockBusy after waiting this long (None: no limit).
        message: a note for wholock, e.g. what the job is for.
        path: the lock file (default: lock_path()).
        command: the command line wholock shows (default: this process's).
        on_wait: called with this PerfLock once, if the lock is not free at
            once: the moment to tell the user, or to prepare for a wait.

    acquire() and release() may also be called directly; a PerfLock can be
    acquired again after release().
    """

    def __init__(self, shared=False, *, nonblock=False, timeout_s=None, message="",
                 path=None, command=None, on_wait=None):
        self.mode = lockqueue.SHARED if shared else lockqueue.EXCLUSIVE
        self.nonblock = nonblock
        self.timeout_s = timeout_s
        self.message = message
        self.path = lock_path(path)
        self.command = command
        self.on_wait = on_wait
        self.seq = None          # our ticket's number while we have one
        self.waited_s = None     # how long acquire() waited
        self._lock_fd = self._dir_fd = self._ticket_fd = None
        self._announced = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    @property
    def held(self):
        return self._ticket_fd is not None and self.waited_s is not None

    def acquire(self):
        """Wait for our turn, then take the lock file.

        Raises:
            LockBusy: not free at once (nonblock) or within timeout_s.
            LockError: the lock file or its queue cannot be used.
        """
        if self._ticket_fd is not None:
            raise RuntimeError("this PerfLock is already acquired")
        start = time.monotonic()
        deadline = None if self.timeout_s is None else start + self.timeout_s
        self._announced = False
        self._lock_fd = _open_lock_file(self.path)
        try:
            ahead = self._take_ticket()
            self._wait_for_turn(ahead, deadline)
            op = fcntl.LOCK_SH if self.mode == lockqueue.SHARED else fcntl.LOCK_EX
            self._flock(self._lock_fd, op, deadline, self.path)
            self._follow_replaced_lock_file(op, deadline)
            os.utime(self._ticket_fd)   # the ticket's mtime says since when we hold it
        except OSError as e:
            self._leave()
            raise LockError(f"cannot use the queue {queue_dir(self.path)}: {e.strerror}") from None
        except BaseException:
            self._leave()
            raise
        self.waited_s = time.monotonic() - start

    def release(self):
        """Give the machine to the next job. Safe to call when not held."""
        self._leave()

    def _leave(self):
        # The lock file first: the next job then finds it free when our ticket goes.
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._ticket_fd is not None:
            try:
                os.unlink(lockqueue.ticket_name(self.seq, self.mode), dir_fd=self._dir_fd)
            except OSError:
                pass   # gone already; an unlocked leftover is harmless
            os.close(self._ticket_fd)
        if self._dir_fd is not None:
            os.close(self._dir_fd)
        self._ticket_fd = self._dir_fd = self.seq = self.waited_s = None

    def _take_ticket(self):
        """Join the queue; return the tickets that were there before us."""
        directory = queue_dir(self.path)
        self._dir_fd = _open_queue_dir(directory)
        # Numbering and publishing a ticket happen under the directory's lock,
        # so numbers follow arrival and are never handed out twice.
        fcntl.flock(self._dir_fd, fcntl.LOCK_EX)
        try:
            unpublished = []
            tickets = _tickets(self._dir_fd, unpublished)
            for name in unpublished:
                # A job killed while making its ticket, for no one else makes one while
                # we hold the directory's lock: it would stay for good.
                try:
                    os.unlink(name, dir_fd=self._dir_fd)
                except OSError:
                    pass    # another user's, in the sticky directory: harmless, if untidy
            seq = lockqueue.next_seq(tickets)
            tmp = f"{_UNPUBLISHED}{os.getpid()}.{time.monotonic_ns()}"
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                             0o644, dir_fd=self._dir_fd)
            except PermissionError:
                raise LockError(f"cannot join the queue in {directory}: permission denied; "
                                "it must be mode 1777 (tmpfiles.d/perflock.conf)") from None
            try:
                os.fchmod(fd, 0o644)    # readable by wholock whatever our umask
                os.write(fd, self._ticket_text())
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.rename(tmp, lockqueue.ticket_name(seq, self.mode),
                          src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            except BaseException:
                os.unlink(tmp, dir_fd=self._dir_fd)
                os.close(fd)
                raise
            self._ticket_fd, self.seq = fd, seq
        finally:
            fcntl.flock(self._dir_fd, fcntl.LOCK_UN)
        return tickets

    def _ticket_text(self):
        """What wholock reads from our ticket: NUL-separated fields."""
        import sys
        command = self.command if self.command is not None else sys.argv
        fields = ["1", str(os.getpid()), repr(time.time()), self.message, *command]
        return b"\0".join(os.fsencode(f) for f in fields)

    def _wait_for_turn(self, ahead, deadline):
        pending = lockqueue.blockers(ahead, self.seq, self.mode)
        while pending:
            seq, mode = pending.pop()     # the latest: once it goes, earlier ones have mostly gone
            if self._wait_until_gone(lockqueue.ticket_name(seq, mode), deadline):
                pending = lockqueue.blockers(_tickets(self._dir_fd), self.seq, self.mode)

    def _wait_until_gone(self, name, deadline):
        """Block until ticket `name` is released; True if that took a wait."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self._dir_fd)
        except FileNotFoundError:
            return False
        try:
            waited = self._flock(fd, fcntl.LOCK_SH, deadline, name)
            # Its owner is gone. A leftover of a killed job: remove it, if allowed
            # and nobody else is looking at it.
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(name, dir_fd=self._dir_fd)
            except OSError:
                pass
            return waited
        finally:
            os.close(fd)

    def _follow_replaced_lock_file(self, op, deadline):
        """Hold the file now at the path, if another was put there while we waited.

        flock(1) users and wholock see the file at the path. Our ticket keeps our
        place, so no later job holds the new file against us; if there is no usable
        file at the path, we keep the one we opened (new jobs are told why).
        """
        while True:
            try:
                there = os.stat(self.path)
            except OSError:
                return                  # removed: no one else can lock ours
            ours = os.fstat(self._lock_fd)
            if (there.st_dev, there.st_ino) == (ours.st_dev, ours.st_ino):
                return
            try:
                fd = _open_lock_file(self.path)
            except LockError:
                return                  # not a lock file we can use
            try:
                self._flock(fd, op, deadline, self.path)
            except BaseException:
                os.close(fd)
                raise
            os.close(self._lock_fd)
            self._lock_fd = fd

    def _flock(self, fd, op, deadline, what):
        """flock(fd, op) within the deadline; True if it had to wait."""
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            pass
        except OSError as e:
            raise LockError(_flock_problem(what, e)) from None
        if self.nonblock:
            raise LockBusy(f"{self.path} is held")
        if not self._announced:
            self._announced = True
            if self.on_wait is not None:
                self.on_wait(self)
        try:
            if deadline is None:
                fcntl.flock(fd, op)
            else:
                _flock_until(fd, op, deadline)
        except OSError as e:
            raise LockError(_flock_problem(what, e)) from None
        return True


def _open_lock_file(path):
    try:
        # O_NONBLOCK: a FIFO put there must not hang us; we check the type below.
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise LockError(missing_lock_file(path)) from None
    except PermissionError:
        raise LockError(f"the lock file {path} is not writable by you; it must be mode 0666 "
                        f"(tmpfiles.d/perflock.conf; as root: chmod 0666 {path})") from None
    except IsADirectoryError:
        raise LockError(f"the lock file {path} is a directory, not a regular file; "
                        f"remove it and {TMPFILES_FIX}") from None
    except OSError as e:
        raise LockError(f"cannot open the lock file {path}: {e.strerror}") from None
    import stat
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LockError(f"the lock file {path} is not a regular file; "
                        f"remove it and {TMPFILES_FIX}")
    return fd


def _open_queue_dir(directory):
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        return os.open(directory, flags)
    except FileNotFoundError:
        pass
    except NotADirectoryError:
        raise LockError(f"the queue {directory} is not a directory; "
                        f"remove it and {TMPFILES_FIX}") from None
    # A lock file of one's own (PERFLOCK_LOCK=~/lock) gets its queue on first use.
    try:
        os.mkdir(directory, 0o1777)
        os.chmod(directory, 0o1777)   # mkdir's mode passes through the umask
    except FileExistsError:
        pass
    except OSError as e:
        raise LockError(f"the queue directory {directory} does not exist and cannot be "
                        f"created ({e.strerror}); {TMPFILES_FIX}") from None
    return os.open(directory, flags)


def _tickets(dir_fd, unpublished=None):
    """The tickets in the queue; the names of unpublished ones appended to `unpublished`."""
    tickets = []
    for name in os.listdir(dir_fd):
        ticket = lockqueue.parse_ticket(name)
        if ticket is not None:
            tickets.append(ticket)
        elif unpublished is not None and name.startswith(_UNPUBLISHED):
            unpublished.append(name)
    return tickets


def _flock_problem(what, error):
    import errno
    if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
        return (f"flock(2) does not work on the filesystem holding {what} ({error.strerror}); "
                "put the lock on a local filesystem such as /run")
    return f"cannot lock {what}: {error.strerror}"


class _Alarm(Exception):
    pass


def _flock_until(fd, op, deadline):
    """A blocking flock that gives up at deadline (time.monotonic()).

    In the main thread a timer signal interrupts the wait, so the lock is
    taken the moment it is free; elsewhere (signals only reach the main
    thread) it polls. The caller's own ITIMER_REAL (a harness's timeout, say)
    is kept: if it falls due while we wait, its SIGALRM handler runs then,
    and it is set again, as it was, when we return.
    """
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        while True:
            try:
                return fcntl.flock(fd, op | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockBusy("timed out") from None
                time.sleep(0.005)

    def on_alarm(signum, frame):
        raise _Alarm(frame)

    if deadline - time.monotonic() <= 0:
        raise LockBusy("timed out")
    theirs = signal.signal(signal.SIGALRM, on_alarm)
    their_s, their_interval_s = signal.setitimer(signal.ITIMER_REAL, 0)
    their_due = time.monotonic() + their_s if their_s > 0 else None
    try:
        while True:
            now = time.monotonic()
            for_them = their_due is not None and their_due <= deadline
            wake_s = (their_due if for_them else deadline) - now
            if wake_s <= 0 and not for_them:
                raise LockBusy("timed out")
            try:
                signal.setitimer(signal.ITIMER_REAL, max(wake_s, 1e-6))
                try:
                    return fcntl.flock(fd, op)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except _Alarm as alarm:
                if not for_them:
                    try:        # it may have come, or been taken, just as the timer fired
                        return fcntl.flock(fd, op | fcntl.LOCK_NB)
                    except BlockingIOError:
                        raise LockBusy("timed out") from None
                their_due = their_due + their_interval_s if their_interval_s else None
                _deliver_alarm(theirs, alarm.args[0])
    finally:
        signal.signal(signal.SIGALRM, theirs)
        if their_due is not None:
            signal.setitimer(signal.ITIMER_REAL, max(their_due - time.monotonic(), 1e-6),
                             their_interval_s)


def _deliver_alarm(handler, frame):
    """The caller's SIGALRM, fallen due while we waited: what it would have done."""
    import signal
    if callable(handler):
        handler(signal.SIGALRM, frame)
    elif handler == signal.SIG_DFL:      # the default action: die of it
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGALRM)
