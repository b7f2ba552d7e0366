"""Protected loans, the shell: systemd keeps the borrowers' memory protected.

protection.py decides what each unit's settings should be; this module reads
and sets them in PID 1 over one long-lived system-bus connection:

    SetUnitProperties(unit, runtime=true, [("MemoryMin", t), ("ManagedOOMPreference", s)])

runtime: the change lives in /run/systemd/system.control and is gone at the
next boot, as are the loans. polkit allows it to the user holdingpen for
the units of protection.PROTECTABLE only (polkit/60-holdingpen-protect.rules).

Every call may wait for systemd: call Protection from a thread of its own,
never the daemon's loop. A try on the command line, as the daemon's user:

    runuser -u holdingpen -- python3 -c 'from holdingpen.pen.protect import *
    print(Protection(SystemdUnits()).reconcile([Borrower("x", chain_of_pid(PID), 1 << 30)]))'
"""

from collections import namedtuple
from pathlib import Path

from .protection import (Borrower, NotProtectable, cgroup_path, chain_of, plan,
                         properties_of, units_without_base, wanted_settings)

# What the daemon needs, all from here.
__all__ = ["Borrower", "NotProtectable", "Protection", "Result", "SystemdUnits", "SystemdError",
           "chain_of_pid", "unavailable_reason"]

_SYSTEMD = "org.freedesktop.systemd1"
_INTERFACE = {"slice": "Slice", "scope": "Scope", "service": "Service"}
_GONE = {"org.freedesktop.systemd1.NoSuchUnit", "org.freedesktop.systemd1.LoadFailed"}

Result = namedtuple("Result", "unprotected errors")
Result.__doc__ = """What reconcile() could not do: unprotected is {loan key: why} for loans
whose memory is not protected; errors lists settings that could not be put back."""


class SystemdError(Exception):
    """systemd did not do what was asked; str() says why, naming the fix."""


class Gone(SystemdError):
    """The unit is not loaded (its session ended, say)."""


class NoAnswer(SystemdError):
    """systemd did not answer in time (or there is no system bus): stop asking for now."""


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


