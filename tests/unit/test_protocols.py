"""Comparison protocols (``protocol=paper|released``): what each preset sets, and the splits it gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from m3oe_lightning.config import CONF_DIR, build
from tests.helpers import compose_train
from tests.unit.test_movielens_readers import write_ml1m

CLAIMS = {  # protocol: (split kind, epoch cap, early-stopping patience)
    "paper": ("random", 30, 3),
    "released": ("released", 50, 10),
}


def test_every_protocol_file_is_claimed_here():
    assert sorted(p.stem for p in (Path(CONF_DIR) / "protocol").glob("*.yaml")) == sorted(CLAIMS)


@pytest.mark.parametrize("protocol", sorted(CLAIMS))
def test_protocol_sets_split_epochs_patience_and_tag(protocol):
    split, max_epochs, patience = CLAIMS[protocol]
    cfg = compose_train([f"protocol={protocol}", "experiment=paper/m3oe"])
    assert cfg.data.split == split and cfg.trainer.max_epochs == max_epochs
    assert cfg.callbacks.early_stopping.patience == patience
    assert cfg.callbacks.early_stopping.monitor == cfg.callbacks.model_checkpoint.monitor == "val/auc_mean"
    assert dict(cfg.logger.tags) == {"study": "paper", "row": "M3oE", "protocol": protocol}  # the row's tags kept
    assert cfg.optimizer.lr == 1e-2 and cfg.model._target_.endswith("M3oE")  # the row's own settings untouched


def test_a_protocol_wins_over_the_experiment_and_the_command_line_over_both():
    listed = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "train.yaml").defaults)
    defaults = [next(iter(d)) if isinstance(d, dict) else d for d in listed]  # later entries override earlier
    assert defaults.index("experiment") < defaults.index("protocol") < defaults.index("debug")
    cfg = compose_train(["protocol=released", "trainer.max_epochs=7", "callbacks.early_stopping.patience=2"])
    assert (cfg.trainer.max_epochs, cfg.callbacks.early_stopping.patience) == (7, 2)


def test_without_a_protocol_the_settings_are_the_defaults():
    """(tests/unit/test_config_hashes*.py: and every existing config's hash is unchanged)"""
    cfg = compose_train([])
    assert (cfg.data.split, cfg.trainer.max_epochs, cfg.callbacks.early_stopping.patience) == ("random", 10, 3)
    assert "protocol" not in cfg.logger.tags and "protocol" not in cfg


def test_paper_protocol_splits_80_10_10_at_random(tmp_path):
    cfg = compose_train(["protocol=paper", "data=synthetic", "data.rows=1000", f"paths.log_dir={tmp_path}"])
    dataset = build(cfg.data).load()
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (800, 100, 100)
    ordered = compose_train(["data=synthetic", "data.rows=1000", "data.split=ordered", f"paths.log_dir={tmp_path}"])
    assert not np.array_equal(dataset.test.labels.numpy(), build(ordered.data).load().test.labels.numpy())


def test_released_protocol_splits_movielens_in_the_released_files_order(tmp_path):
    folder = write_ml1m(tmp_path / "ml")  # 10 ratings: 8 / 1 / 1 rows
    cfg = compose_train(["protocol=released", f"data.root={folder}", "data.cache_dir=null",
                         f"paths.log_dir={tmp_path}"])
    dataset = build(cfg.data).load()
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (8, 1, 1)
    # the released order ends with user 4's rating of movie 3, then user 3's (line 6, then line 2), not the
    # file's last two lines: see tests/unit/test_splits.py
    assert (dataset.val.domain.tolist(), dataset.test.domain.tolist()) == ([2], [1])
