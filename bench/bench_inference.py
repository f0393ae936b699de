"""Wall time of one task-inference step as a function of the number of learned tasks T.

One step = the one-shot pass of SupSup's task inference on a batch: forward through the superposition of
all T tasks, backward to the T task weights β. Three ways of computing it, measured in one run:

* ``supsup_lookup``: SupSup with one dedicated mask per task (n = T bank slots), superposed through this
  library's lookup-table combine (masks split into code planes of 12; the realistic cost here);
* ``supsup_stack``: the same superposition as SupSup's own code does it: T float masks stacked per layer,
  ``W * tensordot(β, masks)`` (skipped where the stack would exceed ``--naive-max-gb``);
* ``kspace``: ImpressLearn, T combination tasks over K impressions, superposed in coefficient space
  (``Σ_t β_t α_t`` then one combine of K masks).

and the whole inference of one batch with ImpressLearn's ``shortlist`` strategy (the step that identifies
combination tasks): one forward + backward at each of the K impressions (the Taylor ranking of all T tasks),
then ``--shortlist`` candidates checked by a forward with their cached (materialised) weights, the best one's
logits kept as the batch's classification, timed in interleaved rounds over every T. Its ratios: against
SupSup's float-stack one-shot at the same T, and against itself at T = 10 (flat in T = 1).

Masks and α are random (timing does not depend on their values). Run::

    python bench/bench_inference.py                      # FC-1024, T in {5, 10, 25, 100, 250}
    python bench/bench_inference.py --backbone lenet_300_100 --tasks 5 50 --json out.json
    python bench/bench_inference.py --threads 0          # torch's default thread count (default: 1)
    python bench/bench_inference.py --device cuda        # on a GPU (every timing waits for the kernels)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from functools import partial
from typing import Callable

import torch
from torch import Tensor
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).parent))
from bench_layers import synchronizer  # noqa: E402  (bench/ is not a package)

from impress_lightning.backbones import build_backbone  # noqa: E402
from impress_lightning.inference import (  # noqa: E402
    TaskInference, beta_gradient, entropy_objective, superposed_logits_fn, uniform_beta,
)
from impress_lightning.nn import Combine, SupermaskNet, naive_combine  # noqa: E402

INPUT_SHAPE, NUM_CLASSES = (1, 28, 28), 10


def random_bank_net(backbone: str, num_masks: int, density: float, seed: int) -> SupermaskNet:
    """A supermask net whose banks hold ``num_masks`` random masks of ``density``."""
    net = SupermaskNet(build_backbone(backbone, INPUT_SHAPE, NUM_CLASSES, bank_capacity=num_masks, num_tasks=1))
    gen = torch.Generator().manual_seed(seed)
    for layer in net.layers:
        for _ in range(num_masks):
            layer.bank.add(torch.rand(layer.weight.shape, generator=gen) < density)
    return net.eval()


def stack_logits_fn(net: SupermaskNet, x: Tensor, stacks: list[Tensor]) -> Callable[[Tensor], Tensor]:
    """SupSup's own superposition: per layer ``W * Σ_t β_t M_t`` over a float stack ``[T, *W.shape]``."""
    names = [f"{name}.weight" for name in net.layer_names]

    def logits(beta: Tensor) -> Tensor:
        weights = [naive_combine(layer.weight, stack, beta) for layer, stack in zip(net.layers, stacks)]
        return functional_call(net.body, dict(zip(names, weights)), (x,))

    return logits


def fastest(step: Callable[[], object], repeats: int, sync: Callable[[], None], min_seconds: float = 1.0) -> float:
    """Fastest run of ``step``, in seconds, over at least ``repeats`` runs and ``min_seconds`` of timing (at most
    50 runs), after one untimed warm-up that builds caches; ``sync`` waits for a GPU's queued work. The
    minimum, not the median: on a shared machine it is the run least disturbed by other load."""
    step()
    sync()
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_seconds and len(times) < 50):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def time_step(logits_fn: Callable[[Tensor], Tensor], num_tasks: int, repeats: int, device: torch.device) -> float:
    """Fastest one-shot step: forward + backward through the superposition to β."""
    objective = partial(entropy_objective, num_classes=NUM_CLASSES)
    beta = uniform_beta(num_tasks, torch.float32, device)
    return fastest(lambda: beta_gradient(logits_fn, beta, objective), repeats, synchronizer(device))


