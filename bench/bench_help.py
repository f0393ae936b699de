"""Start-up benchmark: wall time of ``impress-lightning --help`` (and, for scale, ``fit --help``), in one run.

Run: ``python bench/bench_help.py [--repeats 5]``

Each command runs ``--repeats`` times as a fresh ``python -m impress_lightning`` process with this checkout
first on ``PYTHONPATH``, interleaved so machine-load drift hits them alike. The table shows the median and
minimum wall time and the median ratio to ``python -c pass`` (the interpreter's own start-up) measured in the
same rounds, and whether the median is within the 3 s target of ``--help``. ``fit --help`` imports Lightning
and builds the whole LightningCLI parser, so it is shown for scale, not held to that target.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "impress-lightning --help": [sys.executable, "-m", "impress_lightning", "--help"],
    "impress-lightning fit --help": [sys.executable, "-m", "impress_lightning", "fit", "--help"],
}
TARGET_SECONDS = {"impress-lightning --help": 3.0}


def wall_time(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of every command (median reported)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            times[name].append(wall_time(command, env))
    reference = times["python -c pass"]
    print(f"{'command':<30} {'median s':>9} {'min s':>7} {'x python':>9}  target")
    for name, samples in times.items():
        ratio = statistics.median(s / r for s, r in zip(samples, reference))
        target = TARGET_SECONDS.get(name)
        verdict = "" if target is None else ("ok" if statistics.median(samples) < target else "MISSED") + f" (< {target} s)"
        print(f"{name:<30} {statistics.median(samples):>9.2f} {min(samples):>7.2f} {ratio:>9.1f}  {verdict}")


if __name__ == "__main__":
    main()
