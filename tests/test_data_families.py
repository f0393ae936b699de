"""Task families: permutations, rotations and class splits are correct, seeded and pure."""

from __future__ import annotations

import pytest
import torch

from impress_lightning.data import ClassSplit, PermutedPixels, Rotations


def _images(n: int = 6, c: int = 1, h: int = 5, w: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# ----- PermutedPixels --------------------------------------------------------------------------------------
def test_permutation_is_a_bijection_of_pixel_positions() -> None:
    family = PermutedPixels(seed=3)
    for task in range(4):
        perm = family.permutation(task, 35)
        assert sorted(perm.tolist()) == list(range(35))


def test_permuted_images_hold_the_same_pixels_moved_consistently() -> None:
    images, labels = _images(c=3), torch.arange(6)
    out, out_labels = PermutedPixels(seed=1).apply(images, labels, task=2)
    assert torch.equal(out_labels, labels)
    perm = PermutedPixels(seed=1).permutation(2, 35)
    # every channel of every image moves pixel perm[j] to position j
    assert torch.equal(out.reshape(6, 3, 35), images.reshape(6, 3, 35)[:, :, perm])
    # a bijection: sorting the pixel values of each image gives the original multiset
    assert torch.equal(out.reshape(6, -1).sort().values, images.reshape(6, -1).sort().values)


def test_permutations_are_seeded_and_differ_across_tasks_and_seeds() -> None:
    a, b = PermutedPixels(seed=0), PermutedPixels(seed=0)
    assert torch.equal(a.permutation(5, 784), b.permutation(5, 784))
    perms = [a.permutation(t, 784) for t in range(4)]
    assert all(not torch.equal(perms[i], perms[j]) for i in range(4) for j in range(i + 1, 4))
    assert not torch.equal(perms[0], torch.arange(784)), "task 0 must be permuted too"
    assert not torch.equal(PermutedPixels(seed=1).permutation(0, 784), perms[0])


def test_permutation_commutes_with_per_channel_normalisation() -> None:
    images = _images(c=3)
    mean, std = torch.tensor([0.2, 0.4, 0.6]).view(3, 1, 1), torch.tensor([0.3, 0.2, 0.1]).view(3, 1, 1)
    normalise = lambda x: (x.float() / 255 - mean) / std  # noqa: E731
    family, labels = PermutedPixels(seed=4), torch.zeros(6, dtype=torch.int64)
    permute_then_normalise = normalise(family.apply(images, labels, 1)[0])
    normalise_then_permute = family.apply(normalise(images), labels, 1)[0]
    assert torch.equal(permute_then_normalise, normalise_then_permute)


# ----- Rotations ------------------------------------------------------------------------------------------
def test_rotation_angles_step_through_the_circle() -> None:
    family = Rotations(36)
    assert [family.angle(t) for t in (0, 1, 9, 35)] == [0.0, 10.0, 90.0, 350.0]
    assert family.describe(9) == "rotate 90°"
    with pytest.raises(ValueError, match="task=36 is out of range"):
        family.angle(36)


def test_a_90_degree_task_rotates_a_known_image_counter_clockwise() -> None:
    image = torch.zeros(1, 1, 5, 5, dtype=torch.uint8)
    image[0, 0, 0, 4] = 200  # top-right corner
    image[0, 0, 2, 4] = 90  # middle of the right edge
    rotated, _ = Rotations(4).apply(image, torch.zeros(1, dtype=torch.int64), task=1)
    expected = torch.zeros_like(image)
    expected[0, 0, 0, 0] = 200  # top-right → top-left
    expected[0, 0, 0, 2] = 90  # right edge → top edge
    assert torch.equal(rotated, expected)
    assert rotated.dtype == torch.uint8


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 12, 17)], ids=["digits", "colour_non_square"])
def test_rotation_gives_torchvisions_pixels_with_black_corners(shape) -> None:
    """The per-task covered fraction, interpolated once, gives exactly TF.rotate(uint8, bilinear, fill=0)."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    images = torch.randint(0, 256, (40, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    family = Rotations(36)
    for task in range(36):
        rotated, _ = family.apply(images, torch.zeros(40, dtype=torch.int64), task)
        expected = TF.rotate(images, family.angle(task), interpolation=InterpolationMode.BILINEAR, fill=0)
        assert torch.equal(rotated, expected), task


def test_rotation_keeps_labels_and_task_zero_is_the_identity() -> None:
    images, labels = _images(n=20, h=12, w=12), torch.arange(20)
    family = Rotations(8)
    same, same_labels = family.apply(images, labels, 0)
    assert torch.equal(same, images) and torch.equal(same_labels, labels)
    turned, turned_labels = family.apply(images, labels, 3)  # 135°: a real resampling
    assert turned.shape == images.shape and torch.equal(turned_labels, labels)
    assert not torch.equal(turned, images)
    assert torch.equal(turned, family.apply(images, labels, 3)[0]), "rotation must be deterministic"


def test_rotating_in_chunks_matches_rotating_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("impress_lightning.data.families._ROTATION_CHUNK", 2)
    images = _images(n=3, h=9, w=9)
    family = Rotations(5)
    whole = family.apply(images, torch.zeros(3, dtype=torch.int64), 2)[0]
    single = torch.cat([family.apply(images[i:i + 1], torch.zeros(1, dtype=torch.int64), 2)[0] for i in range(3)])
    assert torch.equal(whole, single)


# ----- ClassSplit ------------------------------------------------------------------------------------------
def test_class_split_is_disjoint_and_covers_every_class() -> None:
    split = ClassSplit(num_classes=100, classes_per_task=5, seed=7)
    assert split.num_tasks == 20
    groups = [split.classes_of(t) for t in range(20)]
    assert all(len(g) == 5 for g in groups)
    assert sorted(c for g in groups for c in g) == list(range(100))
    assert groups != [list(range(5 * t, 5 * t + 5)) for t in range(20)], "shuffle=True must permute classes"
    assert groups == [ClassSplit(100, 5, seed=7).classes_of(t) for t in range(20)]
    assert groups != [ClassSplit(100, 5, seed=8).classes_of(t) for t in range(20)]


def test_unshuffled_split_takes_classes_in_order() -> None:
    split = ClassSplit(10, 2, shuffle=False)
    assert [split.classes_of(t) for t in range(5)] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert split.describe(2) == "classes 4,5"


def test_class_split_keeps_its_examples_and_remaps_labels() -> None:
    labels = torch.arange(10).repeat(3)  # 30 examples, 3 per class
    images = labels.to(torch.uint8).view(30, 1, 1, 1).expand(30, 1, 2, 2).contiguous()
    split = ClassSplit(10, 2, seed=0)
    for task in range(5):
        classes = split.classes_of(task)
        out, out_labels = split.apply(images, labels, task)
        assert len(out) == 6
        assert set(out_labels.tolist()) == {0, 1}
        original = out[:, 0, 0, 0].to(torch.int64)  # the image encodes its original class
        assert torch.equal(torch.tensor(classes)[out_labels], original)
        assert split.label_map(task) == classes


def test_class_split_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="classes_per_task=11 exceeds"):
        ClassSplit(10, 11)
    with pytest.raises(ValueError, match="classes_per_task=0"):
        ClassSplit(10, 0)
    with pytest.raises(ValueError, match="task=5 is out of range"):
        ClassSplit(10, 2).classes_of(5)
