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
