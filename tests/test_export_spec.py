"""docs/export.md specifies the task bank completely: logits rebuilt from the file with torch and the spec alone
(tests/bank_spec_rebuild.py, which imports nothing of this package) match the package's."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from impress_lightning import HybridHead, ImpressLearnModule, TaskBank
from impress_lightning.nn import PerLayer, PerNeuron, TopK

REBUILD = Path(__file__).with_name("bank_spec_rebuild.py")


def test_the_rebuilding_code_uses_only_torch_and_the_standard_library():
    tree = ast.parse(REBUILD.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"__future__", "math", "torch"}


@pytest.mark.parametrize("combination, hybrid", [(PerNeuron(layers=[0], precision="float16"), None),
                                                 (PerLayer(), None), (PerLayer(), HybridHead())],
                         ids=["per-neuron-float16", "per-layer", "per-layer-hybrid-head"])
def test_logits_rebuilt_from_the_spec_match_the_package(tmp_path, combination, hybrid):
    from bank_spec_rebuild import rebuild_logits

    # 5 tasks: impressions 0-2 frozen from seeded scores, combinations 3-4 with distinct random coefficients
    # (with hybrid heads, task 4 keeps a head mask of its own).
    module = ImpressLearnModule(num_tasks=5, num_classes=10, input_shape=(1, 8, 8), num_impressions=3,
                                mask_rule=TopK(0.3), combination=combination, seed=7, hybrid_head=hybrid)
    gen = torch.Generator().manual_seed(0)
    for stage in module.schedule.stages[:3]:
        for i, layer in enumerate(module.net.layers):
            layer.reset_scores(100 * stage.index + i)
        module.freeze_stage(stage)
    with torch.no_grad():
        for task in (3, 4):
            module.table.start_coefficients(task, 3, None)
            module.table.coefficients[task].copy_(torch.randn(module.table.size, generator=gen))
            module.table.finish(task)  # rounded to the stored precision, as at the end of a real task
        if hybrid is not None:
            head = torch.rand(module.net.layers[-1].weight.shape, generator=gen) < 0.5
            module.table.record_head(4, head, True, 0.5, 0.6)
    module.eval()
    path = tmp_path / "bank.pt"
    TaskBank.from_module(module, num_learned=5).save(path)
    bank = torch.load(path, weights_only=True)  # what a user of the spec does
    x = torch.randn(16, 1, 8, 8, generator=gen)
    with torch.no_grad():
        for task in range(5):
            ours, rebuilt = module(x, task), rebuild_logits(bank, x, task)
            # The package sums Σ_k α_k M_k through a lookup table, the spec's formula directly; with K = 3
            # both add the same terms in the same order, so the logits are bit-identical.
            assert torch.equal(rebuilt, ours), f"task {task}: max difference {(rebuilt - ours).abs().max()}"
