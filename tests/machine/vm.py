"""The machine tier's harness: a throw-away Debian 12 VM under qemu.

Build (cached), boot, run a job, collect:

    image = build_image()                     # /var/cache/holdingpen-tests/image-<hash>/
    with JobDir(CHECKOUT, install, ["gatekeeper"]) as job:
        run = run_vm(image, job.path, timeout_s=1200)
        job.results()                         # the guest's results.json

The image is Debian 12 from Debian's packages (mmdebstrap, image.sh), cached
under a hash of image.sh and the package list. Each boot gets a copy-on-write
overlay, so the cached image stays pristine, and a directory shared both ways
(9p): the checkout's tracked files and the guest scripts in, results out.
The guest runs the job at boot and powers off. qemu is killed by its pid when
its time is up: a hung guest never hangs the tests.

KVM is tried first with a short deadline (the kernel's first line on the
serial console); where it hangs (a stock kernel under KVM stops after
"Probing EDD" on some hosts) the run falls back to TCG, several times slower.
"""

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from helpers import readme_install_command

HERE = Path(__file__).resolve().parent
CACHE_DIR = Path("/var/cache/holdingpen-tests")
IMAGE_SCRIPT = HERE / "image.sh"
GUEST_DIR = HERE / "guest"
# What the image holds. Not holdingpen's libraries (python3-psutil,
# python3-systemd, python3-jeepney): the install must bring them. libpam-systemd
# so that users' logins are logind sessions, as at a workstation. The package's
# build dependencies are in the image, so that the install does not fetch and
# unpack them on an emulated CPU in every run (the image is cached).
IMAGE_PACKAGES = ("systemd", "systemd-sysv", "udev", "linux-image-amd64", "python3",
                  "polkitd", "dbus", "libpam-systemd", "procps", "util-linux",
                  "dpkg-dev", "debhelper", "dh-python", "pybuild-plugin-pyproject",
                  "python3-all", "python3-setuptools")
HOST_TOOLS = {"qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils",
              "mmdebstrap": "mmdebstrap", "git": "git"}
# guest/scenario.py's scenarios the tests assert on, in one boot: "loaded" (the
# program without holdingpen) shows the thrasher's pressure is real; the
# benchmark adds "idle".
TIER_SCENARIOS = ("loaded", "gatekeeper", "gatekeeper-fd")
MEMORY_MIB = 3072
CPUS = 2
BUILD_TIMEOUT_S = 900
STALE_IMAGE_S = 24 * 3600
KVM_DEADLINE_S = 15.0          # a working KVM guest prints its kernel's first line in ~1 s
BOOTED_MARKER = b"Linux version"


class VMError(Exception):
    """The VM could not be built, booted or finished in time; the message says what to look at."""


def platform_problem():
    """Why this machine cannot run the tier, or None."""
    if os.geteuid() != 0:
        return "machine tests need root: they build a disk image and boot it with qemu"
    for tool, package in HOST_TOOLS.items():
        if shutil.which(tool) is None:
            return f"{tool} not found: apt-get install {package}"
    return None


