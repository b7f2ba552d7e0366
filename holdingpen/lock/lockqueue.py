"""The rules of perflock's fair queue, with no I/O in them.

Two rules make the readers/writer lock fair (perflock.py does the I/O):

1. Every job takes a ticket on arrival; tickets are numbered in arrival order.
2. A job may ask for the machine once every earlier ticket that conflicts with
   it is gone: an exclusive job conflicts with every earlier ticket, a shared
   job only with earlier exclusive ones. So shared jobs next to each other at
   the head run together, and a shared job that arrives behind a waiting
   exclusive one waits behind it: a stream of shared jobs cannot starve an
   exclusive one.

A ticket is a file in the queue directory named by its number and mode, e.g.
``0000000042.exclusive``, so ``ls`` shows the queue in order.
"""

EXCLUSIVE = "exclusive"
SHARED = "shared"
MODES = (EXCLUSIVE, SHARED)

HOLDING = "holding"
WAITING = "waiting"

_SEQ_DIGITS = 10


def ticket_name(seq, mode):
    """The file name of ticket number seq, e.g. ``0000000042.shared``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if seq < 1:
        raise ValueError(f"ticket numbers start at 1, not {seq}")
    return f"{seq:0{_SEQ_DIGITS}d}.{mode}"


def parse_ticket(name):
    """(seq, mode) for a ticket's file name, or None for any other name."""
    seq, dot, mode = name.partition(".")
    if not dot or mode not in MODES or not seq.isdigit() or not seq.isascii():
        return None
    seq = int(seq)
    return (seq, mode) if seq >= 1 else None


def next_seq(tickets):
    """The number for a new ticket: one past every ticket in the queue.

    Numbers may start again at 1 once the queue is empty; they never repeat
    while a lower-numbered ticket is still in the queue, which is all the
    order needs.
    """
    return max((seq for seq, _ in tickets), default=0) + 1


def conflicts(earlier_mode, mode):
    """Whether a job in `mode` must wait for an earlier ticket in `earlier_mode`."""
    return mode == EXCLUSIVE or earlier_mode == EXCLUSIVE


def blockers(tickets, seq, mode):
    """The earlier tickets a job with ticket (seq, mode) must wait for, oldest first."""
    return sorted(t for t in tickets if t[0] < seq and conflicts(t[1], mode))


def arrange(machine_locks, live_tickets):
    """Who holds the machine and who waits, in order.

    Args:
        machine_locks: (pid, mode, waiting) for each flock(2) on the lock file,
            in the kernel's order (a plain flock(1) user appears only here).
        live_tickets: (seq, mode, pid) for each ticket whose owner is alive.

    Returns:
        (pid, mode, state, seq or None) for holders first -- perflock jobs in
        ticket order, then plain flock(1) holders -- then waiters: those
        already asking for the lock file itself in the kernel's order, then
        the rest of the queue in ticket order.
    """
    # One row a lock, though the kernel may list it twice: /proc/locks comes a
    # page per read(2), and a table that changes between reads can repeat a line.
    machine_locks = list(dict.fromkeys(machine_locks))
    holder_pids = {pid for pid, _, waiting in machine_locks if not waiting}
    ticket_of = {pid: (seq, mode) for seq, mode, pid in live_tickets}
    queue = sorted(live_tickets)

    rows = [(pid, mode, HOLDING, seq) for seq, mode, pid in queue if pid in holder_pids]
    rows += [(pid, mode, HOLDING, None) for pid, mode, waiting in machine_locks
             if not waiting and pid not in ticket_of]
    at_lock = set()
    for pid, mode, waiting in machine_locks:
        if waiting and pid not in at_lock:
            at_lock.add(pid)
            seq, mode = ticket_of.get(pid, (None, mode))
            rows.append((pid, mode, WAITING, seq))
    rows += [(pid, mode, WAITING, seq) for seq, mode, pid in queue
             if pid not in holder_pids and pid not in at_lock]
    return rows
