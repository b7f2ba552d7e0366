"""Boot a throw-away systemd machine with systemd-nspawn, for the system tests.

Theory of operation
-------------------
A Container is the host's own root file system, booted as a separate machine:

    setpriv --pdeathsig TERM                 our death (even SIGKILL) stops nspawn
      unshare -m --propagation private       the mounts below never reach the host
        sh: join harness.<owner>.<name> cgroups, mount tmpfs + overlay(lowerdir=/)
          loop: setpriv --pdeathsig TERM     the shell's death stops nspawn too
                  systemd-nspawn --boot -D <overlay>   PID 1 is the container's systemd

Everything the container writes lands in the tmpfs upper layer, so it is
gone when the container stops; the checkout comes in read-only through
--bind-ro. The shell outlives each nspawn: when the machine reboots, nspawn
exits with status 133 and the shell boots it again on the same overlay, so
what was installed and configured survives the reboot (Container.reboot()).
SIGTERM to the shell goes on to nspawn, which halts the machine.

Commands run inside through nsenter into PID 1's namespaces, as
root or, via setpriv, as an ordinary user. Files can be read and written
from the host through /proc/<PID 1>/root.

Each container leaves only host-side names that carry the owner's pid
(cgroups harness.<owner>.<name>, RUN_DIR/<owner>.<name>[.log]), so
sweep_stale() can clean up after a crashed run without touching a live one.
SYSTEMD-TESTING.md section 2 records how this sequence was tested.

    with Container(f"pt{os.getpid()}", binds=[f"{src}:/opt/src"]) as c:
        c.run(["useradd", "-m", "-u", "2000", "alice"])
        print(c.run(["id"], user="alice").stdout)
"""

import errno
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

RUN_DIR = Path("/run/holdingpen-tests")
CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
# Hybrid cgroups: the memory controller is a v1 hierarchy of its own.
MEMORY_CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
PROPAGATE_DIR = Path("/run/systemd/nspawn/propagate")
# Enabled on the host, so the overlay would start them too: 2.6 s boot instead of 0.4 s.
MASKED_UNITS = ("postgresql.service", "postgresql@15-main.service")
# Debian's PATH for root, without the host's pyenv shims (which make
# setpriv'd users fail with "python3: Permission denied").
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
POLL_INTERVAL_S = 0.02

# Runs as "sh -c SCRIPT sh BASE CGROUP_PROCS... -- NSPAWN_ARGS...".
_START_SCRIPT = r"""
set -e
base=$1; shift
while [ "$1" != -- ]; do echo $$ > "$1"; shift; done; shift
mount -t tmpfs tmpfs "$base"
mkdir "$base/upper" "$base/work" "$base/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
for unit in $MASKED_UNITS; do ln -sf /dev/null "$base/root/etc/systemd/system/$unit"; done
# The host is an image-building one: its policy-rc.d forbids packages' scripts
# to start services, which a booted machine lets them do.
rm -f "$base/root/usr/sbin/policy-rc.d"
set +e
# The mounts live as long as this namespace, so the shell stays, and boots the
# machine again each time nspawn exits with 133 ("the container asked to reboot").
halt= nspawn=
trap 'halt=1; [ -z "$nspawn" ] || kill -TERM "$nspawn" 2>/dev/null' TERM INT
while :; do
    setpriv --pdeathsig TERM systemd-nspawn -D "$base/root" "$@" &
    nspawn=$!
    [ -z "$halt" ] || kill -TERM "$nspawn"          # a SIGTERM came before $! was set
    wait "$nspawn"; status=$?
    # A trapped signal interrupts wait (status > 128): wait again for nspawn's own status.
    while kill -0 "$nspawn" 2>/dev/null; do wait "$nspawn"; status=$?; done
    [ "$status" -eq 133 ] && [ -z "$halt" ] || exit "$status"
done
"""


class ContainerError(Exception):
    """The container could not be started or stopped."""