def image_key(script_bytes, packages):
    """The cache key of an image: what it is made from (pure)."""
    digest = hashlib.sha256(script_bytes)
    digest.update("\0".join(sorted(packages)).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Image:
    path: Path          # holds disk.img, vmlinuz, initrd.img
    built_s: float      # 0.0 when it came from the cache

    @property
    def disk(self):
        return self.path / "disk.img"


def build_image(cache_dir=CACHE_DIR, packages=IMAGE_PACKAGES, log=print):
    """The cached image for image.sh and packages, built first if need be.

    Concurrent runs wait for one another (a lock in cache_dir). A finished
    image is renamed into place, so a half-built one is never used. Images
    of other keys unused for a day are removed (not at once: a run of
    another checkout may be booting one).

    Raises:
        VMError: mmdebstrap or mkfs failed or took too long; the message has
            the end of its output.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = image_key(IMAGE_SCRIPT.read_bytes(), packages)
    final = cache_dir / f"image-{key}"
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "disk.img").exists():
            os.utime(final)         # in use: see below
            return Image(final, 0.0)
        for old in cache_dir.glob("image-*"):
            if time.time() - old.stat().st_mtime > STALE_IMAGE_S:
                shutil.rmtree(old, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix="build.", dir=cache_dir))
        log(f"machine tier: building the Debian 12 image {key} (a few minutes, once)")
        started = time.monotonic()
        try:
            done = subprocess.run([str(IMAGE_SCRIPT), str(work), *packages],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=BUILD_TIMEOUT_S)
            if done.returncode != 0:
                tail = done.stdout.decode(errors="replace")[-3000:]
                raise VMError(f"image.sh failed (status {done.returncode}):\n{tail}")
            work.rename(final)
        except subprocess.TimeoutExpired:
            raise VMError(f"image.sh took over {BUILD_TIMEOUT_S} s; is the archive reachable?")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return Image(final, time.monotonic() - started)






def tracked_files(checkout):
    """The checkout's tracked files that exist in its working tree, as paths relative to it."""
    listed = subprocess.run(["git", "-C", str(checkout), "ls-files", "-z"],
                            capture_output=True, check=True).stdout
    return [name for name in listed.decode().split("\0") if name and (checkout / name).is_file()]


class JobDir:
    """The directory shared with the guest: what it runs, and what it writes back.

    Args:
        checkout: its tracked files are copied in (src/), as a clone has them.
        install: the install command, run in src/ as root.
        scenarios: names for guest/scenario.py.
    """

    def __init__(self, checkout, install, scenarios):
        self.checkout, self.install, self.scenarios = Path(checkout), install, list(scenarios)
        self.path = None

    def __enter__(self):
        self.path = Path(tempfile.mkdtemp(prefix="holdingpen-vm."))
        self.path.chmod(0o755)      # the guest's users (alice, bob) run the scripts in it
        for name in tracked_files(self.checkout):
            (self.path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.checkout / name, self.path / "src" / name)
        shutil.copytree(GUEST_DIR, self.path / "guest")
        shutil.copy2(GUEST_DIR / "job.sh", self.path / "job.sh")
        (self.path / "job.env").write_text(
            f"INSTALL='{self.install}'\nSCENARIOS='{' '.join(self.scenarios)}'\n")
        return self

    def __exit__(self, *exc_info):
        shutil.rmtree(self.path, ignore_errors=True)

    def results(self):
        """The guest's results.json as a dict ({} if it wrote none)."""
        path = self.path / "results.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def log(self):
        """The job's output in the guest (job.log), or ''."""
        path = self.path / "job.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class Run:
    accel: str          # "kvm" or "tcg"
    why: str            # why this accelerator
    elapsed_s: float    # boot + job + power-off
    console: str        # the serial console


def qemu_argv(image, overlay, job_dir, console, accel):
    return ["qemu-system-x86_64", *accel, "-m", str(MEMORY_MIB), "-smp", str(CPUS),
            "-kernel", str(image.path / "vmlinuz"), "-initrd", str(image.path / "initrd.img"),
            "-append", "root=/dev/vda rw console=ttyS0",
            "-drive", f"file={overlay},if=virtio,format=qcow2",
            "-virtfs", f"local,path={job_dir},mount_tag=job,security_model=none",
            "-nic", "user,model=virtio-net-pci",
            "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
            "-no-reboot"]


ACCELS = {"kvm": ["-accel", "kvm", "-cpu", "host"],
          "tcg": ["-accel", "tcg,thread=multi", "-cpu", "max"]}


class _Qemu:
    """One qemu process on a fresh overlay; killed by pid, overlay removed, on close."""

    def __init__(self, image, job_dir, accel, scratch_dir=None):
        self.dir = Path(tempfile.mkdtemp(prefix="holdingpen-qemu.", dir=scratch_dir))
        self.overlay, self.console = self.dir / "run.qcow2", self.dir / "console.log"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.disk),
                        "-F", "raw", str(self.overlay)], check=True)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(qemu_argv(image, self.overlay, job_dir, self.console,
                                               ACCELS[accel]),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)

    def console_text(self):
        try:
            return self.console.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, marker, timeout_s):
        """True once marker is on the console; False if qemu ended or time ran out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.console.exists() and marker in self.console.read_bytes():
                return True
            time.sleep(0.2)
        return False

    def wait(self, timeout_s):
        """Wait for the guest to power off: True, or False after timeout_s (qemu is killed then).

        Raises:
            VMError: qemu itself failed.
        """
        try:
            self.proc.wait(timeout=max(0.0, timeout_s))
        except subprocess.TimeoutExpired:
            self.proc.kill()        # our own child, by pid
            self.proc.wait()
            return False
        if self.proc.returncode != 0:
            raise VMError(f"qemu exited with {self.proc.returncode}: "
                          + self.proc.stdout.read().decode(errors="replace")[-2000:])
        return True

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()        # our own child, by pid
            self.proc.wait()
        self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_vm(image, job_dir, timeout_s, accels=("kvm", "tcg"), scratch_dir=None):
    """Boot image with job_dir shared, until the guest powers off; which accelerator, how long.

    Each accelerator but the last gets KVM_DEADLINE_S to show the kernel
    started; then the next is tried on a fresh overlay. The overlay and the
    console's log live in a temporary directory under scratch_dir (default:
    the system's), removed at the end.

    Raises:
        VMError: no accelerator booted, or the guest did not power off within
            timeout_s; nothing is left running either way.
    """
    why = ""
    for accel in accels:
        if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
            why = "no usable /dev/kvm"
            continue
        qemu = _Qemu(image, job_dir, accel, scratch_dir)
        try:
            if accel != accels[-1] and not qemu.wait_for(BOOTED_MARKER, KVM_DEADLINE_S):
                why = (f"{accel} showed no kernel output within {KVM_DEADLINE_S:.0f} s "
                       f"(console ends: {qemu.console_text()[-80:].strip()!r})")
                continue
            if not qemu.wait(timeout_s - (time.monotonic() - qemu.started)):
                raise VMError(f"the VM did not finish within {timeout_s:.0f} s on {accel}; "
                              "console ends:\n" + qemu.console_text()[-3000:])
            return Run(accel, why or f"{accel} booted", time.monotonic() - qemu.started,
                       qemu.console_text())
        finally:
            qemu.close()
    raise VMError(f"no accelerator could boot the VM: {why}")


@dataclass
class Outcome:
    """What one VM run of the scenario gave back."""
    image: Image
    run: Run
    results: dict       # the guest's results.json: "install", "facts", "runs"
    job_log: str        # the guest job's output


def run_scenarios(checkout, scenarios, timeout_s, log=print):
    """Build (or reuse) the image, boot it once, install the checkout as its README says,
    run guest/scenario.py's scenarios in that one boot, and collect.

    Raises:
        VMError, LookupError (README.md has no install command).
    """
    install = readme_install_command(Path(checkout) / "README.md")
    image = build_image(log=log)
    with JobDir(checkout, install, scenarios) as job:
        run = run_vm(image, job.path, timeout_s)
        return Outcome(image, run, job.results(), job.log())
