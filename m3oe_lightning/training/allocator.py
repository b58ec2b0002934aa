"""How the process returns freed memory: the ``allocator`` setting (``retain`` | ``system``).

PyTorch's CPU tensors come from glibc ``malloc``. By default glibc serves any block above a threshold that
tops out at 32 MB with a fresh ``mmap`` and unmaps it on ``free``, and it trims the heap's free top back
to the kernel. At batch 40,960 every large activation (40,960 × 256 floats is 42 MB) is such a block, so
each training step maps, page-faults in and unmaps the same memory again: ``make bench`` measured ~30 % of
the CPU time in the kernel there. ``retain`` raises both thresholds (``mallopt``), so freed blocks stay in
the heap and the next step reuses them already faulted in; the price is that the process keeps its peak
footprint until it exits instead of shrinking between steps. ``system`` leaves glibc as it is.

Only the process that calls :func:`apply_allocator` is affected; it is a no-op (with ``False``) where the
C library is not glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

from m3oe_lightning.errors import UserInputError

ALLOCATORS = ("retain", "system")
DEFAULT_ALLOCATOR = "retain"  # what a config without the setting gets (conf/train.yaml and federate.yaml say it)
# mallopt's parameter numbers (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# the largest value mallopt takes (an int): blocks up to ~2 GB come from the heap and none is trimmed
RETAIN_BYTES = 2**31 - 1
GLIBC_INITIAL_BYTES = 128 * 1024  # both thresholds' values at start (glibc then adapts them; set, they stay)
_retaining = False  # whether this process's last setting was retain


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
    except (OSError, AttributeError):
        return None
    return libc


def check_allocator(name: object) -> None:
    """Setting ``allocator`` must name one of :data:`ALLOCATORS` (checked before anything loads)."""
    if name not in ALLOCATORS:
        raise UserInputError(f"allocator={name!r}: use retain (freed memory reused: the default) or system "
                             "(glibc's own thresholds)")


def apply_allocator(name: str) -> bool:
    """Apply setting ``allocator=name`` to this process; True when glibc took the thresholds.

    Call it before the large tensors are made (it governs later allocations only); calling it again is
    harmless. ``system`` changes nothing in a fresh process; in one that chose ``retain`` before, it puts
    glibc's initial thresholds back (fixed from then on: glibc's own adaptation cannot be switched on again).
    """
    global _retaining
    check_allocator(name)
    libc = _glibc()
    if libc is None:
        return False
    if name == "system":
        if _retaining:  # this process chose retain before (presets run in one process): glibc's first values
            for option in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD):
                libc.mallopt(option, ctypes.c_int(GLIBC_INITIAL_BYTES))
            _retaining = False
        return False
    taken = [libc.mallopt(option, ctypes.c_int(RETAIN_BYTES)) for option in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD)]
    _retaining = all(taken)
    return _retaining
