"""Layer benchmark: training and evaluation speed of supermask variants vs a dense network, in one run.

Run: ``python bench/bench_layers.py [--network fc1024] [--device cpu] [--threads N] [--repeats 7] [--json out.json]``

Network ``--network`` (FC-1024 784-1024-1024-10 by default; LeNet-300-100; GEM ResNet-18 on 3x32x32), all
bias-free, batch 128, random data, 10 outputs. Variants:

- ``dense``: the same network as plain torch modules, Adam on its weights (the reference for training ratios);
- ``mask``: top-k mask learning, ``LearnMask(TopK(density))``, Adam on the scores;
- ``mask_torch_ops``: the same, with the library's selection in torch operations (what runs on GPUs, and on
  the CPU when the compiled kernel is not built);
- ``mask_torch_topk``: the same with the mask taken by ``torch.topk`` on ``|scores|`` and multiplied in as a
  float tensor (the library's earlier implementation, kept here as the reference for the speed-up);
- ``threshold``: threshold mask learning, ``LearnMask(Threshold(0))`` (SupSup's rule), Adam on the scores;
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
import copy
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

from impress_lightning.backbones import build_backbone, plain_backbone
from impress_lightning.nn import Combine, LearnMask, MaskRule, SupermaskNet, Threshold, TopK, select
from impress_lightning.nn.masks import _TopKMaskedWeight, kept_count

TARGETS = {"mask": 0.6, "threshold": 0.6, "combine": 0.8, "cached_eval": 0.95}  # ratio to dense asked for
REFERENCE = {"dense": "dense", "mask": "dense", "mask_torch_ops": "dense", "mask_torch_topk": "dense", "threshold": "dense",
             "combine": "dense", "cached_eval": "dense_eval", "dense_eval": "dense_eval"}
NETWORKS = {"fc1024": (1, 28, 28), "lenet_300_100": (1, 28, 28), "gem_resnet18": (3, 32, 32)}  # input shapes


@dataclass
class Variant:
    """One benchmarked workload: ``step()`` runs one training or evaluation step."""

    name: str
    description: str
    step: Callable[[], None]


class TorchOpsTopK(TopK):
    """The library's top-k rule with its selection in torch operations, never the compiled CPU kernel."""

    def masked_weight(self, scores: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return _TorchOpsMaskedWeight.apply(scores, weight, kept_count(scores.numel(), self.layer_density(scores.shape)))


class _TorchOpsMaskedWeight(_TopKMaskedWeight):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, weight: torch.Tensor, k: int) -> torch.Tensor:
        ctx.save_for_backward(scores, weight)
        return select._torch_topk_masked(scores, weight, k)


