"""Model FLOP utilisation: the model's matmul FLOPs vs plain matmuls of the same shapes, same machine.

:func:`record_matmuls` runs one training-loss forward + backward under a dispatch mode that records
every matrix product (``mm``, ``addmm``, ``bmm``, ``baddbmm``) with its shapes. :func:`matmul_floor`
then times plain ``torch.mm`` / ``torch.bmm`` on exactly that mix of shapes. Achieved FLOP/s (the
model's matmul FLOPs per sample × training samples/s) divided by that throughput is the model FLOP
utilisation: how close the whole training step gets to the matmuls it cannot avoid.
"""

from __future__ import annotations

import statistics
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


@dataclass(frozen=True)
class MatmulFloor:
    """FLOP/s of plain matmuls over a model's shapes: the median of ``repeats`` timed blocks, and their range."""

    median: float
    low: float
    high: float
    repeats: int
    dtype: str


def matmul_floor(matmuls: Counter[Matmul], *, dtype: torch.dtype = torch.float32, repeats: int = 7,
                 min_seconds: float = 0.25, warmup: int = 3) -> MatmulFloor:
    """Time plain ``torch.mm``/``torch.bmm`` over the same mix of shapes (random data of ``dtype``).

    Why it is steady: outputs are preallocated (``out=``), so the probe times the matmuls and not the
    allocator; it is warmed up first; and it reports the median of ``repeats`` blocks of at least
    ``min_seconds`` each, with their range, instead of one block (one block swung MFU by ±10 %).
    """
    generator = torch.Generator().manual_seed(0)
    operands = {}
    for mm in matmuls:
        left = torch.randn(mm.left, generator=generator).to(dtype)
        right = torch.randn(mm.right, generator=generator).to(dtype)
        out_shape = (*mm.left[:-1], mm.right[-1])
        operands[mm] = (left, right, torch.empty(out_shape, dtype=dtype))

    def one_pass() -> None:
        for mm, count in matmuls.items():
            left, right, out = operands[mm]
            op = torch.mm if mm.kind == "mm" else torch.bmm
            for _ in range(count):
                op(left, right, out=out)

    for _ in range(warmup):
        one_pass()
    flops = sum(mm.flops * count for mm, count in matmuls.items())
    rates = []
    for _ in range(repeats):
        passes, start = 0, time.perf_counter()
        while True:
            one_pass()
            passes += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        rates.append(flops * passes / elapsed)
    return MatmulFloor(median=statistics.median(rates), low=min(rates), high=max(rates), repeats=repeats,
                       dtype=str(dtype).removeprefix("torch."))


def flops_per_sample(matmuls: Counter[Matmul], batch_rows: int) -> float:
    return sum(mm.flops * count for mm, count in matmuls.items()) / batch_rows
