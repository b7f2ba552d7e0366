"""Per-user limits, so one user cannot exhaust the daemon's descriptors or the pool.

A token bucket per uid for borrows (a burst, then so many a second), and a
count of open connections per uid. The clock is passed in: tests drive it.
"""


class Limits:
    def __init__(self, connections_per_user, borrows_per_second, burst):
        self.configure(connections_per_user, borrows_per_second, burst)
        self.connections = {}      # uid -> open connections
        self.buckets = {}          # uid -> (tokens, at)

    @classmethod
    def of(cls, limits):
        """Limits from a configuration's [limits] table (config.Config.limits)."""
        return cls(limits["connections_per_user"], limits["borrows_per_second"],
                   limits["borrow_burst"])

    def configure(self, connections_per_user, borrows_per_second, burst):
        """New limits (a reload); what is open and spent stays counted."""
        self.max_connections = connections_per_user
        self.rate = borrows_per_second
        self.burst = burst

    def connect(self, uid):
        """Count a new connection; False if uid already has the most it may."""
        if uid == 0:
            return True            # root is the administrator, and systemd's tools
        open_now = self.connections.get(uid, 0)
        if open_now >= self.max_connections:
            return False
        self.connections[uid] = open_now + 1
        return True

    def disconnect(self, uid):
        if uid == 0 or uid not in self.connections:
            return
        self.connections[uid] -= 1
        if not self.connections[uid]:
            del self.connections[uid]

    def borrow(self, uid, now):
        """Take a token for a borrow at time now (seconds); False if none is left."""
        if uid == 0:
            return True
        tokens, at = self.buckets.get(uid, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1:
            self.buckets[uid] = (tokens, now)
            return False
        self.buckets[uid] = (tokens - 1, now)
        return True
