"""Model FLOP utilisation: the model's matmul FLOPs vs plain matmuls of the same shapes, same machine.

:func:`record_matmuls` runs one training-loss forward + backward under a dispatch mode that records
every matrix product (``mm``, ``addmm``, ``bmm``, ``baddbmm``) with its shapes. :func:`matmul_throughput`
then times plain ``torch.mm`` / ``torch.bmm`` on exactly that mix of shapes. Achieved FLOP/s (the
model's matmul FLOPs per sample × training samples/s) divided by that throughput is the model FLOP
utilisation: how close the whole training step gets to the matmuls it cannot avoid.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
Shape = tuple[int, ...]


@dataclass(frozen=True)
class Matmul:
    """One matrix product: ``kind`` is ``mm`` ([m, k] @ [k, n]) or ``bmm`` ([b, m, k] @ [b, k, n])."""

    kind: str
    left: Shape
    right: Shape

    @property
    def flops(self) -> int:
        if self.kind == "mm":
            (m, k), (_, n) = self.left, self.right
            return 2 * m * k * n
        (b, m, k), (_, _, n) = self.left, self.right
        return 2 * b * m * k * n


class _MatmulRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[Matmul] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        packet = getattr(func, "overloadpacket", None)
        if packet in (aten.mm, aten.bmm):
            self.seen[Matmul(packet.__name__, tuple(args[0].shape), tuple(args[1].shape))] += 1
        elif packet in (aten.addmm, aten.baddbmm):
            kind = "mm" if packet is aten.addmm else "bmm"
            self.seen[Matmul(kind, tuple(args[1].shape), tuple(args[2].shape))] += 1
        return func(*args, **(kwargs or {}))


def record_matmuls(step: Callable[[], None]) -> Counter[Matmul]:
    """Every matrix product ``step`` (e.g. a loss forward + backward) executes, with multiplicity."""
    recorder = _MatmulRecorder()
    with recorder:
        step()
    return recorder.seen


def matmul_throughput(matmuls: Counter[Matmul], *, min_seconds: float = 1.0, warmup: int = 2) -> float:
    """FLOP/s of plain ``torch.mm``/``torch.bmm`` over the same mix of shapes (fp32, random data)."""
    generator = torch.Generator().manual_seed(0)
    operands = {mm: (torch.randn(mm.left, generator=generator), torch.randn(mm.right, generator=generator))
                for mm in matmuls}

    def one_pass() -> None:
        for mm, count in matmuls.items():
            left, right = operands[mm]
            op = torch.mm if mm.kind == "mm" else torch.bmm
            for _ in range(count):
                op(left, right)

    for _ in range(warmup):
        one_pass()
    passes, start = 0, time.perf_counter()
    while True:
        one_pass()
        passes += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    flops = sum(mm.flops * count for mm, count in matmuls.items())
    return flops * passes / elapsed


def flops_per_sample(matmuls: Counter[Matmul], batch_rows: int) -> float:
    return sum(mm.flops * count for mm, count in matmuls.items()) / batch_rows
