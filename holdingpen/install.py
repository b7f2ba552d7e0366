"""Build holdingpen's Debian package from this checkout and install it with apt.

    sudo python3 -m holdingpen.install     # as root without sudo: python3 -m holdingpen.install

Remove it with `apt remove holdingpen` (keeps /etc/holdingpen) or `apt purge
holdingpen`. Steps: check /etc/holdingpen/holdingpen.toml before anything
is restarted on it; install the build dependencies with apt-get; build the
package in a copy of the checkout (the checkout stays clean); move an
installation of the old /usr/local layout out of the way; install the
package with apt, whose scripts enable and start the units, or restart the
daemon on an upgrade (a restart keeps the pool and the loans).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from holdingpen.common import exits

PYTHON = "/usr/bin/python3"
POLICY_RC_D = "/usr/sbin/policy-rc.d"   # present in images built for containers
OLD_LIBDIR = Path("/usr/local/lib/holdingpen")   # the copier's layout, before the package
# Debian's tools with Debian's python3: not one that comes earlier on PATH (pyenv, a venv).
ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive", PATH="/usr/sbin:/usr/bin:/sbin:/bin")
APT_FIX = "run 'apt-get update' and try again (apt's lists may be old or missing)"
# Keep the administrator's /etc/holdingpen/holdingpen.toml on an upgrade, without asking.
KEEP_CONFFILES = ["-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]

# Start-up cost: a command only imports its module. pip's and pybuild's
# console scripts import re and more first; -I keeps a root-run tool from
# picking up PYTHONPATH or a user's site-packages.
LAUNCHER = '''#!{python} -I
# {name}: a holdingpen command (written by holdingpen.install.write_launchers)
import sys
{path_line}from {module} import {function}
sys.exit({function}())
'''


class InstallError(Exception):
    """A one-line reason the installation cannot go on, naming the fix."""


def entry_points(checkout):
    """The console commands pyproject.toml declares: {name: "module:function"}."""
    with open(Path(checkout) / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


def write_launchers(bindir, libdir=None, python=PYTHON, scripts=None):
    """Write one small launcher per command into bindir; return their paths.

    Args:
        libdir: a directory to put first on sys.path (tests run the checkout
            this way); None for the package, which Python finds by itself.
        scripts: {name: "module:function"}; pyproject.toml's in the working
            directory when None (debian/rules calls it so).
    """
    scripts = entry_points(Path.cwd()) if scripts is None else scripts
    path_line = "" if libdir is None else f"sys.path.insert(0, {str(libdir)!r})\n"
    paths = []
    for name, target in sorted(scripts.items()):
        module, function = target.split(":")
        path = Path(bindir) / name
        path.write_text(LAUNCHER.format(python=python, name=name, path_line=path_line,
                                        module=module, function=function))
        path.chmod(0o755)
        paths.append(path)
    return paths


def build_depends(control_text):
    """The Build-Depends of a debian/control text, as one apt-get satisfy string."""
    field, lines = None, []
    for line in control_text.splitlines():
        if line[:1] not in (" ", "\t"):
            field, _, line = line.partition(":")
        if field == "Build-Depends":
            lines.append(line.strip())
    return " ".join(lines).strip(" ,")


def _run(argv, fix=None, **kwargs):
    print("+ " + " ".join(argv), flush=True)
    done = subprocess.run(argv, env=ENV, **kwargs)
    if done.returncode != 0:
        raise InstallError(f"'{' '.join(argv)}' failed with exit status {done.returncode}"
                           + (f"; {fix}" if fix else ""))


def _check_config(checkout):
    """Refuse to go on with a bad configuration: the daemon would not start on it."""
    # The checkout's own `holdingpen check`, run from the checkout (cwd), on
    # the default file: unlike a --config PATH, that one may be absent.
    done = subprocess.run([PYTHON, "-c", "import sys; from holdingpen.cli.holdingpen "
                           "import run; sys.exit(run(sys.argv[1:]))", "check"],
                          cwd=checkout, capture_output=True, text=True)
    if done.returncode == exits.CONFIG:     # `holdingpen check`: the file is bad
        raise InstallError(f"{(done.stderr or done.stdout).strip()}; nothing was installed "
                           "or restarted: fix the file and run this again")


def build(checkout, workdir):
    """Build the package in a copy of the checkout in workdir; return the .deb's path.

    Raises:
        InstallError: the build failed.
    """
    source = workdir / "holdingpen"
    shutil.copytree(checkout, source, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", ".pytest_cache", ".hypothesis", ".venv"))
    # No build-dependency check: install() has just satisfied them, and the check
    # would also want build-essential, a C compiler this package never uses.
    # Cleaned first (debian/rules clean), as the checkout may hold an earlier build.
    _run(["dpkg-buildpackage", "--build=binary", "--no-sign", "--no-check-builddeps"],
         cwd=source, stdout=subprocess.DEVNULL)
    debs = sorted(workdir.glob("holdingpen_*_all.deb"))
    if len(debs) != 1:
        raise InstallError(f"the build left {len(debs)} packages, not one, in {workdir}")
    return debs[0]


def _leave_old_layout():
    """Remove an installation by the old copier, keeping the daemon running.

    The units are disabled (their links go; nothing stops) and the files
    removed; the package's scripts then find the same unit names and the
    running daemon, which install() restarts on the packaged code. The
    polkit files stay: the package has them at the same paths.
    """
    manifest = OLD_LIBDIR / "MANIFEST"
    if not manifest.exists():
        return False
    print(f"moving over from the old layout in {OLD_LIBDIR}", flush=True)
    paths = [Path(line) for line in manifest.read_text().splitlines() if line]
    units = [p.name for p in paths if p.suffix in (".socket", ".service")]
    if units and os.path.isdir("/run/systemd/system"):
        _run(["systemctl", "disable", *units])
    for path in paths:
        if not path.is_relative_to("/usr/share/polkit-1"):
            path.unlink(missing_ok=True)
    shutil.rmtree(OLD_LIBDIR)
    return True


def install(checkout):
    if not (checkout / "debian" / "control").is_file():
        raise InstallError(f"{checkout} is not a holdingpen checkout; run this from one")
    _check_config(checkout)
    _run(["apt-get", "satisfy", "-y", "-q", "--no-install-recommends",
          f"dpkg-dev, {build_depends((checkout / 'debian' / 'control').read_text())}"],
         fix=APT_FIX)
    with tempfile.TemporaryDirectory(prefix="holdingpen-build.") as workdir:
        deb = build(checkout, Path(workdir))
        moved = _leave_old_layout()
        _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "--reinstall",
              "--allow-downgrades", *KEEP_CONFFILES, str(deb)], fix=APT_FIX)
    if not os.path.isdir("/run/systemd/system"):
        print("holdingpen is installed; systemd is not running here, so nothing was started")
        return
    if moved:
        # A running old daemon: the package's scripts left it on the old code.
        _run(["systemctl", "restart", "holdingpen.service"])
    if subprocess.run(["systemctl", "is-active", "--quiet", "holdingpen.socket",
                       "holdingpen.service"]).returncode != 0:
        forbidden = (f" ({POLICY_RC_D} forbids packages to start services here)"
                     if os.path.exists(POLICY_RC_D) else "")
        raise InstallError(f"holdingpen is installed but not running{forbidden}: see 'systemctl "
                           "status holdingpen.socket holdingpen.service' and 'journalctl -u holdingpen'")
    print("holdingpen is installed and running")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--uninstall"]:
        print("holdingpen.install: holdingpen is a Debian package now: remove it with "
              "'apt remove holdingpen' (keeps /etc/holdingpen) or 'apt purge holdingpen'",
              file=sys.stderr)
        return 64
    if argv:
        print("usage: python3 -m holdingpen.install   (remove: apt remove holdingpen)",
              file=sys.stderr)
        return 64
    if os.geteuid() != 0:
        print("holdingpen.install: must run as root: sudo python3 -m holdingpen.install",
              file=sys.stderr)
        return 77
    try:
        install(Path(__file__).resolve().parent.parent)
    except InstallError as e:
        print(f"holdingpen.install: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
