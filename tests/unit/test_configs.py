"""Every config file composes, and its objects build."""

from __future__ import annotations

from pathlib import Path

import pytest

from m3oe_lightning.config import CONF_DIR
from tests.helpers import compose_train

CONF = Path(CONF_DIR)


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["data", "model", "trainer", "callbacks", "logger", "experiment", "protocol",
                                   "debug"])
def test_every_option_of_every_group_composes(group, tmp_path):
    for option in group_options(group):
        cfg = compose_train([f"{group}={option}", f"paths.log_dir={tmp_path}"])
        assert cfg.seed == 2022


def test_released_preset_sets_the_released_code_switches():
    cfg = compose_train(["experiment=m3oe_released"])
    assert cfg.model.num_shared_experts == 4 and cfg.model.tower_layernorm and cfg.model.gate_detach
    assert cfg.automl.mode == "joint" and cfg.data.batch_size == 40960 and cfg.optimizer.lr == 1e-2


def test_paper_preset_is_the_default():
    cfg = compose_train([])
    assert cfg.data.name == "movielens1m" and cfg.model.num_shared_experts == 1
    assert not cfg.model.tower_layernorm and not cfg.model.gate_detach and cfg.automl.mode == "alternate"
    assert cfg.logger.tracking_uri == "sqlite:///logs/mlflow.db"
