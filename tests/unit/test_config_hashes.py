"""Runs already in a store stay findable: the config hashes of training runs equal the pre-restructure ones.

``tests/fixtures/config_hashes.json`` was computed by the code before the restructure (issue #11) for the
paper rows, the presets and a few edge settings; ``skip_finished`` and ``resume`` match on these hashes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from m3oe_lightning.config import compose
from m3oe_lightning.tracking import provenance
from m3oe_lightning.train import training_identity

FIXTURE = json.loads((Path(__file__).resolve().parent.parent / "fixtures" / "config_hashes.json").read_text())


@pytest.mark.parametrize("overrides", sorted(FIXTURE["train"]))
def test_training_config_hash_is_unchanged(overrides: str) -> None:
    cfg = compose("train", overrides.split(), runtime=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert provenance.config_hash(training_identity(resolved)) == FIXTURE["train"][overrides]


def test_a_changed_setting_changes_the_hash() -> None:
    """The fixture comparison is not vacuous: settings that change the computation change the hash."""
    hashes = {provenance.config_hash(training_identity(OmegaConf.to_container(
        compose("train", ov, runtime=True), resolve=True))) for ov in (["seed=1"], ["seed=2"], ["optimizer.lr=0.5"],
                                                                    ["trainer.max_epochs=3"])}
    assert len(hashes) == 4
    same = {provenance.config_hash(training_identity(OmegaConf.to_container(
        compose("train", ov, runtime=True), resolve=True))) for ov in ([], ["logger.run_name=x"], ["resume=true"])}
    assert len(same) == 1
