"""The configuration file, driven directly: bytes in, pools or one line of error out."""

import os

import pytest

from holdingpen.pen import config
from holdingpen.pen.config import MAX_COUNT, ConfigError, PoolSpec, load, parse

SOURCE = "/etc/holdingpen/holdingpen.toml"
GiB = 1073741824
MiB = 1048576

# The example in config.py's docstring, as an administrator would write it.
EXAMPLE = b"""\
[memory]
size = "2G"          # one reservation; a bare integer is bytes; K, M, G, T are binary
count = 2

[[disk]]
path = "/var/tmp"    # reserve space on the filesystem holding this directory
size = "10G"
count = 1

[limits]
request_timeout_s = 10   # a client that says nothing for this long is dropped
"""


def memory(size_bytes=256 * MiB, count=1):
    return PoolSpec("memory", size_bytes, count)


def disk(path, size_bytes, count=1):
    return PoolSpec("disk", size_bytes, count, path)


GOOD = [
    ("no file at all", b"", [memory()]),
    ("only comments", b"# nothing to say\n\n", [memory()]),
    ("the example", EXAMPLE, [memory(2 * GiB, 2), disk("/var/tmp", 10 * GiB)]),
    ("memory size alone", b'[memory]\nsize = "1G"\n', [memory(GiB, 1)]),
    ("memory count alone", b"[memory]\ncount = 3\n", [memory(256 * MiB, 3)]),
    ("no memory reserved", b"[memory]\ncount = 0\n", [memory(256 * MiB, 0)]),
    ("the most", b"[memory]\ncount = %d\n" % MAX_COUNT, [memory(256 * MiB, MAX_COUNT)]),
    ("bytes as a TOML integer", b"[memory]\nsize = 1048576\n", [memory(MiB, 1)]),
    ("an empty [memory]", b"[memory]\n", [memory()]),
    ("no disks", b"disk = []\n", [memory()]),
    ("disk count defaults to 1", b'[[disk]]\npath = "/srv"\nsize = "1G"\n', [memory(), disk("/srv", GiB)]),
    ("disk path normalised", b'[[disk]]\npath = "/var/tmp/"\nsize = "1G"\n',
     [memory(), disk("/var/tmp", GiB)]),
    ("a leading // is /", b'[[disk]]\npath = "//srv"\nsize = "1G"\n', [memory(), disk("/srv", GiB)]),
    ("disks in file order", b'[[disk]]\npath = "/var/tmp"\nsize = "1G"\ncount = 2\n'
                            b'[[disk]]\npath = "/srv"\nsize = "5G"\n',
     [memory(), disk("/var/tmp", GiB, 2), disk("/srv", 5 * GiB)]),
    ("disks as inline tables", b'disk = [{path = "/srv", size = "1G"}]\n', [memory(), disk("/srv", GiB)]),
    ("a disk reserving nothing", b'[[disk]]\npath = "/srv"\nsize = "1G"\ncount = 0\n',
     [memory(), disk("/srv", GiB, 0)]),
]


@pytest.mark.parametrize("why, data, pools", GOOD, ids=[g[0] for g in GOOD])
def test_parse(why, data, pools):
    cfg = parse(data, SOURCE)
    assert cfg.pools == pools
    assert cfg.source == SOURCE


def test_pool_names():
    cfg = parse(EXAMPLE, SOURCE)
    assert [p.name for p in cfg.pools] == ["memory", "disk:/var/tmp"]


D = {"request_timeout_s": 10.0, "connections_per_user": 32, "borrows_per_second": 5.0,
     "borrow_burst": 10}
LIMITS = [
    (b"", D),
    (b"[limits]\n", D),
    (b"[limits]\nrequest_timeout_s = 2.5\n", {**D, "request_timeout_s": 2.5}),
    (b"[limits]\nrequest_timeout_s = 1\n", {**D, "request_timeout_s": 1.0}),
    (b"[limits]\nrequest_timeout_s = 3600\n", {**D, "request_timeout_s": 3600.0}),
    (b"[limits]\nconnections_per_user = 4\nborrows_per_second = 0.5\nborrow_burst = 2\n",
     {**D, "connections_per_user": 4, "borrows_per_second": 0.5, "borrow_burst": 2}),
    (b"[limits]\nconnections_per_user = 4.0\n", {**D, "connections_per_user": 4}),
]


@pytest.mark.parametrize("data, limits", LIMITS)
def test_limits(data, limits):
    assert parse(data, SOURCE).limits == limits


def disk_file(*paths):
    return b"".join(b'[[disk]]\npath = "%s"\nsize = "1G"\n' % p for p in paths)


