"""Wrapper overhead: `perflock true`, `pls true` and `wholock` beside flock(1) and a bare Python start.

Goal: perflock adds at most 10 ms to a bare Python start (python3 -I -c pass).
wholock (on a free lock) has no goal of its own; it is here so that it does not creep.
Runs are interleaved so that a noisy neighbour slows every command alike.
"""

import sys

from benchlib import PYTHON, Setup, median, report, wall_ms

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 200


def main():
    with Setup() as s:
        commands = {
            "true": ["true"],
            "flock LOCK true": ["flock", str(s.lock), "true"],
            "python3 -I -c pass": [PYTHON, "-I", "-c", "pass"],
            "perflock true": [s.cmd("perflock"), "true"],
            "pls true": [s.cmd("pls"), "true"],
            "wholock": [s.cmd("wholock")],
        }
        times = {name: [] for name in commands}
        for name, argv in commands.items():      # warm the page cache
            wall_ms(argv, 3, s.env)
        for _ in range(RUNS):
            for name, argv in commands.items():
                times[name] += wall_ms(argv, 1, s.env)
    print(f"wrapper overhead, {RUNS} interleaved runs each:")
    for name, xs in times.items():
        report(name, xs)
    base = median(times["python3 -I -c pass"])
    for name in ("perflock true", "pls true"):
        print(f"  {name} adds {median(times[name]) - base:.2f} ms to a bare Python start "
              f"(goal: at most 10 ms); {median(times[name]) / median(times['flock LOCK true']):.1f}x flock(1)")
    print(f"  wholock adds {median(times['wholock']) - base:.2f} ms to a bare Python start")


if __name__ == "__main__":
    main()
