"""Layer benchmark: training and evaluation speed of supermask variants vs a dense network, in one run.

Run: ``python bench/bench_layers.py [--threads N] [--repeats 7] [--json out.json] [--profile combine]``

Network FC-1024 (784-1024-1024-10, bias-free), batch 128, random data. Variants:

- ``dense``: plain ``nn.Linear`` network, Adam on its weights (the reference for training ratios);
- ``mask``: top-k mask learning, ``LearnMask(TopK(0.1))``, Adam on the scores;
- ``combine``: α-combination of K impressions (per-layer α ``[L, K]``), Adam on α;
- ``cached_eval``: no-grad forward of the α-combination with ``cache_key`` (materialised weights);
- ``dense_eval``: no-grad forward of the dense network (the reference for evaluation ratios).

All variants are timed in the same process, interleaved (the order rotates every repeat) so machine-load
drift hits them alike; each repeat times ``--steps`` training (``--eval-steps`` evaluation) steps after
``--warmup`` untimed ones. The table shows the median steps/s over repeats and the median per-repeat ratio to
the dense reference (dense training for training variants, dense evaluation for evaluation variants).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from impress_lightning.backbones import build_backbone
from impress_lightning.nn import Combine, LearnMask, SupermaskNet, TopK

TARGETS = {"combine": 0.8, "cached_eval": 0.95}  # ratio to dense the design asks for
REFERENCE = {"dense": "dense", "mask": "dense", "combine": "dense", "cached_eval": "dense_eval",
             "dense_eval": "dense_eval"}


@dataclass
class Variant:
    """One benchmarked workload: ``step()`` runs one training or evaluation step."""

    name: str
    description: str
    step: Callable[[], None]


def dense_network(hidden: int = 1024) -> nn.Sequential:
    """784-1024-1024-10 bias-free ReLU MLP (the same shapes as the ``fc1024`` backbone)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden, bias=False), nn.ReLU(),
                         nn.Linear(hidden, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, 10, bias=False))


def train_step(forward: Callable[[torch.Tensor], torch.Tensor], opt: torch.optim.Optimizer,
               batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], None]:
    """A closure running one optimisation step on the next batch (cycling through ``batches``)."""
    state = {"i": 0}

    def step() -> None:
        x, y = batches[state["i"] % len(batches)]
        state["i"] += 1
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x), y).backward()
        opt.step()

    return step


def eval_step(forward: Callable[[torch.Tensor], torch.Tensor],
              batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], None]:
    """A closure running one no-grad forward pass on the next batch."""
    state = {"i": 0}

    def step() -> None:
        x, _ = batches[state["i"] % len(batches)]
        state["i"] += 1
        with torch.no_grad():
            forward(x)

    return step


def build_variants(k: int, density: float, batch: int, seed: int) -> list[Variant]:
    """The five workloads, each with its own model and optimiser, sharing the same random batches."""
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(batch, 1, 28, 28, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
               for _ in range(4)]

    torch.manual_seed(seed)
    dense = dense_network()
    dense_opt = torch.optim.Adam(dense.parameters(), lr=1e-3)

    mask_net = SupermaskNet(build_backbone("fc1024", (1, 28, 28), 10, bank_capacity=k, num_tasks=1, seed=seed))
    rule = TopK(density)
    mask_opt = torch.optim.Adam([layer.scores for layer in mask_net.layers], lr=1e-3)

    combo_net = SupermaskNet(build_backbone("fc1024", (1, 28, 28), 10, bank_capacity=k, num_tasks=1, seed=seed))
    for j in range(k):  # K impressions at the benchmark density (random scores, top-k rule)
        for layer in combo_net.layers:
            layer.bank.add(rule(torch.rand(layer.weight.shape, generator=gen)).bool())
    alpha = nn.Parameter(torch.full((combo_net.num_layers, k), 1.0 / k))
    alpha_opt = torch.optim.Adam([alpha], lr=1e-2)
    frozen_alpha = alpha.detach().clone()  # a finished task: its α no longer changes

    return [
        Variant("dense", "dense nn.Linear training (Adam on weights)", train_step(dense, dense_opt, batches)),
        Variant("mask", f"top-k mask learning, density {density} (Adam on scores)",
                train_step(lambda x: mask_net(x, LearnMask(rule)), mask_opt, batches)),
        Variant("combine", f"alpha-combination of K={k} impressions, per-layer alpha (Adam on alpha)",
                train_step(lambda x: combo_net(x, Combine(alpha)), alpha_opt, batches)),
        Variant("cached_eval", "evaluation, cached combined weights (no_grad, cache_key)",
                eval_step(lambda x: combo_net(x, Combine(frozen_alpha), cache_key=0), batches)),
        Variant("dense_eval", "evaluation, dense network (no_grad)", eval_step(dense, batches)),
    ]


