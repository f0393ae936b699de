"""Bit-packing and the impression bank: exact round trips, 1 bit per weight, capacity, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from impress_lightning.nn import ImpressionBank, SupermaskConv2d, SupermaskLinear, SupermaskNet, pack_bits, packed_size, unpack_bits

ODD_SIZES = [1, 3, 7, 9, 13, 15, 17, 1001, 7 * 13 * 3]


@pytest.mark.parametrize("numel", ODD_SIZES + [8, 64])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
def test_pack_unpack_round_trip(numel: int, density: float) -> None:
    mask = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) < density
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8
    assert packed.shape == (math.ceil(numel / 8),) == (packed_size(numel),)
    restored = unpack_bits(packed, numel)
    assert restored.dtype == torch.bool
    assert torch.equal(restored, mask)


def test_pack_accepts_float_masks_of_any_shape() -> None:
    mask = (torch.rand(5, 3, 3, 3) < 0.4).float()
    restored = unpack_bits(pack_bits(mask), mask.numel()).view(mask.shape)
    assert torch.equal(restored.float(), mask)


def test_pack_bit_order_is_stable() -> None:
    # element 8*i + b lives in bit b of byte i: a checkpoint format, so it must never change silently
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[0, 3, 9]] = True
    assert pack_bits(mask).tolist() == [1 + 8, 2]


@pytest.mark.parametrize("shape", [(7, 13), (5, 3, 3, 3), (1, 1), (9, 11, 1, 1)])
def test_bank_stores_ceil_numel_over_8_bytes_per_mask(shape: tuple[int, ...]) -> None:
    numel = math.prod(shape)
    bank = ImpressionBank(shape, capacity=4)
    assert bank.packed.shape == (4, math.ceil(numel / 8))
    assert bank.stored_bytes() == 0 and len(bank) == 0
    masks = [torch.rand(shape) < p for p in (0.1, 0.5, 0.9)]
    for i, m in enumerate(masks):
        assert bank.add(m) == i
        assert bank.stored_bytes() == (i + 1) * math.ceil(numel / 8)
    for i, m in enumerate(masks):
        assert torch.equal(bank.mask(i, torch.bool), m)
        assert bank.mask(i).dtype == torch.float32
    assert torch.equal(bank.masks(), torch.stack([m.flatten() for m in masks]))
    assert bank.masks(2).shape == (2, numel)
    assert bank.masks(0).shape == (0, numel)


def test_bank_errors_are_clear() -> None:
    bank = ImpressionBank((3, 5), capacity=2)
    bank.add(torch.ones(3, 5))
    bank.add(torch.zeros(3, 5))
    with pytest.raises(RuntimeError, match="full"):
        bank.add(torch.ones(3, 5))
    with pytest.raises(ValueError, match="shape"):
        ImpressionBank((3, 5), capacity=2).add(torch.ones(5, 3))
    with pytest.raises(IndexError, match="slot 2"):
        bank.mask(2)
    with pytest.raises(IndexError):
        bank.masks(3)
    with pytest.raises(ValueError, match="capacity"):
        ImpressionBank((3, 5), capacity=-1)


def test_bank_state_dict_loads_into_fresh_bank() -> None:
    shape = (11, 7, 3)
    bank = ImpressionBank(shape, capacity=5)
    masks = [torch.rand(shape) < 0.3 for _ in range(3)]
    for m in masks:
        bank.add(m)
    fresh = ImpressionBank(shape, capacity=5)
    fresh.load_state_dict(bank.state_dict())
    assert len(fresh) == 3
    assert fresh.stored_bytes() == bank.stored_bytes()
    for i, m in enumerate(masks):
        assert torch.equal(fresh.mask(i, torch.bool), m)
    fresh.add(masks[0])  # the loaded bank keeps filling from the right slot
    assert len(fresh) == 4 and torch.equal(fresh.mask(3, torch.bool), masks[0])


def test_network_storage_is_one_bit_per_weight_per_impression() -> None:
    body = torch.nn.Sequential(SupermaskConv2d(3, 5, 3, bank_capacity=4), torch.nn.Flatten(),
                               SupermaskLinear(5 * 3 * 3, 7, bank_capacity=4))
    net = SupermaskNet(body)
    for _ in range(3):
        for layer in net.layers:
            layer.bank.add(torch.rand(layer.weight.shape) < 0.2)
    per_layer = [math.ceil(layer.weight.numel() / 8) for layer in net.layers]
    assert per_layer == [math.ceil(135 / 8), math.ceil(315 / 8)]
    assert [layer.bank.stored_bytes() for layer in net.layers] == [3 * b for b in per_layer]
    # the whole network checkpoint round-trips the banks
    fresh = SupermaskNet(torch.nn.Sequential(SupermaskConv2d(3, 5, 3, bank_capacity=4), torch.nn.Flatten(),
                                             SupermaskLinear(5 * 3 * 3, 7, bank_capacity=4)))
    fresh.load_state_dict(net.state_dict())
    for a, b in zip(net.layers, fresh.layers):
        assert torch.equal(a.bank.masks(), b.bank.masks())
