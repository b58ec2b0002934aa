"""What a Hydra sweeper receives from ``m3oe-train``: a validation metric unless told otherwise (issue #12)."""

from __future__ import annotations

import pytest

from m3oe_lightning import train as entry
from m3oe_lightning.errors import UserInputError
from tests.helpers import compose_train

METRICS = {"test/auc_mean": 0.9, "val/auc_mean_best": 0.7}


def test_the_default_objective_is_the_validation_selection_value(monkeypatch):
    monkeypatch.setattr(entry, "train", lambda cfg: dict(METRICS))
    assert entry.objective(compose_train([])) == 0.7


def test_a_named_objective_is_returned_and_an_unknown_one_refused(monkeypatch):
    monkeypatch.setattr(entry, "train", lambda cfg: dict(METRICS))
    assert entry.objective(compose_train(["optimized_metric=test/auc_mean"])) == 0.9
    with pytest.raises(UserInputError, match="optimized_metric='val/nope'"):
        entry.objective(compose_train(["optimized_metric=val/nope"]))


def test_eval_chunk_rows_reaches_the_model_and_leaves_the_hash_alone():
    from omegaconf import OmegaConf

    from m3oe_lightning.tracking import provenance
    from m3oe_lightning.training.system import build_system

    cfg = compose_train(["data=synthetic", "data.rows=300", "model=mlp", "eval_chunk_rows=7"])
    _, model, _ = build_system(cfg)
    assert model.eval_chunk_rows == 7
    hashes = {provenance.config_hash(entry.training_identity(OmegaConf.to_container(compose_train(ov), resolve=True)))
              for ov in (["eval_chunk_rows=7"], [])}
    assert len(hashes) == 1
