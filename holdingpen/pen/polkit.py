"""Asking polkitd whether a process may borrow, over one long-lived D-Bus connection.

    CheckAuthorization(("unix-process", {pid, start-time, uid}), "org.holdingpen.borrow", {}, 0, "")

The subject's pid and uid come from the kernel (SO_PEERCRED) and its
start-time from /proc for that very process: polkit trusts a uid handed to it
by a trusted caller, so nothing a client says ever reaches the subject. Flags
0: never start an interactive authentication; a borrow must not wait on a
password prompt.
"""

from holdingpen.pen.bus import SystemBus

ACTION_ID = "org.holdingpen.borrow"
_NO_POLKIT = {
    "org.freedesktop.DBus.Error.ServiceUnknown",      # polkitd not installed
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.Spawn.ServiceNotFound",
    "org.freedesktop.systemd1.UnitMasked",            # polkit.service masked by the admin
    "org.freedesktop.systemd1.NoSuchUnit",
}


class Unavailable(Exception):
    """polkitd cannot be asked (no system bus, or no polkit on it)."""


class NoAnswer(Exception):
    """polkitd is there but did not answer in time."""


NO_JEEPNEY = ("polkit cannot be asked: the D-Bus library jeepney is missing; "
              "install it with: apt install python3-jeepney")


def _jeepney():
    """The parts of jeepney we use; Unavailable (the "no polkit" outcome) if it is missing."""
    try:
        import jeepney
        import jeepney.io.blocking
        import jeepney.wrappers
    except ImportError:
        raise Unavailable(NO_JEEPNEY) from None
    return jeepney


class Polkit:
    """CheckAuthorization through a system-bus connection opened on first use."""

    def __init__(self, timeout_s=2.0, open_bus=None):
        self.timeout_s = timeout_s
        self.bus = SystemBus(open_bus, missing=lambda: Unavailable(NO_JEEPNEY))

    def allowed(self, pid, start_time, uid, action_id=ACTION_ID):
        """polkit's answer for the process (pid, start_time) of uid.

        Raises:
            Unavailable: polkitd cannot be asked (jeepney missing included).
            NoAnswer: polkitd did not answer within timeout_s.
        """
        jeepney = _jeepney()
        authority = jeepney.DBusAddress("/org/freedesktop/PolicyKit1/Authority",
                                bus_name="org.freedesktop.PolicyKit1",
                                interface="org.freedesktop.PolicyKit1.Authority")
        subject = ("unix-process", {"pid": ("u", pid), "start-time": ("t", start_time),
                                    "uid": ("i", uid)})
        message = jeepney.new_method_call(authority, "CheckAuthorization", "(sa{sv})sa{ss}us",
                                  (subject, action_id, {}, 0, ""))
        for attempt in (1, 2):      # once more on a fresh connection if polkitd restarted
            try:
                conn = self._connection()
                reply = jeepney.wrappers.unwrap_msg(
                    conn.send_and_get_reply(message, timeout=self.timeout_s))
                (is_authorized, _challenge, _details), = reply
                return bool(is_authorized)
            except jeepney.DBusErrorResponse as e:
                if e.name in _NO_POLKIT:
                    raise Unavailable(f"polkit is not running ({e.name})") from None
                raise Unavailable(f"polkit refused the question: {e.name}: {e.data}") from None
            except TimeoutError:
                self.close()       # a late answer must not be read as the next one's
                raise NoAnswer(f"polkit did not answer within {self.timeout_s:g} s") from None
            except (OSError, EOFError, ConnectionError) as e:
                self.close()
                if attempt == 2:
                    raise Unavailable(f"cannot reach polkit on the system bus: {e}") from None

    def warm_up(self):
        """Connect now, if we can, so that the first borrow does not wait for it.

        Never raises: whatever is wrong, the first allowed() meets it again and says so.
        """
        try:
            self._connection()
        except (Unavailable, OSError, EOFError, ConnectionError, TimeoutError, ValueError,
                KeyError):
            self.close()

    def _connection(self):
        return self.bus.connection()

    def close(self):
        self.bus.close()

