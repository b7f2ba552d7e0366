"""Protected loans, the shell: systemd keeps the borrowers' memory protected.

protection.py decides what each unit's settings should be; Protection reads
and sets them through systemd_units.py, and remembers in a file what it must
put back (the "bases"). The file is in /run (RuntimeDirectory=, preserved
across stop and restart), so it lasts exactly as long as the runtime settings
it undoes: until the next boot. polkit allows the settings to the user
holdingpen for the units of protection.PROTECTABLE only
(polkit/60-holdingpen-protect.rules).

Every reconcile() may wait on systemd: the daemon runs it on a thread of its
own (ProtectionWorker), never on its loop. A try by hand, as the daemon's user:

    runuser -u holdingpen -- python3 -c 'from holdingpen.pen.protect import *
    p = Protection(SystemdUnits(), "/run/holdingpen/protection.json")
    print(p.reconcile([Borrower("x", chain_of_pid(PID), 1 << 30)]))'
"""

import json
import os
import threading
from collections import namedtuple
from pathlib import Path

from .protection import (Borrower, NotProtectable, borrowers_of, cgroup_path, chain_of, plan,
                         properties_of, units_without_base, wanted_settings)
from .systemd_units import Gone, NoAnswer, SystemdError, SystemdUnits

# What the daemon needs, all from here.
__all__ = ["Borrower", "NotProtectable", "Protection", "ProtectionWorker", "Result",
           "SystemdUnits", "SystemdError", "borrowers_of", "chain_of_pid", "unavailable_reason"]

STATE_PATH = "/run/holdingpen/protection.json"

Result = namedtuple("Result", "unprotected errors")
Result.__doc__ = """What reconcile() could not do: unprotected is {loan key: why} for loans
whose memory is not protected; errors lists settings that could not be put back."""


def unavailable_reason(cgroup_root="/sys/fs/cgroup"):
    """Why memory cannot be protected on this machine, or None if it can.

    Args:
        cgroup_root: where cgroup v2 would be mounted (a test passes a fake directory).
    """
    try:
        controllers = (Path(cgroup_root) / "cgroup.controllers").read_text().split()
    except OSError:
        return (f"{cgroup_root} is not a cgroup v2 hierarchy (cgroup v1 or hybrid: memory is "
                "v1); boot with systemd.unified_cgroup_hierarchy=1 to protect borrowers' memory")
    if "memory" not in controllers:
        return (f"the cgroup v2 hierarchy at {cgroup_root} has no memory controller "
                "(is cgroup_disable=memory on the kernel command line?)")
    return None


def chain_of_pid(pid, proc="/proc"):
    """The units holding process pid, outermost first (protection.chain_of).

    Raises:
        NotProtectable: it is gone, or in no unit we may protect.
    """
    try:
        text = (Path(proc) / str(pid) / "cgroup").read_text()
    except OSError:
        raise NotProtectable(f"process {pid} is gone") from None
    return chain_of(cgroup_path(text))