class CommandError(subprocess.CalledProcessError):
    """A command in the container failed; str() shows its output."""

    def __str__(self):
        return (f"{super().__str__()}\n--- stdout:\n{self.stdout}--- stderr:\n{self.stderr}")


class Container:
    """A booted systemd machine; use it as a context manager.

    Args:
        name: machine name; unique among concurrent runs (put os.getpid() in it).
        binds: "HOST:CONTAINER" pairs, bound read-only.
        boot_timeout_s: how long systemd may take to reach "running".
        capabilities: names to grant beyond nspawn's default set (--capability=),
            e.g. ["CAP_IPC_LOCK"]: nspawn leaves it out, so in a default container
            a unit's AmbientCapabilities=CAP_IPC_LOCK gives it nothing.
        memory_cgroup: also start the machine in a v1 memory cgroup of its own, so
            that memory_stat() tells what the machine's processes hold (memfds and
            tmpfs pages included) apart from the rest of a shared host.
    """

    def __init__(self, name, binds=(), boot_timeout_s=30.0, capabilities=(),
                 memory_cgroup=False):
        self.name = name
        self.binds = list(binds)
        self.capabilities = list(capabilities)
        self.boot_timeout_s = boot_timeout_s
        self.owner_pid = os.getpid()
        stem = f"{self.owner_pid}.{name}"
        self.base_dir = RUN_DIR / stem
        self.log_path = RUN_DIR / f"{stem}.log"
        self.cgroups = [root / f"harness.{stem}" for root in CGROUP_ROOTS]
        self.memory_cgroup = MEMORY_CGROUP_ROOT / f"harness.{stem}" if memory_cgroup else None
        if self.memory_cgroup is not None:
            self.cgroups.append(self.memory_cgroup)
        self.shell = None    # setpriv -> unshare -> sh: runs nspawn once per boot
        self.pid1 = None

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def start(self):
        """Boot the machine and wait until systemd reports "running"."""
        # PDEATHSIG fires when the spawning *thread* exits, not the process.
        if threading.current_thread() is not threading.main_thread():
            raise ContainerError("start containers from the main thread (PDEATHSIG is per thread)")
        if self.memory_cgroup is not None and not MEMORY_CGROUP_ROOT.is_dir():
            raise ContainerError(f"{self.name}: no {MEMORY_CGROUP_ROOT} (a v1 memory controller) "
                                 "for memory_cgroup=True")
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self.base_dir.mkdir()
        for cgroup in self.cgroups:
            # One cgroup per container: nspawn --keep-unit without a host systemd
            # puts payload/ and supervisor/ under the caller's cgroup, and two
            # containers sharing them break each other's `systemctl kill`.
            cgroup.mkdir()
        nspawn_args = ["--keep-unit", "--register=no", "-M", self.name, "--boot",
                       "--console=read-only", "--private-network"]
        nspawn_args += [f"--bind-ro={bind}" for bind in self.binds]
        if self.capabilities:
            nspawn_args.append(f"--capability={','.join(self.capabilities)}")
        argv = ["setpriv", "--pdeathsig", "TERM",
                "unshare", "-m", "--propagation", "private",
                "sh", "-c", _START_SCRIPT, "sh", str(self.base_dir),
                *[str(c / "cgroup.procs") for c in self.cgroups], "--", *nspawn_args]
        env = dict(os.environ, MASKED_UNITS=" ".join(MASKED_UNITS))
        with open(self.log_path, "wb") as log:
            self.shell = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.boot_timeout_s
        self.pid1 = self._wait_for_pid1(deadline)
        self._wait_until_running(deadline)

    def reboot(self, timeout_s=None):
        """Reboot the machine as an admin would (systemctl reboot); wait until it is "running".

        The file system survives (it is the same overlay); /run and /tmp start
        empty, as on a real machine, and so does every process. Stop your Jobs
        first: one that outlives SIGTERM holds up the shutdown for systemd's
        90 s (seen: "Waiting for process: 128 (journalctl)").

        Raises:
            ContainerError: the old boot did not end, or the new one did not reach "running".
        """
        timeout_s = self.boot_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        old_pid1 = self.pid1
        self.run(["systemctl", "reboot", "--no-block"])
        while _pid_alive(old_pid1) and _namespace_pids(old_pid1)[-1:] == [1]:
            self._check_shell_alive()
            if time.monotonic() > deadline:
                raise ContainerError(f"{self.name}: still up {timeout_s} s after "
                                     f"'systemctl reboot'{self._log_tail()}")
            time.sleep(POLL_INTERVAL_S)
        self.pid1 = self._wait_for_pid1(deadline, not_pid=old_pid1)
        self._wait_until_running(deadline)

    def _wait_for_pid1(self, deadline, not_pid=None):
        # The process below the shell that is PID 1 of a new pid namespace
        # ("NSpid: <host> 1"): nspawn's child, the shell's grandchild.
        while time.monotonic() < deadline:
            self._check_shell_alive()
            for pid in _descendants(self.shell.pid, depth=3):
                ns_pids = _namespace_pids(pid)
                if len(ns_pids) > 1 and ns_pids[-1] == 1 and pid != not_pid:
                    return pid
            time.sleep(POLL_INTERVAL_S)
        raise ContainerError(f"{self.name}: no PID 1 after {self.boot_timeout_s} s"
                             f"{self._log_tail()}")

    def _wait_until_running(self, deadline):
        state = ""
        while time.monotonic() < deadline:
            self._check_shell_alive()
            # Fails until PID 1 serves its private socket; then starting -> running.
            state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
            if state == "running":
                return
            if state == "degraded":
                failed = self.run(["systemctl", "--failed", "--no-legend"], check=False).stdout
                raise ContainerError(f"{self.name}: booted degraded, failed units:\n{failed}")
            time.sleep(POLL_INTERVAL_S)
        raise ContainerError(f"{self.name}: not running after {self.boot_timeout_s} s "
                             f"(state {state!r}){self._log_tail()}")

    def _check_shell_alive(self):
        if self.shell.poll() is not None:
            raise ContainerError(f"{self.name}: systemd-nspawn exited with status "
                                 f"{self.shell.returncode}{self._log_tail()}")

    def _log_tail(self, lines=30):
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return ""
        return f"\n--- last lines of {self.log_path}:\n" + "\n".join(tail)

    def stop(self, timeout_s=10.0):
        """Halt the machine and remove everything it left on the host."""
        if self.shell is not None and self.shell.poll() is None:
            # The shell passes SIGTERM to nspawn, which turns it into
            # SIGRTMIN+3 for PID 1: a clean halt. The shell waits for it.
            self.shell.terminate()
            try:
                self.shell.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.shell.kill()      # nspawn's pdeathsig stops it; _remove_leftovers the rest
                self.shell.wait()
        _remove_leftovers(self.cgroups, self.base_dir, self.name)
        self.pid1 = None

    def memory_stat(self):
        """The machine's memory cgroup's memory.stat as {name: bytes}, counted over
        all its processes (e.g. "total_shmem": memfd and tmpfs pages they allocated).

        Raises:
            ContainerError: the container was not made with memory_cgroup=True.
        """
        if self.memory_cgroup is None:
            raise ContainerError(f"{self.name}: no memory cgroup (Container(memory_cgroup=True))")
        text = (self.memory_cgroup / "memory.stat").read_text()
        return {name: int(value) for name, value in (line.split() for line in text.splitlines())}

    def path(self, path):
        """The host path of `path` inside the running container."""
        return Path(f"/proc/{self.pid1}/root") / str(path).lstrip("/")

    def _argv(self, argv, user, cwd):
        # setsid: the command leads its own process group, so Job can signal
        # the whole job from the host and nothing keeps our pipes open.
        prefix = ["nsenter", "-t", str(self.pid1), "-a",
                  "env", "-i", *(["-C", cwd] if cwd else []), f"PATH={CONTAINER_PATH}", "setsid"]
        if user is not None:
            prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                       "--reset-env"]
        return prefix + [str(a) for a in argv]

    def popen(self, argv, user=None, cwd=None):
        """Start argv in the container in the background; returns a Job.

        stdin, stdout and stderr are pipes (bytes). Stop it with Job.stop().
        """
        proc = subprocess.Popen(self._argv(argv, user, cwd), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        return Job(proc, argv)

    def run(self, argv, user=None, check=True, input=None, timeout_s=60.0, cwd=None):
        """Run argv in the container and wait; returns a CompletedProcess (text).

        Args:
            user: run as this user (name or uid) with a clean login-like environment.
            check: raise CommandError on a non-zero exit status.
            input: text for the command's stdin.
        Raises:
            CommandError, subprocess.TimeoutExpired (the job is killed first).
        """
        job = self.popen(argv, user=user, cwd=cwd)
        try:
            stdout, stderr = job.proc.communicate(input.encode() if input else None, timeout_s)
        except subprocess.TimeoutExpired as e:
            job.stop(signal.SIGKILL)
            raise subprocess.TimeoutExpired(argv, timeout_s) from e
        done = subprocess.CompletedProcess(argv, job.proc.returncode,
                                           stdout.decode(errors="replace"),
                                           stderr.decode(errors="replace"))
        if check and done.returncode != 0:
            raise CommandError(done.returncode, argv, done.stdout, done.stderr)
        return done

    def journal(self, *args):
        """journalctl's output inside the container, e.g. journal("-u", "x.service")."""
        return self.run(["journalctl", "--no-pager", *args]).stdout


class Job:
    """A command started by Container.popen().

    `proc` is the host's nsenter; `host_pid` is the command itself (nsenter's
    only child, which execs env, setsid, setpriv and then the command).
    """

    def __init__(self, proc, argv):
        self.proc = proc
        self.argv = argv
        self._stdout = b""
        self._host_pid = None

    @property
    def host_pid(self):
        """The command's pid on the host, or None if it has already gone."""
        if self._host_pid is None:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    pids = children.read_text().split()
                except FileNotFoundError:
                    pids = []
                if pids:
                    self._host_pid = int(pids[0])
                    break
                time.sleep(POLL_INTERVAL_S)
        return self._host_pid

    @property
    def pid(self):
        """The command's pid as the container sees it."""
        return _namespace_pids(self.host_pid)[-1]

    def read_line(self, timeout_s=10.0):
        """The next line the command writes to stdout, without its newline.

        Raises:
            TimeoutError: no complete line within timeout_s (or the command ended).
        """
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._stdout:
            left_s = deadline - time.monotonic()
            if left_s <= 0 or not select.select([fd], [], [], left_s)[0]:
                raise TimeoutError(f"{self.argv}: no line on stdout within {timeout_s} s; "
                                   f"so far {self._stdout!r}")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise TimeoutError(f"{self.argv}: stdout closed before a full line; "
                                   f"so far {self._stdout!r}; stderr {self._stderr_now()!r}")
            self._stdout += chunk
        line, self._stdout = self._stdout.split(b"\n", 1)
        return line.decode(errors="replace")

    def _stderr_now(self):
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read().decode(errors="replace")

    def finish(self, timeout_s=10.0):
        """Close stdin, wait for the exit; returns (returncode, stdout, stderr)."""
        stdout, stderr = self.proc.communicate(timeout=timeout_s)
        return (self.proc.returncode, (self._stdout + stdout).decode(errors="replace"),
                stderr.decode(errors="replace"))

    def stop(self, signum=signal.SIGTERM, timeout_s=5.0):
        """Signal the command's process group; SIGKILL it if it outlives timeout_s.

        Returns the exit status of nsenter, which is the command's.
        """
        if self.proc.poll() is None and self.host_pid is not None:
            _signal_group(self.host_pid, signum)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.host_pid, signal.SIGKILL)
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # nsenter itself; the container's halt reaps the rest
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            pipe.close()
        return self.proc.wait()


