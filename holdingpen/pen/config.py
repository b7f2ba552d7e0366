"""The daemon's configuration: /etc/holdingpen/holdingpen.toml.

    [memory]
    size = "2G"          # one reservation; a bare integer is bytes; K, M, G, T are binary
    count = 2

    [[disk]]
    path = "/var/tmp"    # reserve space on the filesystem holding this directory
    size = "10G"
    count = 1

    [limits]
    request_timeout_s = 10   # a client that says nothing for this long is dropped
    connections_per_user = 32
    borrows_per_second = 5   # per user, after a burst of
    borrow_burst = 10

    [authorize]              # only where polkit is not running
    users = ["alice"]
    groups = ["staff"]

    [metrics]
    textfile_dir = "/var/lib/holdingpen"   # where holdingpen.prom goes; "" for none

Without a file: one memory reservation of 256 MiB and no disk reservation,
safe on any machine (the daemon also never reserves memory the machine
cannot spare). Every error names the file, the key and what is wrong.

parse() reads the text alone; load() also looks at the file system: a
[[disk]] path must be an existing directory. last_good() is what the daemon
runs on when the file has gone bad while it holds reservations or loans.
"""

import errno
import os
import tomllib

from holdingpen.pen.sizes import parse_size

DEFAULT_PATH = "/etc/holdingpen/holdingpen.toml"
DEFAULT_MEMORY_SIZE = "256M"
DEFAULT_MEMORY_COUNT = 1
MAX_COUNT = 1024      # each reservation is a descriptor in the daemon and in systemd's store
MEMORY = "memory"
DISK = "disk"
LIMITS = "limits"
AUTHORIZE = "authorize"
METRICS = "metrics"
# The daemon's own state directory (StateDirectory= in its unit), which it may
# write; node_exporter reads holdingpen.prom there through a link in its own
# textfile directory, which the daemon may not write.
DEFAULT_TEXTFILE_DIR = "/var/lib/holdingpen"
# [limits]: name -> (lowest, highest, type), and the defaults.
LIMIT_RANGES = {
    "request_timeout_s": (0.001, 3600, float),   # a client that says nothing is dropped
    "connections_per_user": (1, 65536, int),     # open at once, per uid (root: no limit)
    "borrows_per_second": (0.001, 10000, float), # per uid, after a burst of ...
    "borrow_burst": (1, 10000, int),
}
DEFAULT_LIMITS = {"request_timeout_s": 10.0, "connections_per_user": 32,
                  "borrows_per_second": 5.0, "borrow_burst": 10}


class ConfigError(Exception):
    """One line: the file, the key and what is wrong."""


class PoolSpec:
    """What one pool holds: count reservations of size_bytes of a kind."""

    __slots__ = ("kind", "path", "size_bytes", "count")

    def __init__(self, kind, size_bytes, count, path=None):
        self.kind, self.size_bytes, self.count, self.path = kind, size_bytes, count, path

    @property
    def name(self):
        """How clients and people name the pool: "memory" or "disk:/var/tmp"."""
        return self.kind if self.path is None else f"{self.kind}:{self.path}"

    def __eq__(self, other):
        return isinstance(other, PoolSpec) and all(
            getattr(self, a) == getattr(other, a) for a in self.__slots__)

    def __repr__(self):
        return f"PoolSpec({self.name}, {self.size_bytes}, {self.count})"


class Config:
    """The pools to keep, memory first, then each disk in file order; and the limits."""

    def __init__(self, pools, source, limits=None, authorize=None, text="",
                 textfile_dir=DEFAULT_TEXTFILE_DIR):
        self.pools = pools
        self.source = source
        self.text = text       # the file as read: the daemon keeps it as its last good one
        self.limits = dict(DEFAULT_LIMITS) if limits is None else limits
        # Who may borrow when polkit is not running: nobody but root by default.
        self.authorize = authorize or {"users": (), "groups": ()}
        self.textfile_dir = textfile_dir     # where the metrics file goes; "" for none


def load(path=None):
    """The configuration in path (default DEFAULT_PATH; a missing default file means defaults).

    Raises:
        ConfigError: the file cannot be read or says something wrong.
    """
    explicit = path is not None
    path = path or DEFAULT_PATH
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: no such file") from None
        return parse(b"", "(defaults)")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror}") from None
    cfg = parse(data, path)
    check_directories(cfg, os.stat)
    return cfg


def last_good(kept):
    """The Config the last run kept in systemd's store ({"source", "text"}), or None.

    Its directories are not checked again: one gone since only leaves its pool short.
    """
    try:
        return parse(kept["text"].encode(), kept["source"])
    except (ConfigError, KeyError, TypeError, AttributeError):
        return None


def check_directories(cfg, stat):
    """Every [[disk]] path is a directory that exists, as stat (os.stat) says.

    Raises:
        ConfigError: the first that is not, with the key and the fix.
    """
    import stat as modes
    disks = [p for p in cfg.pools if p.kind == DISK]
    for i, pool in enumerate(disks):
        where = f"{cfg.source}: disk[{i}].path"
        try:
            st = stat(pool.path)
        except FileNotFoundError:
            raise ConfigError(f"{where}: {_show(pool.path)} does not exist; create the directory "
                              "or name one that exists") from None
        except OSError as e:
            raise ConfigError(f"{where}: cannot look at {_show(pool.path)}: {e.strerror}") from None
        if not modes.S_ISDIR(st.st_mode):
            raise ConfigError(f"{where}: {_show(pool.path)} is not a directory; name the "
                              "directory whose filesystem should hold the reservations")


