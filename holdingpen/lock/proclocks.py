"""Read the kernel's table of file locks, /proc/locks.

Every flock(2) lock held or waited for appears there with the pid that took
it and the device and inode of the file, readable by every user. That is how
wholock sees plain flock(1) users and which perflock jobs are alive, without
a daemon and without setuid.

A line looks like this (waiters follow their blocker, marked "->"):

    1: FLOCK  ADVISORY  WRITE 2723 fe:00:2146402 0 EOF
    1: -> FLOCK  ADVISORY  READ 2727 fe:00:2146402 0 EOF
"""

import os


class Lock:
    """One line of /proc/locks."""

    __slots__ = ("kind", "write", "pid", "dev", "ino", "waiting")

    def __init__(self, kind, write, pid, dev, ino, waiting):
        self.kind = kind        # "FLOCK", "POSIX", "OFDLCK", ...
        self.write = write      # exclusive (WRITE) rather than shared (READ)
        self.pid = pid          # as seen from the reader's pid namespace
        self.dev = dev          # (major, minor)
        self.ino = ino
        self.waiting = waiting  # a request blocked on another lock

    def __repr__(self):
        return (f"Lock({self.kind}, write={self.write}, pid={self.pid}, "
                f"dev={self.dev}, ino={self.ino}, waiting={self.waiting})")


def parse(text):
    """The locks in /proc/locks text, in the kernel's order; odd lines are skipped."""
    locks = []
    for line in text.splitlines():
        fields = line.split()
        waiting = len(fields) > 1 and fields[1] == "->"
        if len(fields) < 6 + waiting:
            continue
        kind, _, access, pid, where = fields[1 + waiting:6 + waiting]
        dev_ino = where.split(":")
        if access not in ("READ", "WRITE") or len(dev_ino) != 3:
            continue
        try:
            lock = Lock(kind, access == "WRITE", int(pid),
                        (int(dev_ino[0], 16), int(dev_ino[1], 16)), int(dev_ino[2]), waiting)
        except ValueError:
            continue
        locks.append(lock)
    return locks


def read(proc="/proc"):
    """The locks now in the kernel's table (proc: where procfs is mounted)."""
    with open(os.path.join(proc, "locks")) as f:
        return parse(f.read())


def flocks_on(locks, st):
    """The flock(2) locks on the file whose os.stat() result is st."""
    dev = (os.major(st.st_dev), os.minor(st.st_dev))
    return [lk for lk in locks if lk.kind == "FLOCK" and lk.ino == st.st_ino and lk.dev == dev]