def _signal_group(pgid, signum):
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _namespace_pids(host_pid):
    """[host pid, ..., innermost pid] from /proc/PID/status, or [] if it is gone."""
    try:
        for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(p) for p in line.split()[1:]]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return []


def _descendants(pid, depth):
    """pid's children, grandchildren, ... down to depth generations."""
    found, generation = [], [pid]
    for _ in range(depth):
        children = []
        for parent in generation:
            try:
                text = Path(f"/proc/{parent}/task/{parent}/children").read_text()
                children += map(int, text.split())
            except (FileNotFoundError, ProcessLookupError):
                pass
        found += children
        generation = children
    return found


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cgroup_tree(root):
    """root and every cgroup below it, deepest first (the order rmdir needs)."""
    dirs = [Path(d) for d, _, _ in os.walk(root)]
    return sorted(dirs, key=lambda d: len(d.parts), reverse=True)


def _remove_cgroup(root, timeout_s=5.0):
    """SIGKILL whatever still runs in root's tree, then rmdir the tree."""
    deadline = time.monotonic() + timeout_s
    while True:
        busy = False
        for cgroup in _cgroup_tree(root):
            try:
                pids = (cgroup / "cgroup.procs").read_text().split()
            except FileNotFoundError:
                continue
            for pid in pids:
                busy = True
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not pids:
                try:
                    cgroup.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as e:
                    # EBUSY: a zombie still counts; retry until the deadline.
                    if e.errno != errno.EBUSY:
                        raise
                    busy = True
        if not busy and not root.exists():
            return
        if time.monotonic() > deadline:
            raise ContainerError(f"cannot remove cgroup {root}: processes keep running in it")
        time.sleep(POLL_INTERVAL_S)


