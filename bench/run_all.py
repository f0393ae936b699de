"""Run every benchmark on one device and collect their results into one JSON file.

Run: ``python bench/run_all.py --device cuda --data-dir /tmp/data --out results/bench_cuda`` (``--quick`` for
fewer repeats; ``--with-stream`` adds the 250-task stream, which takes tens of minutes).

Each benchmark runs as its own process (so one failing does not lose the others) and writes its JSON into
``--out``; ``all.json`` there gathers them with each one's command, exit status and wall seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).parent


def accepts_device(script: str) -> bool:
    """Whether ``script`` has a ``--device`` option."""
    text = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True).stdout
    return "--device" in text


def commands(args: argparse.Namespace) -> dict[str, list[str]]:
    """Benchmark name -> command line (without the interpreter)."""
    repeats = ["--repeats", "3"] if args.quick else []
    out = args.out
    runs = {f"layers_{net}": ["bench_layers.py", "--network", net, "--threads", str(args.threads),
                              "--json", str(out / f"layers_{net}.json"), *repeats,
                              *(["--batch", "32", "--steps", "5", "--eval-steps", "20"] if net == "gem_resnet18"
                                and args.device == "cpu" else [])]
            for net in ("fc1024", "lenet_300_100", "gem_resnet18")}
    runs["fit"] = ["bench_fit.py", "--data-dir", str(args.data_dir), "--run-dir", str(out / "fit_runs"),
                   "--threads", str(args.threads), "--json", str(out / "fit.json"), "--batches-per-step", "8", *repeats]
    runs["inference"] = ["bench_inference.py", "--json", str(out / "inference.json")]
    if args.with_stream:
        runs["stream"] = ["bench_stream.py", "--run-dir", str(out / "stream_run"), "--threads", str(args.threads),
                          "--json", str(out / "stream.json"), "--plot", str(out / "stream.png"),
                          "--", "--data.init_args.data_dir", str(args.data_dir)]
    for cmd in runs.values():
        if accepts_device(cmd[0]):
            cmd[1:1] = ["--device", args.device]  # before any "--" that passes the rest on to fit
    return runs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with MNIST/raw (for fit and stream)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON files")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the CPU-side benches")
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of the defaults")
    parser.add_argument("--with-stream", action="store_true", help="also run the 250-task stream")
    parser.add_argument("--only", nargs="+", default=None, help="run only these benchmarks (names in all.json)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, cmd in commands(args).items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(BENCH / cmd[0]), *cmd[1:]], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        (args.out / f"{name}.log").write_text(proc.stdout + proc.stderr)
        json_path = next((Path(cmd[i + 1]) for i, a in enumerate(cmd) if a == "--json"), None)
        result = json.loads(json_path.read_text()) if proc.returncode == 0 and json_path and json_path.exists() else None
        results[name] = {"command": " ".join(["python", "bench/" + cmd[0], *cmd[1:]]), "returncode": proc.returncode,
                         "seconds": seconds, "result": result}
        print(f"{name}: exit {proc.returncode} in {seconds:.0f} s" + ("" if proc.returncode == 0 else
                                                                     f" (see {args.out / (name + '.log')})"))
        print(proc.stdout[-2000:])
    (args.out / "all.json").write_text(json.dumps({"device": args.device, "benchmarks": results}, indent=1))
    print(f"wrote {args.out / 'all.json'}")
    return results


if __name__ == "__main__":
    main()
