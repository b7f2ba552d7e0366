"""Who may borrow: one step every borrow passes, with the kernel's word for who asks.

1. root may always borrow (polkit does not ask its rules about uid 0 either).
2. polkit decides: the action org.holdingpen.borrow allows the user of the
   active local session (the console, a seat), never a remote session, and
   the shipped rule adds the members of the group "holdingpen".
3. Without polkitd (a server with none), the allow-list of the configuration
   decides ([authorize] users and groups), and the journal says so once. An
   empty list allows no one but root: never everyone by accident.

The process asked about is the one connected: its pid and uid come from
SO_PEERCRED, its start time from /proc, and its pidfd (taken at accept) must
still be alive after the answer, or the pid may have gone to someone else.
"""

import grp
import pwd

from holdingpen.pen import polkit

NO_ANSWER_PAUSE_S = 5.0   # after polkit fails to answer, refuse at once for this long

WHO_MAY = ("only the user at the console (an active local session) or members of the "
           "group holdingpen may borrow")


class Authorizer:
    """authorize(peer, pool_name) -> (allowed, why not)."""

    def __init__(self, check=None, users=(), groups=(), events=None, source="the configuration",
                 clock=None):
        import time
        self.clock = clock or time.monotonic
        self.silent_until = 0.0
        self.silence = ""
        self.polkit = polkit.Polkit() if check is None else check
        self.users, self.groups = set(users), set(groups)
        self.events = events
        self.source = source
        self.said_no_polkit = False

    def warm_up(self):
        warm_up = getattr(self.polkit, "warm_up", None)
        if warm_up is not None:
            warm_up()

    def configure(self, users, groups, source):
        self.users, self.groups, self.source = set(users), set(groups), source

    def __call__(self, peer, pool_name):
        if peer.uid == 0:
            return True, ""
        if not peer.alive():
            return False, "the client went away before it could be checked"
        now = self.clock()
        if now < self.silent_until:      # it just failed to answer: do not queue behind it
            return False, f"{self.silence}; try again"
        try:
            allowed = self.polkit.allowed(peer.pid, peer.start_time, peer.uid)
        except polkit.Unavailable as e:
            return self._allow_list(peer, str(e))
        except polkit.NoAnswer as e:
            self.silence, self.silent_until = str(e), self.clock() + NO_ANSWER_PAUSE_S
            return False, f"{e}; try again"
        if not peer.alive():        # its pid may now be another process's
            return False, "the client went away while it was being checked"
        return (True, "") if allowed else (False, WHO_MAY)

    def _allow_list(self, peer, problem):
        if not self.said_no_polkit and self.events is not None:
            self.events("no-polkit", f"{problem}; deciding by the allow-list in {self.source} "
                        f"([authorize] users: {sorted(self.users) or 'none'}, "
                        f"groups: {sorted(self.groups) or 'none'})")
        self.said_no_polkit = True
        if peer.user in self.users or self._in_groups(peer):
            return True, ""
        return False, (f"polkit is not running here, and only the users and groups in "
                       f"[authorize] of {self.source} may borrow")

    def _in_groups(self, peer):
        for name in self.groups:
            try:
                group = grp.getgrnam(name)
            except KeyError:
                continue
            if peer.gid == group.gr_gid or peer.user in group.gr_mem:
                return True
            try:
                if pwd.getpwuid(peer.uid).pw_gid == group.gr_gid:
                    return True
            except KeyError:
                pass
        return False
