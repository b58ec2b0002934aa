"""`make bench-reproduce`: times a real sweep command, reads its runs from MLflow and projects the full run."""

from __future__ import annotations

import json
import shlex
import sys

import pytest

from m3oe_lightning.bench import reproduce as bench_reproduce
from tests.helpers import isolated, seeded_store

TINY = ["data=synthetic", "data.rows=2000", "data.batch_size=500", "trainer.max_epochs=2", "model.star_dim=16",
        "model.bottom_dim=8", "model.expert_dims=[8]", "model.tower_dims=[8]"]


def test_times_the_command_and_projects_from_its_runs(tmp_path):
    sweep = [sys.executable, "-m", "m3oe_lightning.train", "-m", *TINY, "seed=1,2", "+logger.tags.row=tiny",
             "+logger.tags.study=quick-test", *isolated(tmp_path), f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    store = f"sqlite:///{seeded_store(tmp_path)}"
    result = bench_reproduce.main(["--timed", shlex.join(sweep), "--tracking-uri", store, "--study", "quick-test",
                                   "--epochs", "10", "--seeds", "5", "--out", str(tmp_path)])
    runs = result["runs"]
    assert len(runs) == 2 and all(r["row"] == "tiny" and r["epochs"] == 2 for r in runs)
    for r in runs:
        assert 0 < r["first_epoch_s"] < r["seconds"] and r["after_training_s"] > 0
        assert r["first_epoch_s"] + r["after_training_s"] == pytest.approx(r["seconds"], abs=1e-3)
    expected = 5 * sum(10 * r["first_epoch_s"] + r["after_training_s"] for r in runs)
    assert result["projected_seconds"] == pytest.approx(expected)
    assert result["wall_seconds"] > sum(r["seconds"] for r in runs)  # the command's wall clock holds the runs
    assert json.loads((tmp_path / "reproduce.json").read_text())["projected_seconds"] == pytest.approx(expected)
    assert "Projected full `make reproduce`" in (tmp_path / "reproduce.md").read_text()


def test_a_failing_command_records_nothing(tmp_path):
    with pytest.raises(SystemExit, match="exited with 1; nothing recorded"):
        bench_reproduce.main(["--timed", "false", "--out", str(tmp_path)])
    assert not (tmp_path / "reproduce.json").exists()
