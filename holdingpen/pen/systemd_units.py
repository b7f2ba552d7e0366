"""systemd's units over D-Bus: read and set their properties in PID 1.

    GetUnit(unit) -> path; Properties.Get(path, interface, property)
    SetUnitProperties(unit, runtime=true, [(property, value)])

runtime: a change lives in /run/systemd/system.control and is gone at the
next boot. One long-lived system-bus connection, opened on first use and
again after a failure; every call waits at most timeout_s, so a hung systemd
costs a caller seconds, never forever.
"""

from holdingpen.pen.bus import SystemBus

_SYSTEMD = "org.freedesktop.systemd1"
_INTERFACE = {"slice": "Slice", "scope": "Scope", "service": "Service"}
_GONE = {"org.freedesktop.systemd1.NoSuchUnit", "org.freedesktop.systemd1.LoadFailed"}


class SystemdError(Exception):
    """systemd did not do what was asked; str() says why, naming the fix."""


class Gone(SystemdError):
    """The unit is not loaded (its session ended, say)."""


class NoAnswer(SystemdError):
    """systemd did not answer in time (or there is no system bus): stop asking for now."""


class SystemdUnits:
    """Get and set unit properties in PID 1 through one system-bus connection,
    opened on first use and again after a failure."""

    def __init__(self, timeout_s=2.0, open_bus=None):
        self.timeout_s = timeout_s
        self.bus = SystemBus(open_bus)

    def get(self, unit, properties):
        """{property: value} of a loaded unit.

        Raises:
            Gone, NoAnswer, SystemdError.
        """
        from jeepney import DBusAddress
        from jeepney.wrappers import Properties
        path = self._unit_path(unit)
        interface = f"{_SYSTEMD}.{_INTERFACE[unit.rsplit('.', 1)[1]]}"
        address = DBusAddress(path, bus_name=_SYSTEMD, interface=interface)
        values = {}
        for name in properties:
            (_signature, value), = self._call(Properties(address).get(name), unit)
            values[name] = value
        return values

    def job_type(self, unit):
        """The type of unit's pending job ("stop", "restart", ...), or None.

        Told SIGTERM, the daemon asks this of holdingpen.service: a "stop"
        ends every loan, a "restart" keeps them (the descriptor store).

        Raises:
            Gone, NoAnswer, SystemdError.
        """
        from jeepney import DBusAddress
        from jeepney.wrappers import Properties
        path = self._unit_path(unit)
        address = DBusAddress(path, bus_name=_SYSTEMD, interface=f"{_SYSTEMD}.Unit")
        (_signature, (job_id, job_path)), = self._call(Properties(address).get("Job"), unit)
        if job_id == 0:
            return None
        job = DBusAddress(job_path, bus_name=_SYSTEMD, interface=f"{_SYSTEMD}.Job")
        try:
            (_signature, job_type), = self._call(Properties(job).get("JobType"), unit)
        except SystemdError:
            return None             # the job finished meanwhile
        return job_type

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

    def _unit_path(self, unit):
        from jeepney import DBusAddress, new_method_call
        manager = DBusAddress("/org/freedesktop/systemd1", bus_name=_SYSTEMD,
                              interface=f"{_SYSTEMD}.Manager")
        path, = self._call(new_method_call(manager, "GetUnit", "s", (unit,)), unit)
        return path

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
        return self.bus.connection()

    def close(self):
        self.bus.close()