# (what is wrong, file, the key named, what the message says is wrong)
ERRORS = [
    ("bad TOML", b"[memory\n", None, "not valid TOML", "line 1"),
    ("bad TOML further down", b'[memory]\nsize = "2G"\nsize = "3G"\n', None, "not valid TOML", "line 3"),
    ("a bare word", b"[memory]\nsize = 2G\n", None, "not valid TOML", "line 2"),
    ("not UTF-8", b'[memory]\nsize = "2G\xff"\n', None, "not UTF-8", ""),
    ("UTF-16", "[memory]\n".encode("utf-16"), None, "not UTF-8", ""),
    ("unknown top-level key", b'[memroy]\nsize = "2G"\n', "memroy", "unknown key",
     "expected one of authorize, disk, limits, memory"),
    ("top-level size", b'size = "2G"\n', "size", "unknown key", "authorize, disk, limits, memory"),
    ("unknown key in [memory]", b'[memory]\nsise = "2G"\n', "memory.sise", "unknown key",
     "expected one of count, size"),
    ("path in [memory]", b'[memory]\npath = "/var/tmp"\n', "memory.path", "unknown key", "count, size"),
    ("unknown key in [[disk]]", disk_file(b"/srv") + b"cont = 2\n", "disk[0].cont", "unknown key",
     "expected one of count, path, size"),
    ("unknown key in the second disk", disk_file(b"/srv", b"/var/tmp") + b"sizes = 1\n",
     "disk[1].sizes", "unknown key", ""),
    ("disk size missing", b'[[disk]]\npath = "/srv"\n', "disk[0].size", "missing", 'size = "10G"'),
    ("bad memory size", b'[memory]\nsize = "lots"\n', "memory.size", "expected a size", "'lots'"),
    ("zero size", b'[memory]\nsize = "0"\n', "memory.size", "positive whole number", "'0'"),
    ("negative size", b"[memory]\nsize = -1\n", "memory.size", "positive whole number", "-1"),
    ("fractional bytes", b'[memory]\nsize = "1.3"\n', "memory.size", "whole number", "'1.3'"),
    ("size as a float", b"[memory]\nsize = 1.5\n", "memory.size", "expected a size", "1.5"),
    ("size as a bool", b"[memory]\nsize = true\n", "memory.size", "expected a size", "True"),
    ("size as a table", b"[memory.size]\n", "memory.size", "expected a size", "{}"),
    ("huge size", b'[memory]\nsize = "8388608T"\n', "memory.size", "at most", "'8388608T'"),
    ("bad disk size", disk_file(b"/srv").replace(b'"1G"', b'"1X"'), "disk[0].size", "expected a size",
     "'1X'"),
    ("count as a string", b'[memory]\ncount = "2"\n', "memory.count", f"from 0 to {MAX_COUNT}", "'2'"),
    ("count as a bool", b"[memory]\ncount = true\n", "memory.count", "whole number", "True"),
    ("count as a float", b"[memory]\ncount = 2.0\n", "memory.count", "whole number", "2.0"),
    ("negative count", b"[memory]\ncount = -1\n", "memory.count", "from 0 to", "-1"),
    ("count over the most", b"[memory]\ncount = %d\n" % (MAX_COUNT + 1), "memory.count", "from 0 to",
     str(MAX_COUNT + 1)),
    ("disk count", disk_file(b"/srv") + b"count = 1e3\n", "disk[0].count", "whole number", "1000.0"),
    ("relative disk path", disk_file(b"var/tmp"), "disk[0].path", "absolute directory path",
     "'var/tmp'"),
    ("dot path", disk_file(b"."), "disk[0].path", "absolute", "'.'"),
    ("empty disk path", disk_file(b""), "disk[0].path", "absolute", "''"),
    ("disk path missing", b'[[disk]]\nsize = "1G"\n', "disk[0].path", "absolute", "None"),
    ("disk path not a string", b'[[disk]]\npath = 5\nsize = "1G"\n', "disk[0].path", "absolute", "5"),
    ("disk path with a NUL", disk_file(b"/var/tmp\\u0000x"), "disk[0].path", "absolute directory path",
     "'/var/tmp\\x00x'"),
    ("duplicate disk", disk_file(b"/var/tmp", b"/var/tmp"), "disk[1].path", "/var/tmp is listed twice",
     ""),
    ("duplicate after a slash", disk_file(b"/var/tmp", b"/var/tmp/"), "disk[1].path", "listed twice",
     ""),
    ("duplicate after a dot", disk_file(b"/srv", b"/var/tmp", b"/var/./tmp"), "disk[2].path",
     "listed twice", ""),
    ("duplicate after ..", disk_file(b"/var/tmp", b"/var/log/../tmp"), "disk[1].path", "listed twice",
     ""),
    ("duplicate after //", disk_file(b"/var/tmp", b"//var/tmp"), "disk[1].path", "listed twice", ""),
    ("duplicate after ///", disk_file(b"/var/tmp", b"///var//tmp"), "disk[1].path", "listed twice", ""),
    ("memory not a table", b"memory = 5\n", "memory", "expected a table", "[memory]"),
    ("memory as a string", b'memory = "2G"\n', "memory", "expected a table", ""),
    ("memory as an array of tables", b"[[memory]]\ncount = 1\n", "memory", "expected a table", ""),
    ("disk as a string", b'disk = "/var/tmp"\n', "disk", "expected tables", "[[disk]]"),
    ("disk as a table", b'[disk]\npath = "/srv"\nsize = "1G"\n', "disk", "expected tables", "[[disk]]"),
    ("disk as a list of strings", b'disk = ["/srv"]\n', "disk", "expected tables", ""),
    ("disk with one bad entry", b'disk = [{path = "/srv", size = "1G"}, 3]\n', "disk", "expected tables",
     ""),
    ("limits not a table", b"limits = 5\n", "limits", "expected a table", "[limits]"),
    ("unknown limit", b"[limits]\ntimeout = 5\n", "limits.timeout", "unknown key", "request_timeout_s"),
    ("zero timeout", b"[limits]\nrequest_timeout_s = 0\n", "limits.request_timeout_s",
     "expected seconds from 0.001 to 3600", "not 0"),
    ("negative timeout", b"[limits]\nrequest_timeout_s = -1\n", "limits.request_timeout_s", "seconds",
     "-1"),
    ("long timeout", b"[limits]\nrequest_timeout_s = 3601\n", "limits.request_timeout_s", "to 3600",
     "3601"),
    ("nan timeout", b"[limits]\nrequest_timeout_s = nan\n", "limits.request_timeout_s", "seconds", "nan"),
    ("inf timeout", b"[limits]\nrequest_timeout_s = inf\n", "limits.request_timeout_s", "seconds", "inf"),
    ("timeout as a string", b'[limits]\nrequest_timeout_s = "10"\n', "limits.request_timeout_s",
     "seconds", "'10'"),
    ("timeout as a bool", b"[limits]\nrequest_timeout_s = true\n", "limits.request_timeout_s", "seconds",
     "True"),
    ("fractional connections", b"[limits]\nconnections_per_user = 1.5\n",
     "limits.connections_per_user", "expected a whole number from 1 to 65536", "1.5"),
    ("no connections", b"[limits]\nconnections_per_user = 0\n", "limits.connections_per_user",
     "whole number", "not 0"),
    ("authorize not a table", b"authorize = 1\n", "authorize", "expected a table", "[authorize]"),
    ("unknown authorize key", b"[authorize]\nuser = [\"a\"]\n", "authorize.user", "unknown key",
     "groups, users"),
    ("users not a list", b"[authorize]\nusers = \"alice\"\n", "authorize.users",
     "expected a list of names", "'alice'"),
    ("an empty user name", b"[authorize]\ngroups = [\"\"]\n", "authorize.groups",
     "expected a list of names", "['']"),
    ("metrics not a table", b"metrics = 1\n", "metrics", "expected a table", "[metrics]"),
    ("unknown metrics key", b"[metrics]\ndir = \"/x\"\n", "metrics.dir", "unknown key", "textfile_dir"),
    ("a relative textfile_dir", b'[metrics]\ntextfile_dir = "prom"\n', "metrics.textfile_dir",
     "expected an absolute directory path, or \"\" for no metrics file", "'prom'"),
    ("textfile_dir not a string", b"[metrics]\ntextfile_dir = false\n", "metrics.textfile_dir",
     "absolute directory path", "False"),
    # A key is whatever TOML allows, newlines included; the error must stay one line.
    ("a key with a newline", b'"mem\\nory" = 1\n', "'mem\\nory'", "unknown key", ""),
    ("a [memory] key with a newline", b'[memory]\n"a\\nb" = 1\n', "memory.'a\\nb'", "unknown key",
     ""),
    ("a disk path with a newline, twice", disk_file(b"/srv/a\\nb", b"/srv/a\\nb/"), "disk[1].path",
     "'/srv/a\\nb' is listed twice", ""),
]


