"""One connection to the system bus, for polkit.py and systemd_units.py.

Opened when first needed and closed on trouble, so that the next call opens a
fresh one: a late answer on an old connection is never read as the next one's.
jeepney is imported only then, not when the daemon starts.
"""


class SystemBus:
    """Args:
        open_bus: opens a jeepney blocking connection (tests pass a stand-in);
            None opens the system bus.
        missing: makes the exception to raise where jeepney is not installed
            (None: the ImportError itself).
    """

    def __init__(self, open_bus=None, missing=None):
        self._open_bus, self._missing = open_bus, missing
        self._conn = None

    def connection(self):
        if self._conn is None:
            if self._open_bus is not None:
                self._conn = self._open_bus()
            else:
                try:
                    from jeepney.io.blocking import open_dbus_connection
                except ImportError:
                    if self._missing is None:
                        raise
                    raise self._missing() from None
                self._conn = open_dbus_connection(bus="SYSTEM")
        return self._conn

    def close(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None
