"""``allocator=retain``: freed large tensors are reused instead of being mapped and faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

from m3oe_lightning.errors import UserInputError
from m3oe_lightning.training.allocator import apply_allocator, check_allocator
from tests.helpers import REPO_ROOT

# 30 steps that each make and drop a 64 MB tensor (above glibc's largest default mmap threshold, 32 MB):
# the minor page faults of those steps after a warm-up, in a fresh process with the named setting
STEPS = """
import resource, sys, torch
from m3oe_lightning.training.allocator import apply_allocator
print(apply_allocator(sys.argv[1]))
def step():
    torch.ones(16 * 1024 * 1024).sum()
for _ in range(6):  # the heap settles within a few steps
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(setting: str) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", STEPS, setting], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, check=True)
    taken, faults = done.stdout.split()
    return taken, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_retain_reuses_freed_blocks_where_system_faults_them_in_every_step():
    taken, retained = _faults("retain")
    assert taken == "True"
    untouched, system = _faults("system")
    assert untouched == "False"
    # system: every step maps 64 MB afresh (~16k faults of 4 KB pages, fewer with huge pages); retain: ~none
    assert system >= 30 * 16 and retained * 10 < system, (retained, system)


def test_an_unknown_allocator_is_one_line_naming_the_setting():
    with pytest.raises(UserInputError, match=r"allocator='jemalloc': use retain .* or system"):
        check_allocator("jemalloc")
    with pytest.raises(UserInputError, match="allocator="):
        apply_allocator("jemalloc")
