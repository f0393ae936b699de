"""The shortlist strategy on a small stream of rotated digits whose combination tasks are learned well:
it identifies combination tasks that one-shot cannot pick, and its pieces (Taylor ranking, exact check,
the neighbour climb) behave as documented."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from impress_lightning.backbones import build_backbone
from impress_lightning.inference import TaskInference, combination_logits_fn, entropy_objective
from impress_lightning.inference.strategies import taylor_estimates
from impress_lightning.nn import Combine, LearnMask, SupermaskNet, TopK
from streams import fit_selection

NUM_CLASSES, EXTRA_OUTPUTS, K = 10, 4, 3
ANGLES = [0.0, 60.0, 120.0, 30.0, 90.0]  # tasks 0-2 learn impressions, 3-4 are combinations between them
STEPS = 100


@dataclass
class Stream:
    net: SupermaskNet
    coeffs: tuple[Tensor, ...]  # per layer: [T, 300, K] (per-neuron first layer), [T, K], [T, K]
    batches: list[tuple[Tensor, Tensor]]


def _rotate(x: Tensor, degrees: float) -> Tensor:
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="border")


@pytest.fixture(scope="module")
def stream() -> Stream:
    """Impressions at 0/60/120°, combinations at 30/90° started from their best impression (the module's
    one-hot start) with a per-neuron first layer: they reach ~0.95, far above any single impression."""
    from sklearn.datasets import load_digits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).view(-1, 1, 8, 8)
    x, y = (x - x.mean()) / x.std(), torch.tensor(digits.target)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=gen)
    train, test = order[:1400], order[1400:1528]
    net = SupermaskNet(build_backbone("lenet_300_100", (1, 8, 8), NUM_CLASSES + EXTRA_OUTPUTS, bank_capacity=K,
                                      num_tasks=len(ANGLES)))
    rule, rows = TopK(0.3), []
    for task, angle in enumerate(ANGLES):
        xs, ys = _rotate(x[train], angle), y[train]
        if task < K:
            for i, layer in enumerate(net.layers):
                layer.reset_scores(100 * task + i)
            params, selection = [layer.scores for layer in net.layers], LearnMask(rule)
        else:
            with torch.no_grad():
                best = max(range(K), key=lambda k: float((net(xs[:256], Combine(rows[k])).argmax(1) == ys[:256]).sum()))
            alpha = tuple(r.clone().requires_grad_(True) for r in rows[best])
            params, selection = list(alpha), Combine(alpha)
        # the module's α regulariser, λ Σ_rows (‖α_row‖₁ − 1)²
        penalty = None if task < K else (lambda: 5e-3 * sum((a.abs().sum(-1) - 1).pow(2).sum() for a in alpha))
        fit_selection(net, selection, params, xs, ys, STEPS, 0.01 if task < K else 0.05, gen, penalty)
        if task < K:
            for layer in net.layers:
                layer.bank.add(rule(layer.scores).detach())
            one_hot = F.one_hot(torch.tensor(task), K).float()
            rows.append((one_hot.expand(300, K).clone(), one_hot, one_hot.clone()))
        else:
            rows.append(tuple(a.detach() for a in alpha))
    for param in net.parameters():
        param.grad = None
    torch.set_num_threads(threads)
    coeffs = tuple(torch.stack([row[i] for row in rows]) for i in range(net.num_layers))
    return Stream(net.eval(), coeffs, [(_rotate(x[test], angle), y[test]) for angle in ANGLES])


def _own_accuracy(stream: Stream, task: int, row: int) -> float:
    x, y = stream.batches[task]
    with torch.no_grad():
        logits = stream.net(x, Combine(tuple(c[row] for c in stream.coeffs)))[:, :NUM_CLASSES]
    return (logits.argmax(1) == y).float().mean().item()


@pytest.mark.slow  # the stream trains in ~10 s on a busy 2-core machine
def test_shortlist_identifies_combination_tasks_that_one_shot_cannot(stream: Stream) -> None:
    for task in range(K, len(ANGLES)):  # the combinations are far better on their data than any impression
        assert _own_accuracy(stream, task, task) > 0.85 > max(_own_accuracy(stream, task, k) + 0.2 for k in range(K))
    oneshot = TaskInference(strategy="oneshot")
    shortlist = TaskInference(strategy="shortlist", shortlist_size=2, shortlist_neighbours=0)  # exactly m checks
    for task in range(K, len(ANGLES)):
        x, _ = stream.batches[task]
        assert oneshot.infer(stream.net, x, stream.coeffs, num_classes=NUM_CLASSES).task != task
        result = shortlist.infer(stream.net, x, stream.coeffs, num_classes=NUM_CLASSES)
        assert result.task == task and task in result.candidates.tolist() and len(result.candidates) == 2
        with torch.no_grad():  # it classifies with the chosen task's own weights
            expected = stream.net(x, Combine(tuple(c[task] for c in stream.coeffs)))[:, :NUM_CLASSES]
        torch.testing.assert_close(result.logits, expected)


@pytest.mark.slow
def test_taylor_estimate_is_exact_at_impressions_and_full_shortlist_is_exhaustive(stream: Stream) -> None:
    x = stream.batches[3][0]
    objective = lambda logits: entropy_objective(logits, NUM_CLASSES)  # noqa: E731
    estimates = taylor_estimates(combination_logits_fn(stream.net, x), stream.coeffs, objective)
    with torch.no_grad():
        exact = [objective(stream.net(x, Combine(tuple(c[t] for c in stream.coeffs)))) for t in range(K)]
    torch.testing.assert_close(estimates[:K].float(), torch.stack(exact), rtol=1e-4, atol=1e-5)
    everything = TaskInference(strategy="shortlist", shortlist_size=len(ANGLES))
    exhaustive = TaskInference(strategy="exhaustive")
    for task, (x, _) in enumerate(stream.batches):
        full = everything.infer(stream.net, x, stream.coeffs, num_classes=NUM_CLASSES)
        reference = exhaustive.infer(stream.net, x, stream.coeffs, num_classes=NUM_CLASSES)
        assert full.task == reference.task
        assert sorted(full.candidates.tolist()) == reference.candidates.tolist() == list(range(len(ANGLES)))


@pytest.mark.slow
def test_the_neighbour_climb_repairs_a_shortlist_that_missed_the_task(stream: Stream) -> None:
    # A one-candidate shortlist ranked by one-shot misses the combination tasks (the first test); climbing
    # through coefficient-space neighbours by the exact objective reaches what the exhaustive search picks.
    ranked = dict(strategy="shortlist", shortlist_size=1, shortlist_by="oneshot")
    plain = TaskInference(**ranked, shortlist_neighbours=0)
    climbing = TaskInference(**ranked, shortlist_neighbours=1)
    exhaustive = TaskInference(strategy="exhaustive")
    missed = 0
    for task, (x, _) in enumerate(stream.batches):
        best = exhaustive.infer(stream.net, x, stream.coeffs, num_classes=NUM_CLASSES).task
        missed += plain.infer(stream.net, x, stream.coeffs, num_classes=NUM_CLASSES).task != best
        result = climbing.infer(stream.net, x, stream.coeffs, num_classes=NUM_CLASSES)
        assert result.task == best
        assert len(result.candidates) == len(result.candidate_scores) == len(set(result.candidates.tolist()))
        assert float(result.candidate_scores.min()) == float(
            entropy_objective(result.logits, NUM_CLASSES))  # the winner is the best checked task
    assert missed >= 1


@pytest.mark.slow
def test_calibration_compares_each_tasks_score_with_its_own_baseline(stream: Stream) -> None:
    x, _ = stream.batches[3]
    plain = TaskInference(strategy="exhaustive").infer(stream.net, x, stream.coeffs, num_classes=NUM_CLASSES)
    zero = torch.zeros(len(ANGLES), dtype=torch.float64)
    calibrated = TaskInference(strategy="exhaustive", calibrate="always")
    same = calibrated.infer(stream.net, x, stream.coeffs, num_classes=NUM_CLASSES, baselines=zero)
    assert same.task == plain.task and torch.equal(same.candidate_scores, plain.candidate_scores)
    # A baseline lifted by 1 above a task's own score on this batch makes that task win by exactly 1.
    target = (plain.task + 1) % len(ANGLES)
    baselines = plain.candidate_scores.clone()
    baselines[target] += 1.0
    lifted = calibrated.infer(stream.net, x, stream.coeffs, num_classes=NUM_CLASSES, baselines=baselines)
    assert lifted.task == target
    assert torch.allclose(lifted.candidate_scores, plain.candidate_scores - baselines)
    ranked = TaskInference(strategy="shortlist", shortlist_size=2).infer(  # the default calibrates on GNu
        stream.net, x, stream.coeffs, num_classes=NUM_CLASSES, baselines=baselines, unshared_labels=True)
    assert ranked.task == target  # the Taylor estimates are shifted alike, so the target enters the shortlist
    with pytest.raises(ValueError, match="needs baselines"):
        calibrated.infer(stream.net, x, stream.coeffs, num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="needs baselines"):
        calibrated.infer(stream.net, x, stream.coeffs, num_classes=NUM_CLASSES, baselines=zero[:2])
    shared = TaskInference(strategy="exhaustive").infer(stream.net, x, stream.coeffs, num_classes=NUM_CLASSES,
                                                          baselines=baselines)  # shared labels: raw scores
    assert shared.task == plain.task and not TaskInference().calibrates(unshared_labels=True)  # one-shot never
    with pytest.raises(ValueError, match="needs baselines"):
        TaskInference(strategy="exhaustive").infer(stream.net, x, stream.coeffs, num_classes=NUM_CLASSES,
                                                   unshared_labels=True)
    with pytest.raises(ValueError, match="calibrate='always' shifts the exact checks"):
        TaskInference(strategy="oneshot", calibrate="always")
    with pytest.raises(ValueError, match="calibrate='sometimes' is unknown"):
        TaskInference(strategy="exhaustive", calibrate="sometimes")


def _features(stream: Stream, x: Tensor, task: int) -> Tensor:
    """What the feature probe records for batch ``x`` under ``task``'s own weights."""
    from impress_lightning.inference.features import FeatureProbe

    with torch.no_grad(), FeatureProbe(stream.net) as probe:
        stream.net(x, Combine(tuple(c[task] for c in stream.coeffs)))
    return probe.last