class TorchTopK(TopK):
    """The top-k rule as the library computed it before the radix select: ``torch.topk`` on ``|scores|`` in the
    graph, the mask scattered into a float tensor and multiplied by the weight (bench reference only)."""

    def masked_weight(self, scores: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * _TopKFloatMask.apply(scores.abs(), round(self.density * scores.numel()))


class _TopKFloatMask(torch.autograd.Function):
    @staticmethod
    def forward(ctx, magnitudes: torch.Tensor, k: int) -> torch.Tensor:
        flat = magnitudes.detach().flatten()
        mask = torch.zeros_like(flat)
        mask[flat.topk(k, sorted=False).indices] = 1.0
        return mask.view_as(magnitudes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


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


def build_variants(network: str, k: int, density: float, batch: int, seed: int,
                   device: torch.device) -> list[Variant]:
    """The workloads, each with its own model and optimiser, sharing the same random batches."""
    shape = NETWORKS[network]
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(batch, *shape, generator=gen).to(device),
                torch.randint(0, 10, (batch,), generator=gen).to(device)) for _ in range(4)]

    def supermask_net() -> SupermaskNet:
        return SupermaskNet(build_backbone(network, shape, 10, bank_capacity=k, num_tasks=1, seed=seed)).to(device)

    def learner(rule: MaskRule, name: str, description: str) -> Variant:
        net = supermask_net()
        opt = torch.optim.Adam([layer.scores for layer in net.layers], lr=1e-3)
        return Variant(name, description, train_step(lambda x: net(x, LearnMask(rule), bn_task=0), opt, batches))

    torch.manual_seed(seed)
    dense = plain_backbone(network, shape, 10).to(device)
    dense_opt = torch.optim.Adam(dense.parameters(), lr=1e-3)

    rule = TopK(density)
    combo_net = supermask_net()
    for j in range(k):  # K impressions at the benchmark density (random scores, top-k rule)
        for layer in combo_net.layers:
            layer.bank.add(rule(torch.rand(layer.weight.shape, generator=gen).to(device)).bool())
    alpha = nn.Parameter(torch.full((combo_net.num_layers, k), 1.0 / k, device=device))
    alpha_opt = torch.optim.Adam([alpha], lr=1e-2)
    frozen_alpha = alpha.detach().clone()  # a finished task: its α no longer changes
    # Evaluation runs eval-mode copies (BN running statistics), so the training variants stay in train mode.
    dense_eval, combo_eval = copy.deepcopy(dense).eval(), copy.deepcopy(combo_net).eval()

    return [
        Variant("dense", "dense training (Adam on weights)", train_step(dense, dense_opt, batches)),
        learner(rule, "mask", f"top-k mask learning, density {density}, radix select (Adam on scores)"),
        learner(TorchOpsTopK(density), "mask_torch_ops", f"top-k mask learning, density {density}, radix select "
                "in torch ops"),
        learner(TorchTopK(density), "mask_torch_topk", f"top-k mask learning, density {density}, torch.topk"),
        learner(Threshold(0.0), "threshold", "threshold mask learning, scores >= 0 (Adam on scores)"),
        Variant("combine", f"alpha-combination of K={k} impressions, per-layer alpha (Adam on alpha)",
                train_step(lambda x: combo_net(x, Combine(alpha), bn_task=0), alpha_opt, batches)),
        Variant("cached_eval", "evaluation, cached combined weights (no_grad, cache_key)",
                eval_step(lambda x: combo_eval(x, Combine(frozen_alpha), bn_task=0, cache_key=0), batches)),
        Variant("dense_eval", "evaluation, dense network (no_grad)", eval_step(dense_eval, batches)),
    ]


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for queued kernels on ``device`` (a GPU runs asynchronously: time only finished work)."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def measure(variants: list[Variant], steps: dict[str, int], warmup: int, repeats: int,
            sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Steps/s of every variant per repeat, interleaved, the starting variant rotating each repeat."""
    for v in variants:
        for _ in range(warmup):
            v.step()
    rates: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(repeats):
        for v in variants[r % len(variants):] + variants[: r % len(variants)]:
            sync()
            start = time.perf_counter()
            for _ in range(steps[v.name]):
                v.step()
            sync()
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
    print(f"{'variant':<16} {'steps/s':>9} {'(min-max)':>15} {'ratio':>7}  {'vs':<10} {'target':<10}  description")
    for row in rows:
        target = "" if row["target"] is None else (f">={row['target']:.2f}" + (" ok" if row["meets_target"] else " MISS"))
        spread = f"({row['min']:.1f}-{row['max']:.1f})"
        print(f"{row['variant']:<16} {row['steps_per_s']:>9.1f} {spread:>15} {row['ratio']:>6.2f}x  "
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
    parser.add_argument("--network", choices=sorted(NETWORKS), default="fc1024", help="backbone shapes")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--only", nargs="+", choices=sorted(REFERENCE), default=None,
                        help="measure only these variants (their references are added)")
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
    parser.add_argument("--profile", choices=sorted(REFERENCE),
                        default=None, help="after measuring, print a torch.profiler table for one variant")
    args = parser.parse_args(argv)
    for name in ("threads", "steps", "eval_steps", "repeats", "batch", "k"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = build_variants(args.network, args.k, args.density, args.batch, args.seed, device)
    if args.only is not None:
        wanted = set(args.only) | {REFERENCE[name] for name in args.only} | ({args.profile} - {None})
        variants = [v for v in variants if v.name in wanted]
    steps = {v.name: args.eval_steps if v.name.endswith("eval") else args.steps for v in variants}
    rates = measure(variants, steps, args.warmup, args.repeats, synchronizer(device))
    rows = summarise(variants, rates)
    header = (f"{args.network} {NETWORKS[args.network]}, batch {args.batch}, K={args.k}, density {args.density}, "
              f"device {device}, threads {args.threads}, torch {torch.__version__}, {args.repeats} repeats of "
              f"{args.steps} train / {args.eval_steps} eval steps; ratio = median of per-repeat ratios\n"
              f"{select.kernel_status()}")
    print_table(rows, header)
    result = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "torch": torch.__version__, "selection": select.kernel_status(), "machine": platform.processor() or platform.machine(),
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