def interleaved_fastest(step: Callable[[int], None], sizes: list[int], rounds: int,
                        sync: Callable[[], None]) -> dict[int, float]:
    """Fastest ``step(T)`` per T over ``rounds`` rounds, each running every T once (so load drift on a shared
    machine hits them all alike), every timing waiting for the device."""
    best = {size: math.inf for size in sizes}
    for _ in range(rounds):
        for size in sizes:
            sync()
            start = time.perf_counter()
            step(size)
            sync()
            best[size] = min(best[size], time.perf_counter() - start)
    return best


def time_shortlists(net: SupermaskNet, x: Tensor, alphas: dict[int, Tensor], shortlist: int, neighbours: int,
                    rounds: int, sync: Callable[[], None]) -> dict[int, float]:
    """Fastest whole shortlist inference of batch ``x`` among the T tasks of ``alphas[T]``, for every T, in
    interleaved rounds (:func:`interleaved_fastest`). Every task's weights are cached, as
    ``TaskInferenceEvaluator(weight_cache_size=...)`` keeps them."""
    net.cache_size = sum(a.shape[0] for a in alphas.values())
    net.clear_cache()
    inference = TaskInference(strategy="shortlist", shortlist_size=shortlist, shortlist_neighbours=neighbours)

    def step(num_tasks: int) -> None:
        coeffs = alphas[num_tasks]
        classify = lambda batch, task: net(batch, Combine(coeffs[task]), cache_key=(num_tasks, task))  # noqa: E731
        inference.infer(net, x, coeffs, num_classes=NUM_CLASSES, classify=classify)

    with torch.no_grad():  # materialise every task once, outside the timing
        for num_tasks, coeffs in alphas.items():
            for task in range(num_tasks):
                net(x[:1], Combine(coeffs[task]), cache_key=(num_tasks, task))
    return interleaved_fastest(step, list(alphas), rounds, sync)


def time_feature_matches(net: SupermaskNet, x: Tensor, alphas: dict[int, Tensor], rounds: int,
                         sync: Callable[[], None]) -> dict[int, float]:
    """Fastest whole ``feature_match`` inference of batch ``x`` among the T tasks of ``alphas[T]``, for every T,
    interleaved like :func:`time_shortlists`: K first-layer passes, every task's feature distance, then the
    nearest task's own (cached) forward. Signatures are random: timing does not depend on their values."""
    net.clear_cache()
    inference = TaskInference(strategy="feature_match")
    width = net.layers[0].weight.shape[0]
    signatures = {t: torch.rand(t, width, generator=torch.Generator().manual_seed(t)).to(x.device) for t in alphas}

    def step(num_tasks: int) -> None:
        coeffs = alphas[num_tasks]

        def classify(batch: Tensor, task: int) -> Tensor:
            return net(batch, Combine(coeffs[task]), cache_key=("fm", num_tasks, task))

        inference.infer(net, x, coeffs, num_classes=NUM_CLASSES, classify=classify, signatures=signatures[num_tasks])

    return interleaved_fastest(step, list(alphas), rounds, sync)


