"""Install holdingpen on a Debian 12 machine, or remove it again.

    sudo python3 -m holdingpen.install               # from a checkout: install and start
    sudo python3 -m holdingpen.install --uninstall   # remove everything it installed

What goes where (every path is listed in MANIFEST, which --uninstall reads):

    /usr/local/lib/holdingpen/current/       the package, byte-compiled
    /usr/local/bin/perflock, pls, ...        launchers for pyproject's [project.scripts]
    /usr/local/lib/systemd/system/           units/*
    /usr/local/lib/tmpfiles.d/               tmpfiles.d/*.conf
    /usr/share/polkit-1/actions, rules.d/    polkit/*.policy, polkit/*.rules

The libraries come from Debian (python3-psutil, ...), so the system's own
updates keep them patched, and nothing is built on the target machine. The
launchers run /usr/bin/python3 in isolated mode (-I): a tool that root runs
must not pick up PYTHONPATH or a user's site-packages, and skipping pip's
launcher (which imports re) keeps perflock's start-up cost low.
"""

import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

PYTHON = "/usr/bin/python3"
DEBIAN_PACKAGES = ["python3-psutil", "python3-systemd", "python3-jeepney"]
SERVICE_USER = "holdingpen"      # the daemon runs as this system user, not root
BORROWERS_GROUP = "holdingpen"   # polkit/50-holdingpen.rules: members may always borrow

LIBDIR = Path("/usr/local/lib/holdingpen")
CURRENT = LIBDIR / "current"     # -> release.<time>, holding the package
BINDIR = Path("/usr/local/bin")
MANIFEST = LIBDIR / "MANIFEST"
# (source folder in the checkout, file pattern, destination)
SYSTEM_FILES = [
    ("units", "*.socket", Path("/usr/local/lib/systemd/system")),
    ("units", "*.service", Path("/usr/local/lib/systemd/system")),
    ("units", "*.timer", Path("/usr/local/lib/systemd/system")),
    ("tmpfiles.d", "*.conf", Path("/usr/local/lib/tmpfiles.d")),
    ("polkit", "*.policy", Path("/usr/share/polkit-1/actions")),
    ("polkit", "*.rules", Path("/usr/share/polkit-1/rules.d")),
]

# What our units write for node_exporter's textfile collector; removed on
# --uninstall, or node_exporter would go on exporting them, stale.
METRICS_FILES = [Path("/var/lib/prometheus/node-exporter") / name
                 for name in ("perflock.prom", "holdingpen.prom")]
UNIT_SUFFIXES = (".socket", ".service", ".timer")

LAUNCHER = '''#!{python} -I
# {name}: written by holdingpen.install; do not edit.
import sys
sys.path.insert(0, {libdir!r})
from {module} import {function}
sys.exit({function}())
'''


class InstallError(Exception):
    """A one-line reason the installation cannot go on, naming the fix."""


def entry_points(checkout):
    """The console commands pyproject.toml declares: {name: "module:function"}."""
    with open(checkout / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def write_launchers(bindir, libdir, python, scripts):
    """Write one small launcher per command into bindir; return their paths.

    Tests and benchmarks call this too, so that they run the very launchers
    the installation uses.
    """
    paths = []
    for name, target in sorted(scripts.items()):
        module, function = target.split(":")
        path = Path(bindir) / name
        text = LAUNCHER.format(python=python, name=name, libdir=str(libdir),
                               module=module, function=function)
        _write_atomic(path, text.encode(), 0o755)
        paths.append(path)
    return paths


def _write_atomic(path, data, mode):
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)


def _missing_debian_packages(packages):
    missing = []
    for package in packages:
        query = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                               capture_output=True, text=True)
        if query.stdout.strip() != "install ok installed":
            missing.append(package)
    return missing


def _ensure_debian_packages(packages):
    missing = _missing_debian_packages(packages)
    if not missing:
        return
    print(f"installing {' '.join(missing)} with apt-get", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                          env=env)
    if done.returncode != 0:
        raise InstallError(f"apt-get could not install {' '.join(missing)}; "
                           "run 'apt-get update' and try again")


def _ensure_accounts():
    """The daemon's system user and the borrowers' group; kept by --uninstall, as
    Debian keeps system users, since files and rules may still name them."""
    if subprocess.run(["getent", "group", BORROWERS_GROUP], capture_output=True).returncode:
        _run(["groupadd", "--system", BORROWERS_GROUP])
    if subprocess.run(["getent", "passwd", SERVICE_USER], capture_output=True).returncode:
        _run(["useradd", "--system", "--gid", "nogroup", "--no-create-home",
              "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
              "--comment", "Holding Pen reservation daemon", SERVICE_USER])