def cannot_reserve_in(directory, error):
    """The one line for a disk pool's directory where no file can be made, naming the fix.

    The service sees the file system read-only but for /tmp and /var/tmp, so a
    pool elsewhere fails with EROFS until a drop-in makes its directory writable.
    """
    problem = f"cannot reserve space in {directory}: {error.strerror}"
    if error.errno == errno.EROFS:
        return (f"{problem}; to let the service write there, add a drop-in "
                f"(systemctl edit holdingpen) with [Service] ReadWritePaths={directory}, "
                "then systemctl restart holdingpen")
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"{problem}; let the user holdingpen write to {directory}"
    return problem


def parse(data, source):
    """A Config from the bytes of a TOML file; source names it in errors."""
    try:
        doc = tomllib.loads(data.decode())
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    _only(doc, {MEMORY, DISK, LIMITS, AUTHORIZE, METRICS}, source, "")
    memory = doc.get(MEMORY, {})
    if not isinstance(memory, dict):
        raise ConfigError(f"{source}: memory: expected a table ([memory])")
    pools = [_pool(memory, MEMORY, None, source, "memory",
                   default_size=DEFAULT_MEMORY_SIZE, default_count=DEFAULT_MEMORY_COUNT)]
    disks = doc.get(DISK, [])
    if not isinstance(disks, list) or not all(isinstance(d, dict) for d in disks):
        raise ConfigError(f"{source}: disk: expected tables ([[disk]])")
    seen = set()
    for i, disk in enumerate(disks):
        key = f"disk[{i}]"
        path = disk.get("path")
        # A NUL would reach os.stat() and os.open() as ValueError, not OSError.
        if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
            raise ConfigError(f"{source}: {key}.path: expected an absolute directory path, not {path!r}")
        path = normal_path(path)
        if path in seen:
            raise ConfigError(f"{source}: {key}.path: {_show(path)} is listed twice")
        seen.add(path)
        pools.append(_pool(disk, DISK, path, source, key, default_size=None, default_count=1))
    return Config(pools, source, _limits(doc.get(LIMITS, {}), source),
                  _authorize(doc.get(AUTHORIZE, {}), source), data.decode(),
                  _textfile_dir(doc.get(METRICS, {}), source))


def normal_path(path):
    """The one spelling of an absolute directory path in pool names ("disk:/var/tmp").

    normpath keeps a leading "//" (POSIX leaves it open); on Linux it is "/".
    """
    return "/" + os.path.normpath(path).lstrip("/")


def _limits(table, source):
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: limits: expected a table ([limits])")
    _only(table, set(LIMIT_RANGES), source, "limits.")
    limits = dict(DEFAULT_LIMITS)
    for name, value in table.items():
        low, high, kind = LIMIT_RANGES[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high \
                or (kind is int and value != int(value)):
            what = ("a whole number" if kind is int else
                    "seconds" if name.endswith("_s") else "a number")
            raise ConfigError(f"{source}: limits.{name}: expected {what} from {low:g} to {high:g}, "
                              f"not {value!r}")
        limits[name] = kind(value)
    return limits


def _authorize(table, source):
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: authorize: expected a table ([authorize])")
    _only(table, {"users", "groups"}, source, "authorize.")
    lists = {}
    for key in ("users", "groups"):
        names = table.get(key, [])
        if not isinstance(names, list) or not all(isinstance(n, str) and n and n.isprintable()
                                                  for n in names):
            raise ConfigError(f"{source}: authorize.{key}: expected a list of names, "
                              f"e.g. [\"alice\"], not {names!r}")
        lists[key] = tuple(names)
    return lists


def _textfile_dir(table, source):
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: metrics: expected a table ([metrics])")
    _only(table, {"textfile_dir"}, source, "metrics.")
    path = table.get("textfile_dir", DEFAULT_TEXTFILE_DIR)
    if not isinstance(path, str) or "\0" in path or (path and not os.path.isabs(path)):
        raise ConfigError(f"{source}: metrics.textfile_dir: expected an absolute directory path, "
                          f"or \"\" for no metrics file, not {path!r}")
    return path


def _pool(table, kind, path, source, key, default_size, default_count):
    _only(table, {"size", "count"} | ({"path"} if kind == DISK else set()), source, key + ".")
    if "size" not in table and default_size is None:
        raise ConfigError(f"{source}: {key}.size: missing; say how much to reserve, e.g. size = \"10G\"")
    try:
        size_bytes = parse_size(table.get("size", default_size))
    except ValueError as e:
        raise ConfigError(f"{source}: {key}.size: {e}") from None
    count = table.get("count", default_count)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
        raise ConfigError(f"{source}: {key}.count: expected a whole number from 0 to {MAX_COUNT}, "
                          f"not {count!r}")
    return PoolSpec(kind, size_bytes, count, path)


def _only(table, allowed, source, prefix):
    for name in table:
        if name not in allowed:
            raise ConfigError(f"{source}: {prefix}{_show(name)}: unknown key; expected one of "
                              f"{', '.join(sorted(allowed))}")


def _show(text):
    """text, or its repr if it would break the error's one line (TOML keys may hold newlines)."""
    return text if text.isprintable() else repr(text)
