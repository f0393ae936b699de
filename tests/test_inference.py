"""Task inference without task ids: strategies on a small trained stream, the K-space superposition
identity, objective gradients against finite differences, and the scoring helper."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from impress_lightning.backbones import build_backbone
from impress_lightning.inference import (
    InferenceTally, TaskInference, beta_gradient, binary, climb_neighbours, entropy_objective, get_objective,
    score_inference, superfluous_objective, superpose, superposed_logits_fn, uniform_beta,
)
from impress_lightning.nn import Combine, Impression, LearnMask, SupermaskNet, TopK, naive_combine, to_supermask
from streams import fit_selection

NUM_CLASSES, EXTRA_OUTPUTS = 10, 4
K = 4  # impression tasks (pixel permutations of sklearn digits), each with its own trained mask
COMBINATION_TASKS = 2  # α tasks on further permutations: distractors whose α has a larger norm
TRAIN_STEPS = 150


@dataclass
class Stream:
    net: SupermaskNet
    coeffs: Tensor  # [K + COMBINATION_TASKS, L, K]
    batches: list[tuple[Tensor, Tensor]]  # one test batch of 128 per task


def _digits(perm: Tensor, index: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    return x[index][:, perm].view(-1, 1, 8, 8), y[index]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """These nets are tiny: intra-op threads only add overhead (6x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stream(single_thread) -> Stream:
    """4 impression tasks on strongly different permutations + 2 combination tasks, trained in ~10 s."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    x, y = (x - x.mean()) / x.std(), torch.tensor(digits.target)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=gen)
    train, test = order[:1400], order[1400:1528]
    perms = [torch.arange(64)] + [torch.randperm(64, generator=gen) for _ in range(K + COMBINATION_TASKS - 1)]
    net = SupermaskNet(build_backbone("lenet_300_100", (1, 8, 8), NUM_CLASSES + EXTRA_OUTPUTS, bank_capacity=K,
                                      num_tasks=K + COMBINATION_TASKS))
    rule = TopK(0.3)
    coeffs = []
    for task, perm in enumerate(perms):
        xs, ys = _digits(perm, train, x, y)
        if task < K:
            for i, layer in enumerate(net.layers):
                layer.reset_scores(100 * task + i)
            params, selection = [layer.scores for layer in net.layers], LearnMask(rule)
        else:
            alpha = torch.full((net.num_layers, K), 1.0 / K, requires_grad=True)
            params, selection = [alpha], Combine(alpha)
        fit_selection(net, selection, params, xs, ys, TRAIN_STEPS, 0.01 if task < K else 0.05, gen)
        if task < K:
            for layer in net.layers:
                layer.bank.add(rule(layer.scores).detach())
            coeffs.append(F.one_hot(torch.tensor(task), K).float().expand(net.num_layers, K))
        else:
            coeffs.append(alpha.detach())
    for param in net.parameters():
        param.grad = None
    batches = [_digits(perm, test, x, y) for perm in perms]
    return Stream(net.eval(), torch.stack(coeffs), batches)


def _accuracy(logits: Tensor, y: Tensor) -> float:
    return (logits.argmax(dim=1) == y).float().mean().item()


@pytest.mark.slow  # shares the ~6 s trained-stream fixture
def test_fixture_tasks_are_learned(stream: Stream) -> None:
    with torch.no_grad():
        for task in range(K):
            x, y = stream.batches[task]
            assert _accuracy(stream.net(x, Impression(task))[:, :NUM_CLASSES], y) > 0.85
            foreign = stream.batches[(task + 1) % K]
            assert _accuracy(stream.net(foreign[0], Impression(task))[:, :NUM_CLASSES], foreign[1]) < 0.5


@pytest.mark.slow  # shares the ~6 s trained-stream fixture
@pytest.mark.parametrize("strategy", ["oneshot", "binary"])
@pytest.mark.parametrize("objective,num_examples", [("entropy", None), ("superfluous", None), ("superfluous", 1)])
def test_supsup_dedicated_masks_pick_the_right_task(stream: Stream, strategy: str, objective: str,
                                                    num_examples: int | None) -> None:
    dedicated = stream.coeffs[:K]  # one-hot rows: SupSup, one mask per task (n = T)
    inference = TaskInference(strategy=strategy, objective=objective, num_examples=num_examples)
    for task in range(K):
        x, y = stream.batches[task]
        result = inference.infer(stream.net, x, dedicated, num_classes=NUM_CLASSES)
        assert result.task == task
        with torch.no_grad():
            expected = stream.net(x, Impression(task))[:, :NUM_CLASSES]
        torch.testing.assert_close(result.logits, expected)
        if strategy == "oneshot":
            assert result.scores.shape == (K,) and int(result.scores.argmin()) == task


@pytest.mark.slow  # shares the ~6 s trained-stream fixture
@pytest.mark.parametrize("strategy,objective", [("oneshot", "superfluous"), ("binary", "superfluous"),
                                                ("binary", "entropy")])
def test_kspace_one_shot_over_all_seen_tasks(stream: Stream, strategy: str, objective: str) -> None:
    # Impression tasks take part as one-hot rows next to the combination tasks' α rows.
    inference = TaskInference(strategy=strategy, objective=objective)
    assert stream.coeffs[K:].abs().sum(-1).min() > 1.2  # the distractors really are larger than one-hot rows
    for task in range(K):
        result = inference.infer(stream.net, stream.batches[task][0], stream.coeffs, num_classes=NUM_CLASSES)
        assert result.task == task


@pytest.mark.slow  # shares the ~6 s trained-stream fixture
def test_inference_under_inference_mode_leaves_the_net_alone(stream: Stream) -> None:
    x = stream.batches[1][0]
    inference = TaskInference()
    expected = inference.infer(stream.net, x, stream.coeffs, num_classes=NUM_CLASSES)
    state = {k: v.clone() for k, v in stream.net.state_dict().items()}
    with torch.inference_mode():
        result = inference.infer(stream.net, x.clone(), stream.coeffs.clone(), num_classes=NUM_CLASSES)
    assert result.task == expected.task
    torch.testing.assert_close(result.logits, expected.logits)
    assert all(p.grad is None for p in stream.net.parameters())
    assert all(torch.equal(v, state[k]) for k, v in stream.net.state_dict().items())


# ---- the K-space identity, on an untrained net with random masks ---------------------------------------------


def _random_net(n: int, num_tasks: int = 1, batchnorm: bool = False) -> SupermaskNet:
    if batchnorm:
        body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 6))
        net = SupermaskNet(to_supermask(body, bank_capacity=n, num_tasks=num_tasks, seed=3))
    else:
        net = SupermaskNet(build_backbone("lenet_300_100", (1, 8, 8), 6, bank_capacity=n, num_tasks=num_tasks))
    gen = torch.Generator().manual_seed(1)
    for layer in net.layers:
        for _ in range(n):
            layer.bank.add(torch.rand(layer.weight.shape, generator=gen) < 0.3)
    return net.eval()


@pytest.mark.parametrize("granularity", ["per_layer", "global"])
def test_kspace_superposition_equals_explicit_sum_over_tasks(granularity: str) -> None:
    n, num_tasks = 5, 7
    net, gen = _random_net(n), torch.Generator().manual_seed(2)
    shape = (num_tasks, net.num_layers, n) if granularity == "per_layer" else (num_tasks, n)
    coeffs, beta = torch.randn(shape, generator=gen), torch.rand(num_tasks, generator=gen)
    x = torch.randn(16, 1, 8, 8, generator=gen)
    kspace = net.effective_weights(Combine(superpose(beta, coeffs)))
    per_task = [net.effective_weights(Combine(coeffs[t])) for t in range(num_tasks)]
    explicit = [sum(beta[t] * per_task[t][i] for t in range(num_tasks)) for i in range(net.num_layers)]
    naive = [naive_combine(layer.weight, layer.bank.masks().view(n, *layer.weight.shape),
                           superpose(beta, coeffs)[i] if coeffs.dim() == 3 else superpose(beta, coeffs))
             for i, layer in enumerate(net.layers)]
    for a, b, c in zip(kspace, explicit, naive):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
    weights = {f"{name}.weight": w for name, w in zip(net.layer_names, explicit)}
    torch.testing.assert_close(superposed_logits_fn(net, x, coeffs)(beta), functional_call(net.body, weights, (x,)),
                               rtol=1e-4, atol=1e-5)


def test_kspace_beta_gradient_matches_explicit_superposition() -> None:
    n, num_tasks = 4, 6
    net, gen = _random_net(n), torch.Generator().manual_seed(4)
    coeffs, x = torch.randn(num_tasks, net.num_layers, n, generator=gen), torch.randn(32, 1, 8, 8, generator=gen)
    per_task = [[w.detach() for w in net.effective_weights(Combine(coeffs[t]))] for t in range(num_tasks)]

    def explicit(beta: Tensor) -> Tensor:
        weights = [sum(beta[t] * per_task[t][i] for t in range(num_tasks)) for i in range(net.num_layers)]
        return functional_call(net.body, dict(zip([f"{m}.weight" for m in net.layer_names], weights)), (x,))

    objective = lambda logits: entropy_objective(logits, 4)  # noqa: E731
    beta = uniform_beta(num_tasks, torch.float32, "cpu")
    torch.testing.assert_close(beta_gradient(superposed_logits_fn(net, x, coeffs), beta, objective),
                               beta_gradient(explicit, beta, objective), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["entropy", "superfluous"])
def test_objective_beta_gradients_match_finite_differences(name: str) -> None:
    gen = torch.Generator().manual_seed(5)
    n, num_tasks, dims = 3, 5, [12, 9, 7]  # a tiny 2-layer net in float64, masks as float stacks
    weights = [torch.randn(o, i, generator=gen, dtype=torch.float64) for i, o in zip(dims[:-1], dims[1:])]
    masks = [(torch.rand(n, *w.shape, generator=gen) < 0.5).double() for w in weights]
    coeffs = torch.randn(num_tasks, len(weights), n, generator=gen, dtype=torch.float64)
    x = torch.randn(8, dims[0], generator=gen, dtype=torch.float64)

    def logits_fn(beta: Tensor) -> Tensor:
        c = superpose(beta, coeffs)
        hidden = F.relu(x @ naive_combine(weights[0], masks[0], c[0]).t())
        return hidden @ naive_combine(weights[1], masks[1], c[1]).t()

    objective = lambda logits: get_objective(name)(logits, 4)  # noqa: E731  (3 superfluous outputs)
    beta = torch.rand(num_tasks, generator=gen, dtype=torch.float64)
    grad, eps = beta_gradient(logits_fn, beta, objective), 1e-6
    if name == "superfluous":  # G's gradient is defined with the real-class logits held at their value
        frozen = logits_fn(beta)[:, :4].detach()
        value = lambda b: torch.cat([frozen, logits_fn(b)[:, 4:]], 1).logsumexp(1).mean()  # noqa: E731
    else:
        value = lambda b: objective(logits_fn(b))  # noqa: E731
    numeric = torch.stack([(value(beta + eps * e) - value(beta - eps * e)) / (2 * eps)
                           for e in torch.eye(num_tasks, dtype=torch.float64)])
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-9)
    assert grad.abs().max() > 1e-4


def test_superfluous_objective_ignores_real_class_logits() -> None:
    logits = torch.randn(6, 7, requires_grad=True)
    (grad,) = torch.autograd.grad(superfluous_objective(logits, 5), logits)
    assert torch.all(grad[:, :5] == 0) and torch.all(grad[:, 5:] > 0)
    (grad,) = torch.autograd.grad(entropy_objective(logits, 5), logits)
    assert torch.all(grad[:, 5:] == 0) and grad[:, :5].abs().sum() > 0


def test_binary_halves_until_one_task_remains() -> None:
    costs, calls = torch.tensor([3.0, -1.0, 2.0, 0.5, -4.0, 1.0, 7.0]), []

    def logits_fn(beta: Tensor) -> Tensor:  # objective = Σ_t β_t cost_t, so ∂/∂β_t = cost_t
        calls.append(int((beta > 0).sum()))
        return (beta * costs).sum().view(1, 1)

    assert binary(logits_fn, 7, lambda z: z.sum(), torch.float32, "cpu") == 4
    assert calls == [7, 4, 2]


def test_bn_net_uses_batch_statistics_then_the_chosen_tasks_own() -> None:
    net, gen = _random_net(3, num_tasks=5, batchnorm=True), torch.Generator().manual_seed(6)
    coeffs, x = torch.eye(3).expand(net.num_layers, 3, 3).transpose(0, 1), torch.randn(8, 1, 8, 8, generator=gen)
    result = TaskInference().infer(net, x, coeffs, task_ids=[2, 3, 4])
    assert result.task in (2, 3, 4)
    with torch.no_grad():
        expected = net(x, Combine(coeffs[result.task - 2]), bn_task=result.task)
    torch.testing.assert_close(result.logits, expected)
    with pytest.raises(RuntimeError, match="net.eval"):
        TaskInference().infer(net.train(), x, coeffs)


# ---- scoring and configuration --------------------------------------------------------------------------------


def test_score_inference_gnu_and_gns() -> None:
    preds, y = torch.tensor([1, 0, 1, 1]), torch.tensor([1, 1, 1, 0])
    assert score_inference(2, 2, preds, y, shared_labels=False) == InferenceTally(1, 1, 2, 4)
    assert score_inference(2, 3, preds, y, shared_labels=False) == InferenceTally(0, 1, 0, 4)
    assert score_inference(2, 3, preds, y, shared_labels=True) == InferenceTally(0, 1, 2, 4)
    total = score_inference(2, 2, preds, y, shared_labels=False) + score_inference(2, 3, preds, y, shared_labels=False)
    assert total.task_accuracy == 0.5 and total.accuracy == 0.25
    assert math.isnan(InferenceTally().accuracy) and math.isnan(InferenceTally().task_accuracy)


def test_the_neighbour_climb_walks_downhill_through_nearest_tasks_only() -> None:
    # 40 tasks on a line in coefficient space; the exact score is the distance to task 7 (one minimum) or
    # has a second, deeper basin at 30 that the climb from 0 never reaches (it is local, never O(T)).
    coeffs = torch.arange(40, dtype=torch.float32).view(40, 1, 1)
    logits_of = lambda row: torch.tensor([[float(row)]])  # noqa: E731
    for score, found in ((lambda row, z: (z - 7).abs().sum(), 7),
                         (lambda row, z: torch.minimum((z - 7).abs(), (z - 30).abs() - 1).sum(), 7)):
        checked = {0: score(0, logits_of(0))}
        best, logits = climb_neighbours(coeffs, checked, 0, logits_of(0), 2, logits_of, score)
        assert best == found and float(logits) == float(found)
        assert sorted(checked) == list(range(11))  # 0, then 1-2, 3-4, 5-6, 7-8; 9-10 are no better than 7
        assert all(torch.equal(checked[t], score(t, logits_of(t))) for t in checked)


@pytest.mark.parametrize("kwargs,field", [
    ({"strategy": "oracle"}, "strategy"), ({"objective": "H"}, "objective"), ({"num_examples": 0}, "num_examples"),
    ({"superposition_norm": "l2"}, "superposition_norm"), ({"shortlist_size": 0}, "shortlist_size"),
    ({"shortlist_by": "gradient"}, "shortlist_by"), ({"shortlist_neighbours": -1}, "shortlist_neighbours"),
    ({"strategy": "alpha_fit"}, "strategy"), ({"rank_examples": 0}, "rank_examples"),
])
def test_bad_config_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TaskInference(**kwargs)


def test_bad_inputs_are_rejected() -> None:
    net = _random_net(2)
    with pytest.raises(ValueError, match="task_coeffs"):
        TaskInference().infer(net, torch.randn(2, 1, 8, 8), torch.ones(3, 5, 2))
    with pytest.raises(ValueError, match="extra_outputs"):
        TaskInference(objective="superfluous").infer(net, torch.randn(2, 1, 8, 8), torch.ones(3, 2), num_classes=6)
