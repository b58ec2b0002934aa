"""One way to derive a seed from a base seed and the keys of what it seeds (a client, a round, an epoch).

Hand-mixed formulas (``seed * 1_000_003 + k``) collide for some inputs and differ from place to place;
numpy's ``SeedSequence`` hashes the whole tuple, so every (base, keys…) gets its own well-spread stream.
"""

from __future__ import annotations

import zlib

import numpy as np


def _entropy(value: int | str) -> int:
    if isinstance(value, str):
        return zlib.crc32(value.encode())  # stable across processes, unlike hash()
    return int(value) % 2**63  # SeedSequence takes non-negative integers


def derive_seed(base: int, *keys: int | str, bits: int = 31) -> int:
    """A seed in ``[0, 2**bits)`` for ``(base, *keys)``: the same inputs always give the same seed."""
    sequence = np.random.SeedSequence([_entropy(base), *(_entropy(k) for k in keys)])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] % (2**bits))
