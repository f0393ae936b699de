"""Task-bank sizes at benchmark scale, without training: bytes of every part of the bank of a full stream.

Run: ``python bench/bench_bank_sizes.py``

For each stream the benchmark network is built, K impressions are frozen from seeded scores (sizes do not
depend on what was learned), every other task gets per-layer coefficients (the ``PerLayer`` rule, float32) and
the bank of all tasks is serialised. ``state_dict`` is ``torch.save(module.state_dict())``, a lower bound of a
training checkpoint (which adds optimiser and loop state). Prints a markdown table (docs/export.md).
"""

from __future__ import annotations

import io

import torch

from impress_lightning import ImpressLearnModule, TaskBank
from impress_lightning.nn import PerLayer

STREAMS = [  # name, backbone, tasks, K, source, input shape, classes per task
    ("RotatedMNIST, K=3", "lenet_300_100", 36, 3, "heterogeneous", (1, 28, 28), 10),
    ("same, SupSup", "lenet_300_100", 36, 36, "supsup", (1, 28, 28), 10),
    ("PermutedMNIST, K=5", "fc1024", 250, 5, "heterogeneous", (1, 28, 28), 10),
    ("SplitCIFAR100, K=5", "gem_resnet18", 20, 5, "heterogeneous", (3, 32, 32), 5),
    ("same, SupSup", "gem_resnet18", 20, 20, "supsup", (3, 32, 32), 5),
]


def bank_of_full_stream(backbone: str, tasks: int, k: int, source: str, shape: tuple, classes: int) -> tuple:
    module = ImpressLearnModule(backbone=backbone, num_tasks=tasks, num_classes=classes, input_shape=shape,
                                num_impressions=k, impression_source=source, combination=PerLayer())
    impressions = [stage for stage in module.schedule.stages if stage.kind == "impression"]
    for stage in impressions:
        for i, layer in enumerate(module.net.layers):
            layer.reset_scores(1009 * stage.index + i)
        module.freeze_stage(stage)
    for task in range(tasks):
        if module.table.slot_of(task) is None:
            module.table.start_coefficients(task, module.bank_size, 0)
    module.table.num_learned.fill_(tasks)
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return TaskBank.from_module(module), len(buffer.getvalue())


def main() -> None:
    print("| stream | backbone | tasks | masks stored | masks | α | BN | metadata | bank total | SupSup masks + BN "
          "| module state_dict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, backbone, tasks, k, source, shape, classes in STREAMS:
        bank, state_bytes = bank_of_full_stream(backbone, tasks, k, source, shape, classes)
        sizes = bank.sizes()
        supsup = bank.supsup_mask_bytes() + sizes["batchnorm"]
        print(f"| {name} | {backbone} | {tasks} | {bank.num_impressions} | {sizes['masks']:,} | "
              f"{sizes['coefficients']:,} | {sizes['batchnorm']:,} | {sizes['metadata']:,} | {sizes['total']:,} | "
              f"{supsup:,} | {state_bytes:,} |", flush=True)


if __name__ == "__main__":
    main()