def _remove_leftovers(cgroups, base_dir, name):
    for cgroup in cgroups:
        if cgroup.exists():
            _remove_cgroup(cgroup)
    # A SIGKILLed nspawn leaves this behind; on the host it is a plain directory.
    shutil.rmtree(PROPAGATE_DIR / name, ignore_errors=True)
    try:
        # Only a mount point inside the private namespace; empty on the host.
        base_dir.rmdir()
    except FileNotFoundError:
        pass


def _owner_and_name(stem):
    """("1234", "pt1234") from "1234.pt1234", or None for a foreign name."""
    owner, _, name = stem.partition(".")
    return (int(owner), name) if owner.isdigit() and name else None


def sweep_stale():
    """Remove what containers of runs that have died left behind.

    Touches only leftovers whose owner pid is dead: sweeping anything "empty"
    raced parallel test workers that were just starting their containers.
    Kills a container whose pytest and nspawn were both SIGKILLed.
    """
    stale = set()  # (owner pid, name)
    for root in (*CGROUP_ROOTS, MEMORY_CGROUP_ROOT):
        for cgroup in root.glob("harness.*"):
            parsed = _owner_and_name(cgroup.name.removeprefix("harness."))
            if parsed:
                stale.add(parsed)
    if RUN_DIR.is_dir():
        for entry in RUN_DIR.iterdir():
            parsed = _owner_and_name(entry.name.removesuffix(".log"))
            if parsed:
                stale.add(parsed)
    for owner, name in stale:
        if _pid_alive(owner):
            continue
        stem = f"{owner}.{name}"
        cgroups = [root / f"harness.{stem}" for root in (*CGROUP_ROOTS, MEMORY_CGROUP_ROOT)]
        _remove_leftovers(cgroups, RUN_DIR / stem, name)
        (RUN_DIR / f"{stem}.log").unlink(missing_ok=True)