def _copy_package(checkout):
    """Put the checkout's package in place as LIBDIR/current, byte-compiled.

    Each install is a new release directory, and the symlink `current` is
    swapped to it by rename(2), so a command starting during an update finds
    the old release or the new one, never half of either. Compiled here
    because users cannot write __pycache__ under /usr/local/lib: without it
    every start would compile the modules again.
    """
    LIBDIR.mkdir(parents=True, exist_ok=True)
    release = LIBDIR / f"release.{time.time_ns()}"
    shutil.copytree(checkout / "holdingpen", release / "holdingpen",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(release)], check=True,
                   stdout=subprocess.DEVNULL)
    link = LIBDIR / ".current.new"
    link.unlink(missing_ok=True)
    link.symlink_to(release.name)
    link.replace(CURRENT)
    for old in LIBDIR.glob("release.*"):
        if old != release:
            shutil.rmtree(old)


def _copy_system_files(checkout):
    installed = []
    for folder, pattern, destination in SYSTEM_FILES:
        for source in sorted((checkout / folder).glob(pattern)):
            destination.mkdir(parents=True, exist_ok=True)
            target = destination / source.name
            _write_atomic(target, source.read_bytes(), 0o644)
            installed.append(target)
    return installed


def _systemd_running():
    # sd_booted(): the test systemd itself uses.
    return os.path.isdir("/run/systemd/system")


def _run(argv):
    print("+ " + " ".join(argv), flush=True)
    done = subprocess.run(argv)
    if done.returncode != 0:
        raise InstallError(f"'{' '.join(argv)}' failed with exit status {done.returncode}")


def install(checkout):
    if not (checkout / "pyproject.toml").is_file():
        raise InstallError(f"{checkout} is not a holdingpen checkout; run this from one")
    _ensure_debian_packages(DEBIAN_PACKAGES)
    _ensure_accounts()
    _copy_package(checkout)
    launchers = write_launchers(BINDIR, CURRENT, PYTHON, entry_points(checkout))
    system_files = _copy_system_files(checkout)
    _write_atomic(MANIFEST, "".join(f"{p}\n" for p in launchers + system_files).encode(), 0o644)

    tmpfiles = [str(p) for p in system_files if p.suffix == ".conf"]
    if tmpfiles:
        _run(["systemd-tmpfiles", "--create", *tmpfiles])
    if not _systemd_running():
        print("systemd is not running here: files installed, no unit started")
        return
    units = [p.name for p in system_files if p.suffix in UNIT_SUFFIXES]
    if units:
        services = [u for u in units if u.endswith(".service")]
        running = [s for s in services
                   if subprocess.run(["systemctl", "is-active", "--quiet", s]).returncode == 0]
        _run(["systemctl", "daemon-reload"])
        # A unit with no [Install] section (a timer's service) is started by its timer.
        _run(["systemctl", "enable", "--now",
              *[p.name for p in system_files if p.suffix in UNIT_SUFFIXES and "[Install]" in p.read_text()]])
        if running:   # an update: the new code takes over the pool from the descriptor store
            _run(["systemctl", "restart", *running])
    print("holdingpen is installed")


def uninstall():
    if not MANIFEST.exists():
        raise InstallError(f"{MANIFEST} not found: holdingpen is not installed")
    paths = [Path(line) for line in MANIFEST.read_text().splitlines() if line]
    units = [p.name for p in paths if p.suffix in UNIT_SUFFIXES]
    if units and _systemd_running():
        _run(["systemctl", "disable", "--now", *units])
    for path in paths + METRICS_FILES:
        path.unlink(missing_ok=True)
    shutil.rmtree(LIBDIR)
    if units and _systemd_running():
        _run(["systemctl", "daemon-reload"])
    # /run/perflock and /run/perflock.d stay until the next boot: a job may still hold them.
    print("holdingpen is uninstalled")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["--uninstall"]):
        print("usage: python3 -m holdingpen.install [--uninstall]", file=sys.stderr)
        return 64
    if os.geteuid() != 0:
        print("holdingpen.install: must run as root: sudo python3 -m holdingpen.install",
              file=sys.stderr)
        return 77
    try:
        if argv:
            uninstall()
        else:
            install(Path(__file__).resolve().parent.parent)
    except InstallError as e:
        print(f"holdingpen.install: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