def measure(variants: list[Variant], steps: dict[str, int], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Steps/s of every variant per repeat, interleaved, the starting variant rotating each repeat."""
    for v in variants:
        for _ in range(warmup):
            v.step()
    rates: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(repeats):
        for v in variants[r % len(variants):] + variants[: r % len(variants)]:
            start = time.perf_counter()
            for _ in range(steps[v.name]):
                v.step()
            rates[v.name].append(steps[v.name] / (time.perf_counter() - start))
    return rates


def summarise(variants: list[Variant], rates: dict[str, list[float]]) -> list[dict]:
    """One row per variant: median steps/s, spread, and the ratio to its dense reference.

    The ratio is the median of per-repeat ratios: both rates of a repeat were measured close together in
    time, so pairing them cancels most of the drift from other processes on the machine.
    """
    medians = {name: statistics.median(r) for name, r in rates.items()}
    rows = []
    for v in variants:
        ref = REFERENCE[v.name]
        ratio = statistics.median(a / b for a, b in zip(rates[v.name], rates[ref]))
        target = TARGETS.get(v.name)
        rows.append({"variant": v.name, "description": v.description, "steps_per_s": medians[v.name],
                     "min": min(rates[v.name]), "max": max(rates[v.name]), "ratio": ratio,
                     "reference": REFERENCE[v.name], "target": target,
                     "meets_target": None if target is None else ratio >= target, "all": rates[v.name]})
    return rows


def print_table(rows: list[dict], header: str) -> None:
    """Human-readable table of :func:`summarise` rows."""
    print(header)
    print(f"{'variant':<12} {'steps/s':>9} {'(min-max)':>15} {'ratio':>7}  {'vs':<10} {'target':<10}  description")
    for row in rows:
        target = "" if row["target"] is None else (f">={row['target']:.2f}" + (" ok" if row["meets_target"] else " MISS"))
        spread = f"({row['min']:.1f}-{row['max']:.1f})"
        print(f"{row['variant']:<12} {row['steps_per_s']:>9.1f} {spread:>15} {row['ratio']:>6.2f}x  "
              f"{row['reference']:<10} {target:<10}  {row['description']}")


def profile(variant: Variant, steps: int) -> None:
    """Print the torch.profiler operator table of ``steps`` steps of one variant."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for _ in range(3):
        variant.step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            variant.step()
    print(f"\nprofile of {variant.name} ({steps} steps), self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per variant per repeat")
    parser.add_argument("--eval-steps", type=int, default=80,
                        help="timed evaluation steps per variant per repeat (evaluation steps are ~4x shorter)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant before timing")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats (median reported)")
    parser.add_argument("--batch", type=int, default=128, help="batch size")
    parser.add_argument("--k", type=int, default=10, help="impressions combined")
    parser.add_argument("--density", type=float, default=0.1, help="top-k density of masks / impressions")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, backbones and impressions")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--profile", choices=["dense", "mask", "combine", "cached_eval", "dense_eval"],
                        default=None, help="after measuring, print a torch.profiler table for one variant")
    args = parser.parse_args(argv)
    for name in ("threads", "steps", "eval_steps", "repeats", "batch", "k"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    torch.set_num_threads(args.threads)
    variants = build_variants(args.k, args.density, args.batch, args.seed)
    steps = {v.name: args.eval_steps if v.name.endswith("eval") else args.steps for v in variants}
    rates = measure(variants, steps, args.warmup, args.repeats)
    rows = summarise(variants, rates)
    header = (f"FC-1024 784-1024-1024-10, batch {args.batch}, K={args.k}, density {args.density}, "
              f"threads {args.threads}, torch {torch.__version__}, {args.repeats} repeats of "
              f"{args.steps} train / {args.eval_steps} eval steps; ratio = median of per-repeat ratios")
    print_table(rows, header)
    result = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "rows": rows}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    if args.profile is not None:
        profile(next(v for v in variants if v.name == args.profile), args.steps)
    return result


if __name__ == "__main__":
    main()
