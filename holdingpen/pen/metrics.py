"""The pool's metrics for Prometheus, from a status snapshot: plain data in,
metric families out (common.openmetrics turns them into text).

The snapshot is the daemon's status reply, the shape of `holdingpen status
--json`, with two optional keys the daemon adds for its metrics file:

    {"ready": true,
     "pools": [{"name": "memory", "kind": "memory", "path": null, "size": 268435456,
                "count": 2, "held": 1, "lent": 1, "reserving": 0, "shortfall": null}],
     "loans": [{"kind": "memory", "user": "alice", "pid": 4242, "since": 1764770000.0,
                "protected": true, ...}],
     "started": 1764769000.0,                  # Unix time the daemon last started
     "counters": {"since": 1764769000.0,       # Unix time they were last 0
                  "borrows": {"memory": 3}, "returns": {"memory": 2},
                  "shortfalls": {"memory": 1},
                  "refusals": {"not-authorized": 1, "limited": 4}}}

Every pool is labelled `kind` with its name, as gatekeeper --kind and the
journal's HOLDINGPEN_KIND say it: "memory", "disk:/var/tmp".
"""

from holdingpen.common import openmetrics

FILE_NAME = "holdingpen.prom"
# Where Debian's prometheus-node-exporter reads *.prom files (its default
# --collector.textfile.directory).
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
STATES = ("held", "lent", "reserving", "missing")
COUNTERS = (  # (key in "counters", family name, label, help)
    ("borrows", "holdingpen_borrows", "kind", "Reservations lent to borrowers."),
    ("returns", "holdingpen_returns", "kind", "Loans ended, the reservation to be made again."),
    ("refusals", "holdingpen_refusals", "reason",
     "Requests refused, by the error code the client got (not-authorized, limited, pool-empty, ...)."),
    ("shortfalls", "holdingpen_shortfalls", "kind",
     "Reservations that could not be made (not enough memory or disk to spare)."),
)

# The daemon's events (events.py) that are counted, and the counter each adds to (by kind).
EVENT_COUNTERS = {"lent": "borrows", "returned": "returns", "shortfall": "shortfalls"}


def families(snapshot):
    """The metric families of a snapshot (see the module's docstring).

    Counters and the start time appear only when the snapshot has them.
    """
    pools = snapshot.get("pools", [])
    out = [
        openmetrics.gauge("holdingpen_ready", "1 once the pool was first filled and the daemon serves.",
                          [({}, bool(snapshot.get("ready")))]),
        openmetrics.gauge("holdingpen_pool_reservation_size_bytes", "The size of one reservation.",
                          [({"kind": p["name"]}, p["size"]) for p in pools], unit="bytes"),
        openmetrics.gauge("holdingpen_pool_reservations_configured",
                          "How many reservations the pool should hold (its count).",
                          [({"kind": p["name"]}, p["count"]) for p in pools]),
        openmetrics.gauge("holdingpen_pool_reservations",
                          "Reservations by state: held (ready to lend), lent, reserving (being made), "
                          "missing (to be made, after a shortfall); they add up to the configured count.",
                          [({"kind": p["name"], "state": state}, _in_state(p, state))
                           for p in pools for state in STATES]),
        openmetrics.gauge("holdingpen_pool_short",
                          "1 if the pool's last reservation failed for want of memory or disk, "
                          "until one succeeds.",
                          [({"kind": p["name"]}, p.get("shortfall") is not None) for p in pools]),
    ]
    loans = snapshot.get("loans", [])
    out.append(openmetrics.gauge(
        "holdingpen_loan_start_time_seconds", "When each loan out now was lent (Unix time).",
        [(_loan_labels(loan), loan["since"]) for loan in loans], unit="seconds"))
    protected = [loan for loan in loans if "protected" in loan]
    if protected:
        out.append(openmetrics.gauge(
            "holdingpen_loan_protected",
            "1 if the kernel protects the borrower's memory from reclaim for this loan.",
            [(_loan_labels(loan), bool(loan["protected"])) for loan in protected]))
    if "started" in snapshot:
        out.append(openmetrics.gauge("holdingpen_start_time_seconds",
                                     "When the daemon last started (Unix time).",
                                     [({}, snapshot["started"])], unit="seconds"))
    counters = snapshot.get("counters")
    if counters is not None:
        for key, name, label, help in COUNTERS:
            values = counters.get(key, {})
            out.append(openmetrics.counter(
                name, help, [({label: k}, v) for k, v in sorted(values.items())],
                created_s=counters["since"]))
    return out


class Counters:
    """What the daemon counts for its metrics: plain data, so that it can be
    kept where the daemon keeps its state (e.g. the descriptor store's state
    memfd, so counts survive a restart) and put in a status reply as it is.

    Args:
        since_s: Unix time the counts were last 0 (the daemon's first start).
        values: as_dict() of earlier counts, or None; anything malformed in
            it is dropped, not trusted.
    """

    def __init__(self, since_s, values=None):
        self.since_s = since_s
        self.values = {key: {} for key, *_ in COUNTERS}
        if isinstance(values, dict):
            if isinstance(values.get("since"), (int, float)):
                self.since_s = values["since"]
            for key in self.values:
                counts = values.get(key)
                for label, n in (counts.items() if isinstance(counts, dict) else ()):
                    if isinstance(label, str) and type(n) is int and n >= 0:
                        self.values[key][label] = n

    def count(self, key, label, n=1):
        """Add n to counter key ("borrows", "returns", "refusals", "shortfalls") for label.

        Raises:
            KeyError: key is not one of COUNTERS.
        """
        counts = self.values[key]
        counts[label] = counts.get(label, 0) + n

    def as_dict(self):
        """{"since": ..., "borrows": {kind: n}, ...}: the snapshot's "counters"."""
        return {"since": self.since_s, **{k: dict(v) for k, v in self.values.items()}}


def render(snapshot, openmetrics_format=True):
    """The snapshot's metrics as text: OpenMetrics, or else node_exporter's textfile format."""
    return openmetrics.render(families(snapshot), openmetrics=openmetrics_format)


def _in_state(pool, state):
    if state == "missing":
        return max(0, pool["count"] - pool["held"] - pool["lent"] - pool["reserving"])
    return pool[state]


def _loan_labels(loan):
    return {"kind": loan["kind"], "user": loan["user"], "pid": str(loan["pid"])}