@pytest.mark.parametrize("why, data, key, what, detail", ERRORS, ids=[e[0] for e in ERRORS])
def test_parse_errors_are_one_line_naming_file_key_and_fault(why, data, key, what, detail):
    with pytest.raises(ConfigError) as e:
        parse(data, SOURCE)
    message = str(e.value)
    assert message.isprintable(), message          # one line, nothing that moves the cursor
    assert message.startswith(SOURCE + ": ")
    if key is not None:
        assert message[len(SOURCE) + 2:].startswith(key), message
    assert what in message
    assert detail in message


# ---- load(): the file itself ----


def test_load_an_explicit_file(tmp_path):
    path = tmp_path / "holdingpen.toml"
    path.write_bytes(EXAMPLE)
    cfg = load(str(path))
    assert cfg.pools == [memory(2 * GiB, 2), disk("/var/tmp", 10 * GiB)]
    assert cfg.source == str(path)


def test_load_an_empty_explicit_file_gives_defaults_named_by_the_file(tmp_path):
    path = tmp_path / "holdingpen.toml"
    path.write_bytes(b"")
    cfg = load(str(path))
    assert cfg.pools == [memory()]
    assert cfg.source == str(path)


def test_a_missing_explicit_file_is_an_error(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as e:
        load(str(path))
    assert str(e.value) == f"{path}: no such file"


# load() reads config.DEFAULT_PATH when called; pointing it into tmp_path keeps /etc out of it.

def test_a_missing_default_file_means_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.toml"))
    cfg = load()
    assert cfg.pools == [memory()]
    assert cfg.limits == D
    assert cfg.authorize == {"users": (), "groups": ()}
    assert cfg.source == "(defaults)"


def test_a_present_default_file_is_read(tmp_path, monkeypatch):
    path = tmp_path / "holdingpen.toml"
    path.write_bytes(b'[memory]\nsize = "1G"\n')
    monkeypatch.setattr(config, "DEFAULT_PATH", str(path))
    cfg = load()
    assert cfg.pools == [memory(GiB, 1)]
    assert cfg.source == str(path)


def test_a_bad_default_file_is_an_error_not_defaults(tmp_path, monkeypatch):
    path = tmp_path / "holdingpen.toml"
    path.write_bytes(b"[memory]\ncount = -1\n")
    monkeypatch.setattr(config, "DEFAULT_PATH", str(path))
    with pytest.raises(ConfigError) as e:
        load()
    assert str(e.value).startswith(f"{path}: memory.count: ")


def loop(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    return tmp_path / "loop"


UNREADABLE = [
    ("a directory", lambda tmp_path: tmp_path, "Is a directory"),
    ("a symlink loop", loop, "Too many levels of symbolic links"),
    ("under a file", lambda tmp_path: (tmp_path / "f").write_text("") or tmp_path / "f" / "x.toml",
     "Not a directory"),
]


@pytest.mark.parametrize("explicit", [True, False], ids=["explicit", "default"])
@pytest.mark.parametrize("why, make, strerror", UNREADABLE, ids=[u[0] for u in UNREADABLE])
def test_an_unreadable_file_is_an_error(tmp_path, monkeypatch, why, make, strerror, explicit):
    path = str(make(tmp_path))
    monkeypatch.setattr(config, "DEFAULT_PATH", path)
    with pytest.raises(ConfigError) as e:
        load(path if explicit else None)
    assert str(e.value) == f"{path}: cannot read it: {strerror}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
def test_a_file_without_read_permission_is_an_error(tmp_path):
    path = tmp_path / "holdingpen.toml"
    path.write_bytes(EXAMPLE)
    path.chmod(0)
    with pytest.raises(ConfigError) as e:
        load(str(path))
    assert str(e.value) == f"{path}: cannot read it: Permission denied"


def test_load_errors_in_the_file_name_it(tmp_path):
    path = tmp_path / "holdingpen.toml"
    path.write_bytes(b"\xff\xfe[memory]\n")
    with pytest.raises(ConfigError) as e:
        load(str(path))
    assert str(e.value) == f"{path}: not UTF-8 text"


@pytest.mark.parametrize("data, lists", [
    (b"", {"users": (), "groups": ()}),
    (b"[authorize]\n", {"users": (), "groups": ()}),
    (b'[authorize]\nusers = ["alice", "bob"]\n', {"users": ("alice", "bob"), "groups": ()}),
    (b'[authorize]\ngroups = ["staff"]\n', {"users": (), "groups": ("staff",)}),
])
def test_authorize_lists(data, lists):
    assert parse(data, SOURCE).authorize == lists


@pytest.mark.parametrize("data, directory", [
    (b"", "/var/lib/holdingpen"),
    (b"[metrics]\n", "/var/lib/holdingpen"),
    (b'[metrics]\ntextfile_dir = "/srv/prom"\n', "/srv/prom"),
    (b'[metrics]\ntextfile_dir = ""\n', ""),
])
def test_metrics_textfile_dir(data, directory):
    assert parse(data, SOURCE).textfile_dir == directory


def stat_saying(answers):
    """os.stat for a file system of our own: {path: st_mode or an errno}."""
    import errno as errnos
    import stat as modes

    def stat(path):
        answer = answers.get(path, errnos.ENOENT)
        if answer in (modes.S_IFDIR, modes.S_IFREG):
            return os.stat_result((answer | 0o755, 0, 0, 1, 0, 0, 0, 0, 0, 0))
        raise OSError(answer, os.strerror(answer), path)
    return stat


TWO_DISKS = b'[[disk]]\npath = "/var/tmp"\nsize = "1G"\n[[disk]]\npath = "/srv/pool"\nsize = "1G"\n'


# (what the file system says of /srv/pool, the error or None)
DIRECTORIES = [
    (0o040000, None),
    (2, f"{SOURCE}: disk[1].path: /srv/pool does not exist; create the directory or name one "
        "that exists"),
    (0o100000, f"{SOURCE}: disk[1].path: /srv/pool is not a directory; name the directory whose "
               "filesystem should hold the reservations"),
    (13, f"{SOURCE}: disk[1].path: cannot look at /srv/pool: Permission denied"),
    (20, f"{SOURCE}: disk[1].path: cannot look at /srv/pool: Not a directory"),
]


@pytest.mark.parametrize("srv_pool, error", DIRECTORIES)
def test_disk_paths_must_be_existing_directories(srv_pool, error):
    cfg = parse(TWO_DISKS, SOURCE)
    stat = stat_saying({"/var/tmp": 0o040000, "/srv/pool": srv_pool})
    if error is None:
        config.check_directories(cfg, stat)
    else:
        with pytest.raises(ConfigError) as raised:
            config.check_directories(cfg, stat)
        assert str(raised.value) == error


def test_load_refuses_a_disk_path_that_does_not_exist(tmp_path):
    path = tmp_path / "holdingpen.toml"
    path.write_text(f'[[disk]]\npath = "{tmp_path}/nowhere"\nsize = "1M"\n')
    with pytest.raises(ConfigError) as raised:
        load(str(path))
    assert str(raised.value) == (f"{path}: disk[0].path: {tmp_path}/nowhere does not exist; "
                                 "create the directory or name one that exists")
    path.write_text(f'[[disk]]\npath = "{tmp_path}"\nsize = "1M"\n')
    assert load(str(path)).pools[1].path == str(tmp_path)


# (errno of the failed open, the line)
CANNOT_RESERVE = [
    (30, "cannot reserve space in /srv: Read-only file system; to let the service write there, "
         "add a drop-in (systemctl edit holdingpen) with [Service] ReadWritePaths=/srv, then "
         "systemctl restart holdingpen"),
    (13, "cannot reserve space in /srv: Permission denied; let the user holdingpen write to /srv"),
    (28, "cannot reserve space in /srv: No space left on device"),
]


@pytest.mark.parametrize("error, line", CANNOT_RESERVE)
def test_cannot_reserve_names_the_fix(error, line):
    assert config.cannot_reserve_in("/srv", OSError(error, os.strerror(error))) == line


# (what the last run kept, the pools last_good() gives back, or None)
LAST_GOOD = [
    ("the file as it was", {"source": "/etc/hp.toml", "text": '[memory]\ncount = 3\n'},
     [PoolSpec("memory", 256 << 20, 3)]),
    ("the defaults, when there was no file", {"source": "(defaults)", "text": ""},
     [PoolSpec("memory", 256 << 20, 1)]),
    ("a disk pool whose directory is gone since: kept, left short",
     {"source": "/etc/hp.toml", "text": '[[disk]]\npath = "/gone"\nsize = "1M"\n'},
     [PoolSpec("memory", 256 << 20, 1), PoolSpec("disk", 1 << 20, 1, "/gone")]),
    ("nothing kept (an older daemon's store)", None, None),
    ("no text", {"source": "/etc/hp.toml"}, None),
    ("a text that does not parse", {"source": "/etc/hp.toml", "text": "[memory"}, None),
    ("not text", {"source": "/etc/hp.toml", "text": 7}, None),
]


@pytest.mark.parametrize("kept, pools", [c[1:] for c in LAST_GOOD], ids=[c[0] for c in LAST_GOOD])
def test_last_good(kept, pools):
    cfg = config.last_good(kept)
    if pools is None:
        assert cfg is None
    else:
        assert (cfg.pools, cfg.source, cfg.text) == (pools, kept["source"], kept["text"])
