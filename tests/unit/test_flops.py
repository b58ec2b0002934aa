"""Matmul recording and FLOP counting for the model FLOP utilisation figure."""

from __future__ import annotations

import torch
from torch import nn

from m3oe_lightning.bench import flops


def test_linear_forward_backward_is_three_matmuls_of_2mkn():
    layer = nn.Linear(8, 4)
    x = torch.randn(16, 8, requires_grad=True)

    def step() -> None:
        layer(x).sum().backward()

    matmuls = flops.record_matmuls(step)
    assert sum(matmuls.values()) == 3  # forward, grad of input, grad of weight
    assert sum(m.flops * n for m, n in matmuls.items()) == 3 * 2 * 16 * 8 * 4
    assert flops.flops_per_sample(matmuls, 16) == 3 * 2 * 8 * 4


def test_batched_matmul_flops_and_throughput_is_positive():
    a, b = torch.randn(3, 5, 7), torch.randn(3, 7, 2)
    matmuls = flops.record_matmuls(lambda: torch.bmm(a, b))
    (only,) = matmuls
    assert only.kind == "bmm" and only.flops == 2 * 3 * 5 * 7 * 2
    floor = flops.matmul_floor(matmuls, min_seconds=0.01, repeats=5)
    assert 0 < floor.low <= floor.median <= floor.high and floor.repeats == 5 and floor.dtype == "float32"
    assert flops.matmul_floor(matmuls, dtype=torch.bfloat16, min_seconds=0.01, repeats=5).dtype == "bfloat16"
