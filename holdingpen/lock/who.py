"""Who holds the machine lock and who waits for it, in order.

Read, never written: the kernel's lock table (proclocks) says whose ticket is
alive and who holds or waits for the lock file itself, tickets say the rest
(perflock.py writes them). Works for any user and needs no privilege.
"""

import os
import pwd

from holdingpen.common.text import shell_words
from holdingpen.lock import lockqueue, proclocks
from holdingpen.lock.perflock import LockError, missing_lock_file, queue_dir


def survey(path, proc="/proc"):
    """Holders, then waiters in order, as dicts with the keys pid, user, mode
    (exclusive, shared), state (holding, waiting), since, command and message.

    `since` is Unix time: when a holder got the lock or a waiter arrived; for
    a plain flock(1) user, when its process started (all the kernel tells).

    Raises:
        LockError: the lock file does not exist.
    """
    try:
        lock_stat = os.stat(path)
    except FileNotFoundError:
        raise LockError(missing_lock_file(path)) from None
    locks = proclocks.read(proc)
    machine = [(lk.pid, lockqueue.EXCLUSIVE if lk.write else lockqueue.SHARED, lk.waiting)
               for lk in proclocks.flocks_on(locks, lock_stat)]
    tickets = _live_tickets(queue_dir(path), locks)
    live = [(seq, mode, pid) for (seq, mode), (pid, _) in tickets.items()]
    rows = []
    for pid, mode, state, seq in lockqueue.arrange(machine, live):
        if seq is None:
            row = _flock_user(pid, mode, state)
        else:
            row = _ticket_holder(pid, mode, state, tickets[seq, mode][1])
        if row is not None:
            rows.append(row)
    return rows


def _live_tickets(directory, locks):
    """{(seq, mode): (pid, ticket)} for tickets whose owner holds them."""
    try:
        dir_stat = os.stat(directory)
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    dev = (os.major(dir_stat.st_dev), os.minor(dir_stat.st_dev))
    owner_of = {lk.ino: lk.pid for lk in locks
                if lk.kind == "FLOCK" and lk.write and not lk.waiting and lk.dev == dev}
    live = {}
    for entry in entries:
        ticket = lockqueue.parse_ticket(entry.name)
        if ticket is None or entry.inode() not in owner_of:
            continue
        fields = _read_ticket(entry.path, entry.inode())
        if fields is not None:
            live[ticket] = (owner_of[entry.inode()], fields)
    return live


def _read_ticket(path, ino):
    """(uid, mtime, fields) of a ticket, or None if it went or is not one."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(1 << 20)
    except OSError:
        return None
    fields = [os.fsdecode(b) for b in data.split(b"\0")]
    if st.st_ino != ino or len(fields) < 4 or fields[0] != "1":
        return None
    return st.st_uid, st.st_mtime, fields


def _ticket_holder(pid, mode, state, ticket):
    uid, mtime, (_, _, enqueued_at, message, *command) = ticket
    try:
        since = mtime if state == lockqueue.HOLDING else float(enqueued_at)
    except ValueError:
        since = mtime
    return {"pid": pid, "user": _user_name(uid), "mode": mode, "state": state,
            "since": since, "command": shell_words(command), "message": message}


def _flock_user(pid, mode, state):
    """A plain flock(1) user, described from its process; None if it has gone."""
    import psutil
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            user = _user_name(process.uids().real)
            command = shell_words(process.cmdline()) or f"[{process.name()}]"
            since = process.create_time()
    except psutil.Error:
        return None
    return {"pid": pid, "user": user, "mode": mode, "state": state,
            "since": since, "command": command, "message": ""}


def _user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