class Protection:
    """Keeps systemd's unit settings matching the live loans.

    Call from one thread, not the daemon's loop: each call may wait on systemd
    (at most about units.timeout_s: after one timeout it stops asking until
    the next call).

    Args:
        units: a SystemdUnits (or anything with get(), set() and close()).
        state_path: where the bases are kept between daemons (STATE_PATH), or
            None to keep them only in memory (bases=).
        bases: the bases to start from when state_path is None.
    """

    def __init__(self, units, state_path=None, bases=None):
        self.units = units
        self.state_path = state_path
        self.load_error = None       # why the saved bases could not be read, if so
        if state_path is not None:
            bases, self.load_error = load_bases(state_path)
        self.bases = {unit: dict(base) for unit, base in (bases or {}).items()}
        self._applied = {}     # what we last set, so that an unchanged unit is not set again

    def reconcile(self, borrowers):
        """Make systemd match `borrowers` (every live memory loan): protect what is
        not yet, put back what no loan needs any more. Returns a Result.

        After a restart call it with every adopted loan: what ended while no
        daemon ran is put back, what is missing is set again.
        """
        unprotected, errors = {}, []
        if self.load_error:
            errors.append(self.load_error)
            self.load_error = None
        borrowers = list(borrowers)
        try:
            if self._read_bases(borrowers, unprotected):
                # Kept before anything is raised: a daemon killed in between must not
                # take our setting for the administrator's.
                self._save(errors)
            wanted = wanted_settings(borrowers)
            changes, kept = plan(wanted, self.bases)
            for unit, settings in changes:
                problem = self._set(unit, settings, putting_back=unit not in wanted)
                if problem is None:
                    continue
                if unit in wanted:
                    for borrower in borrowers:
                        if unit in borrower.chain:
                            unprotected[borrower.key] = problem
                else:
                    errors.append(f"{unit}: {problem}")
                    kept[unit] = self.bases[unit]    # put back next time
            self.bases = kept
        except NoAnswer as e:
            self._applied.clear()           # unknown now what took effect
            for borrower in borrowers:
                unprotected.setdefault(borrower.key, str(e))
            errors.append(str(e))
        self._save(errors)
        return Result(unprotected, errors)

    def _set(self, unit, settings, putting_back):
        """Set unit's settings unless they are set already; None, or why not.

        Raises:
            NoAnswer: stop asking for now.
        """
        if self._applied.get(unit) == settings:
            return None
        try:
            self.units.set(unit, settings)
        except Gone as e:
            self._applied.pop(unit, None)
            return None if putting_back else str(e)   # gone: nothing left to put back
        except NoAnswer:
            raise
        except SystemdError as e:
            return str(e)
        if putting_back:
            self._applied.pop(unit, None)
        else:
            self._applied[unit] = settings
        return None

    def _save(self, errors):
        if self.state_path is not None:
            try:
                save_bases(self.state_path, self.bases)
            except OSError as e:
                errors.append(f"cannot keep what to put back in {self.state_path}: {e} "
                              "(is RuntimeDirectory=holdingpen in holdingpen.service?)")

    def _read_bases(self, borrowers, unprotected):
        """Read the bases of units touched for the first time; drop from
        borrowers (in place) those whose units cannot be read. Returns whether
        any base was read."""
        read = False
        for unit in units_without_base(wanted_settings(borrowers), self.bases):
            try:
                self.bases[unit] = self.units.get(unit, properties_of(unit))
                read = True
            except NoAnswer:
                raise
            except SystemdError as e:
                for borrower in [b for b in borrowers if unit in b.chain]:
                    unprotected[borrower.key] = str(e)
                    borrowers.remove(borrower)
        return read

    def close(self):
        self.units.close()


def load_bases(path):
    """(bases, None) as save_bases() left them, ({}, None) if there is no file
    (nothing touched since boot), or ({}, why) if it cannot be read."""
    try:
        bases = json.loads(Path(path).read_text())
        if not isinstance(bases, dict) or not all(isinstance(b, dict) for b in bases.values()):
            raise ValueError("not an object of objects")
        return bases, None
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as e:
        return {}, (f"cannot read {path} ({e}): settings the last daemon changed stay "
                    "until the next boot")


def save_bases(path, bases):
    """Write bases to path, whole or not at all (a crash leaves the old file).

    Raises:
        OSError
    """
    temporary = f"{path}.new"
    with open(temporary, "w") as f:
        json.dump(bases, f, sort_keys=True)
    os.replace(temporary, path)


class ProtectionWorker:
    """Protection.reconcile() on a thread of its own, for the daemon's loop.

    want() never waits: it replaces what the thread is to do next, so when
    loans change faster than systemd answers, only the latest state is
    applied (reconcile works from the whole state, never from deltas).
    done(generation, result) is called on the worker's thread after each
    reconcile; the daemon passes one that queues it and wakes its loop. A
    loan waiting to be protected is done once a result with a generation at
    or past the one its want() had arrives.
    """

    def __init__(self, protection, done):
        self.protection = protection
        self.done = done
        self._cond = threading.Condition()
        self._next = None            # (generation, borrowers) not yet begun
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="protect", daemon=True)

    def start(self):
        self._thread.start()

    def want(self, generation, borrowers):
        """Ask for systemd to match borrowers (every live memory loan)."""
        with self._cond:
            self._next = (generation, list(borrowers))
            self._cond.notify()

    def stop(self, timeout_s=5.0):
        """Finish what was wanted last (within timeout_s), then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout_s)

    def _run(self):
        while True:
            with self._cond:
                while self._next is None and not self._stopping:
                    self._cond.wait()
                if self._next is None:
                    break
                (generation, borrowers), self._next = self._next, None
            try:
                result = self.protection.reconcile(borrowers)
            except Exception as e:    # a bug here must cost protection, not the daemon
                result = Result({b.key: f"protection failed: {e}" for b in borrowers},
                                [f"protection failed: {e}"])
            self.done(generation, result)
        self.protection.close()