@pytest.mark.slow
def test_feature_matching_compares_each_tasks_features_with_its_own_signature(stream: Stream) -> None:
    from impress_lightning.inference.features import feature_distance

    features = partial(_features, stream)

    with torch.no_grad():  # the probe records the second layer's input: the first layer's ReLU output
        x = stream.batches[0][0]
        first = stream.net.layers[0]
        expected = F.relu(F.linear(x.flatten(1), first.weight * first.bank.masks(1)[0].view_as(first.weight)))
    torch.testing.assert_close(features(x, 0), expected.double().mean(0))
    # Signatures from the first half of each task's images; every task inferred from the other half.
    signatures = torch.stack([features(x[:64], t) for t, (x, _) in enumerate(stream.batches)])
    matching = TaskInference(strategy="exhaustive", verify_by="features")
    for task, (x, _) in enumerate(stream.batches):
        result = matching.infer(stream.net, x[64:], stream.coeffs, num_classes=NUM_CLASSES, signatures=signatures)
        assert result.task == task
        distances = torch.stack([feature_distance(features(x[64:], t), signatures[t]) for t in range(len(ANGLES))])
        torch.testing.assert_close(result.candidate_scores, distances)
    with pytest.raises(ValueError, match="needs signatures"):
        matching.infer(stream.net, x, stream.coeffs, num_classes=NUM_CLASSES)
    for bad in (dict(strategy="oneshot"), dict(strategy="exhaustive", calibrate="always")):
        with pytest.raises(ValueError, match="verify_by='features' replaces the exact checks"):
            TaskInference(**bad, verify_by="features")