class SystemdUnits:
    """Get and set unit properties in PID 1 through one system-bus connection,
    opened on first use and again after a failure."""

    def __init__(self, timeout_s=2.0, open_bus=None):
        self.timeout_s = timeout_s
        self._open_bus = open_bus
        self._conn = None

    def get(self, unit, properties):
        """{property: value} of a loaded unit.

        Raises:
            Gone, NoAnswer, SystemdError.
        """
        from jeepney import DBusAddress, new_method_call
        from jeepney.wrappers import Properties
        manager = DBusAddress("/org/freedesktop/systemd1", bus_name=_SYSTEMD,
                              interface=f"{_SYSTEMD}.Manager")
        path, = self._call(new_method_call(manager, "GetUnit", "s", (unit,)), unit)
        interface = f"{_SYSTEMD}.{_INTERFACE[unit.rsplit('.', 1)[1]]}"
        address = DBusAddress(path, bus_name=_SYSTEMD, interface=interface)
        values = {}
        for name in properties:
            (_signature, value), = self._call(Properties(address).get(name), unit)
            values[name] = value
        return values

    def set(self, unit, settings):
        """Set {property: value} on unit, until the next boot.

        Raises:
            Gone, NoAnswer, SystemdError (polkit said no, or a bad value).
        """
        from jeepney import DBusAddress, new_method_call
        manager = DBusAddress("/org/freedesktop/systemd1", bus_name=_SYSTEMD,
                              interface=f"{_SYSTEMD}.Manager")
        properties = [(name, ("t" if isinstance(value, int) else "s", value))
                      for name, value in settings.items()]
        self._call(new_method_call(manager, "SetUnitProperties", "sba(sv)",
                                   (unit, True, properties)), unit)

    def _call(self, message, unit):
        from jeepney import DBusErrorResponse
        from jeepney.wrappers import unwrap_msg
        for attempt in (1, 2):      # once more on a fresh connection if the bus went away
            try:
                return unwrap_msg(self._connection().send_and_get_reply(
                    message, timeout=self.timeout_s))
            except DBusErrorResponse as e:
                if e.name in _GONE:
                    raise Gone(f"{unit} is not loaded") from None
                if e.name in ("org.freedesktop.DBus.Error.InteractiveAuthorizationRequired",
                              "org.freedesktop.DBus.Error.AccessDenied"):
                    raise SystemdError(f"polkit does not let us change {unit}: is "
                                       "60-holdingpen-protect.rules installed?") from None
                raise SystemdError(f"systemd refused {unit}: {e.name}: {e.data}") from None
            except TimeoutError:
                self.close()        # a late answer must not be read as the next one's
                raise NoAnswer(f"systemd did not answer within {self.timeout_s:g} s") from None
            except (OSError, EOFError, ConnectionError, ValueError, KeyError) as e:
                self.close()
                if attempt == 2:
                    raise NoAnswer(f"cannot reach systemd on the system bus: {e}") from None

    def _connection(self):
        if self._conn is None:
            if self._open_bus is not None:
                self._conn = self._open_bus()
            else:
                from jeepney.io.blocking import open_dbus_connection
                self._conn = open_dbus_connection(bus="SYSTEM")
        return self._conn

    def close(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None


class Protection:
    """Keeps systemd's unit settings matching the live loans.

    Call from one thread, not the daemon's loop: each call may wait on systemd
    (at most about units.timeout_s: after one timeout it stops asking until
    the next call).

    Args:
        units: a SystemdUnits (or anything with get() and set()).
        bases: what `bases` was when the last daemon stopped (its state), or None.
    """

    def __init__(self, units, bases=None):
        self.units = units
        self.bases = {unit: dict(base) for unit, base in (bases or {}).items()}
        self._applied = {}     # what we last set, so that an unchanged unit is not set again

    def reconcile(self, borrowers):
        """Make systemd match `borrowers` (every live memory loan): protect what is
        not yet, put back what no loan needs any more. Returns a Result.

        After a restart call it with every adopted loan: what ended while no
        daemon ran is put back, what is missing is set again.
        """
        unprotected, errors = {}, []
        borrowers = list(borrowers)
        try:
            self._read_bases(borrowers, unprotected)
            wanted = wanted_settings(borrowers)
            changes, kept = plan(wanted, self.bases)
            for unit, settings in changes:
                if self._applied.get(unit) == settings:
                    continue
                try:
                    self.units.set(unit, settings)
                    self._applied[unit] = settings
                except NoAnswer:
                    raise
                except SystemdError as e:   # Gone too: nothing left there to put back
                    if isinstance(e, Gone) and unit not in wanted:
                        self._applied.pop(unit, None)
                        continue
                    for borrower in borrowers:
                        if unit in borrower.chain:
                            unprotected[borrower.key] = str(e)
                    if unit not in wanted:
                        errors.append(f"{unit}: {e}")
                        kept[unit] = self.bases[unit]    # try again next time
                        continue
                if unit not in wanted:
                    self._applied.pop(unit, None)
            self.bases = kept
        except NoAnswer as e:
            self._applied.clear()           # unknown now what took effect
            for borrower in borrowers:
                unprotected.setdefault(borrower.key, str(e))
            errors.append(str(e))
        return Result(unprotected, errors)

    def _read_bases(self, borrowers, unprotected):
        """Read the bases of units touched for the first time; drop from
        borrowers (in place) those whose units cannot be read."""
        for unit in units_without_base(wanted_settings(borrowers), self.bases):
            try:
                self.bases[unit] = self.units.get(unit, properties_of(unit))
            except NoAnswer:
                raise
            except SystemdError as e:
                for borrower in [b for b in borrowers if unit in b.chain]:
                    unprotected[borrower.key] = str(e)
                    borrowers.remove(borrower)

    def close(self):
        self.units.close()