def report_against_t(rows: list[dict], name: str, seconds: dict[int, float], settings: str) -> None:
    """Print (and add to ``rows`` as ``<name>_s``) a whole-inference timing per T, its ratio to SupSup's
    float-stack one-shot step, and its cost at T against T = 10."""
    print(f"{'T':>5} {name + ' ms':>18} {'supsup_stack/' + name:>28}   (whole inference of a batch, {settings})")
    for row in rows:
        row[f"{name}_s"] = seconds[row["T"]]
        stack = row["supsup_stack_s"]
        ratio = f"{stack / seconds[row['T']]:28.2f}" if stack is not None else f"{'-':>28}"
        print(f"{row['T']:5d} {seconds[row['T']] * 1e3:18.1f} {ratio}")
    if 10 in seconds:
        ratios = ", ".join(f"T={t}: {seconds[t] / seconds[10]:.2f}" for t in sorted(seconds))
        print(f"{name} at T / at T = 10: {ratios} (target: <= 2 at T = 250)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="fc1024", choices=["fc1024", "lenet_300_100"])
    parser.add_argument("--tasks", type=int, nargs="+", default=[5, 10, 25, 100, 250], help="numbers of tasks T")
    parser.add_argument("--impressions", type=int, default=5, help="K for the K-space superposition")
    parser.add_argument("--shortlist", type=int, default=12, help="candidates the shortlist strategy verifies (m)")
    parser.add_argument("--neighbours", type=int, default=TaskInference.shortlist_neighbours,
                        help="the shortlist's neighbour climb (shortlist_neighbours; 0 = none)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds of the shortlist timing")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--density", type=float, default=0.1, help="density of the random masks")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per cell (the fastest is reported)")
    parser.add_argument("--naive-max-gb", type=float, default=2.0, help="skip float stacks larger than this")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads, 0 = torch's default (1 keeps ratios stable on busy machines)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x = torch.randn(args.batch, *INPUT_SHAPE).to(device)
    dedicated = random_bank_net(args.backbone, max(args.tasks), args.density, args.seed).to(device)
    impressions = random_bank_net(args.backbone, args.impressions, args.density, args.seed + 1).to(device)
    num_layers, numel = dedicated.num_layers, sum(layer.weight.numel() for layer in dedicated.layers)
    print(f"{args.backbone}: {numel:,} masked weights in {num_layers} layers, batch {args.batch}, "
          f"K = {args.impressions}, device {device}, torch threads {torch.get_num_threads()}")
    header = f"{'T':>5} {'supsup_lookup ms':>17} {'supsup_stack ms':>16} {'kspace ms':>10} " \
             f"{'lookup/kspace':>14} {'stack/kspace':>13}"
    print(header)
    rows, all_alphas = [], {}
    for num_tasks in args.tasks:
        one_hot = torch.eye(num_tasks, device=device).unsqueeze(1).expand(num_tasks, num_layers, num_tasks)
        lookup = time_step(superposed_logits_fn(dedicated, x, one_hot), num_tasks, args.repeats, device)
        alphas = torch.randn(num_tasks, num_layers, args.impressions).to(device)
        kspace = time_step(superposed_logits_fn(impressions, x, alphas), num_tasks, args.repeats, device)
        all_alphas[num_tasks] = alphas
        stack = None
        if num_tasks * numel * 4 / 2**30 <= args.naive_max_gb:
            stacks = [layer.bank.masks(num_tasks).view(num_tasks, *layer.weight.shape).float()
                      for layer in dedicated.layers]
            stack = time_step(stack_logits_fn(dedicated, x, stacks), num_tasks, args.repeats, device)
            del stacks
        rows.append({"T": num_tasks, "supsup_lookup_s": lookup, "supsup_stack_s": stack, "kspace_s": kspace})
        stack_ms = f"{stack * 1e3:16.1f}" if stack is not None else f"{'skipped':>16}"
        stack_ratio = f"{stack / kspace:13.1f}" if stack is not None else f"{'-':>13}"
        print(f"{num_tasks:5d} {lookup * 1e3:17.1f} {stack_ms} {kspace * 1e3:10.1f} {lookup / kspace:14.1f} "
              f"{stack_ratio}", flush=True)
    flat = max(r["kspace_s"] for r in rows) / min(r["kspace_s"] for r in rows)
    print(f"K-space max/min over T: {flat:.2f} (flat = 1)")
    at = time_shortlists(impressions, x, all_alphas, args.shortlist, args.neighbours, args.rounds,
                         synchronizer(device))
    report_against_t(rows, "shortlist", at, f"m = {args.shortlist}, climb {args.neighbours}, {args.rounds} "
                     "interleaved rounds")
    ranked = [t for t in sorted(at) if t > args.shortlist]  # below that the shortlist is the exhaustive search
    if ranked:
        print(f"shortlist at T / at T = {ranked[0]} (the smallest T that ranks): "
              + ", ".join(f"T={t}: {at[t] / at[ranked[0]]:.2f}" for t in ranked))
    matched = time_feature_matches(impressions, x, all_alphas, args.rounds, synchronizer(device))
    report_against_t(rows, "feature_match", matched, f"{args.rounds} interleaved rounds")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"config": vars(args), "masked_weights": numel, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
