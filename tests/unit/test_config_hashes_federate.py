"""Federated runs already in a store stay findable: their config hashes equal the pre-restructure ones.

``tests/fixtures/config_hashes.json`` was computed by the code before the restructure (issue #11), when
``federated.strategy`` repeated every strategy setting and the M3oE / centralized variants were
``federated=`` options; they are now experiment presets, and :func:`federated_identity` rebuilds the old
layout, so ``skip_finished`` and ``federated.resume`` still find those runs. PAGE then mapped actions
affinely (its default until the Synthetic study chose the released map), so its runs are spelled so today.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from m3oe_lightning.config import compose
from m3oe_lightning.federated.factory import federated_identity
from m3oe_lightning.tracking import provenance

FIXTURE = json.loads((Path(__file__).resolve().parent.parent / "fixtures" / "config_hashes.json").read_text())
PRESETS = {f"federated={name}": f"experiment=federated/{name}" for name in ("centralized", "fedavg_m3oe", "page_m3oe")}


def federate_hash(overrides: list[str]) -> str:
    resolved = OmegaConf.to_container(compose("federate", overrides, runtime=True), resolve=True)
    return provenance.config_hash(federated_identity(resolved))


@pytest.mark.parametrize("overrides", sorted(FIXTURE["federate"]))
def test_federate_config_hash_is_unchanged(overrides: str) -> None:
    spelled_now = [PRESETS.get(override, override) for override in overrides.split()]
    if any(override.startswith("federated=page") for override in overrides.split()):
        spelled_now.append("federated.action_map=affine")  # PAGE's default then; the released map is now
    assert federate_hash(spelled_now) == FIXTURE["federate"][overrides]


def test_strategy_settings_and_variants_change_the_hash_and_run_hooks_do_not() -> None:
    """The comparison is not vacuous: each strategy's own settings are in the identity."""
    changed = [["federated=fedprox"], ["federated=fedprox", "federated.mu=0.5"], ["federated=ditto"],
               ["federated=ditto", "federated.lam=0.5"], ["federated=page"], ["federated=page", "federated.warmup=7"],
               ["experiment=federated/page_m3oe"], ["experiment=federated/centralized"], []]
    assert len({federate_hash(overrides) for overrides in changed}) == len(changed)
    same = {federate_hash(overrides) for overrides in ([], ["federated.resume=true"], ["logger.run_name=x"],
                                                       ["federated.kill_after_round=2"], ["skip_finished=true"])}
    assert len(same) == 1