@pytest.mark.slow
def test_feature_match_equals_the_exhaustive_feature_check_from_the_first_layer_alone(stream: Stream) -> None:
    features = partial(_features, stream)

    signatures = torch.stack([features(x[:64], t) for t, (x, _) in enumerate(stream.batches)])
    fast = TaskInference(strategy="feature_match", rank_examples=None)  # every task on the whole batch
    ranked = TaskInference(strategy="feature_match", rank_examples=16, shortlist_size=2)
    exact = TaskInference(strategy="exhaustive", verify_by="features")
    for task, (x, _) in enumerate(stream.batches):  # combinations included, which one-shot misses (first test)
        quick = fast.infer(stream.net, x[64:], stream.coeffs, num_classes=NUM_CLASSES, signatures=signatures)
        full = exact.infer(stream.net, x[64:], stream.coeffs, num_classes=NUM_CLASSES, signatures=signatures)
        assert quick.task == full.task == task
        torch.testing.assert_close(quick.candidate_scores, full.candidate_scores, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(quick.logits, full.logits)
        # ranked on 16 images, the 2 nearest scored on all 64: the same winner, at the same distance
        two = ranked.infer(stream.net, x[64:], stream.coeffs, num_classes=NUM_CLASSES, signatures=signatures)
        assert two.task == task and len(two.candidates) == 2 and task in two.candidates.tolist()
        torch.testing.assert_close(two.candidate_scores.min(), full.candidate_scores.min(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="needs signatures"):
        fast.infer(stream.net, x, stream.coeffs, num_classes=NUM_CLASSES)
