"""What the benchmarks share: the installed launchers, a lock file, statistics."""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from holdingpen import install  # noqa: E402

PYTHON = "/usr/bin/python3"


class Setup:
    """A temporary directory with the launchers (as installed) and a lock file."""

    def __enter__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="holdingpen-bench."))
        self.lock = self.dir / "machine.lock"
        self.lock.touch()
        install.write_launchers(self.dir, REPO, PYTHON, install.entry_points(REPO))
        self.env = dict(os.environ, PATH=f"{self.dir}:{os.environ['PATH']}",
                        PERFLOCK_LOCK=str(self.lock))
        return self

    def __exit__(self, *exc):
        import shutil
        shutil.rmtree(self.dir)

    def cmd(self, name):
        return str(self.dir / name)


def wall_ms(argv, runs, env=None):
    """Wall times in ms of running argv to completion, runs times."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True)
        times.append((time.perf_counter() - start) * 1000)
    return times


def median(xs):
    return statistics.median(xs)


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def report(name, xs, unit="ms"):
    print(f"  {name:<34} median {median(xs):8.3f} {unit}   p99 {percentile(xs, 99):8.3f} {unit}"
          f"   (n={len(xs)})")
