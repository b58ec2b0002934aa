"""``make automl-arms``'s path: the AutoML arms and controls as two real sweeps through the train entry point (the
same overrides as the Makefile's), then the report names each run's arm from its parameters and chooses the
default on validation only."""

from __future__ import annotations

import csv
import math
import statistics

import pytest
from mlflow.tracking import MlflowClient

from m3oe_lightning.reports import automl
from m3oe_lightning.reports.automl import arm_of
from tests.helpers import REPO_ROOT, isolated, run_module, seeded_store

TINY = ["data=synthetic", "data.rows=1500", "data.batch_size=128", "model.star_dim=8", "model.bottom_dim=8",
        "model.expert_dims=[8]", "model.tower_dims=[8]", "threads=1", "trainer.max_epochs=2", "seed=1,2",
        "++logger.tags.tuned=armtest", "++logger.tags.study=automl-test"]


def test_each_preset_schedule_is_named_and_other_schedules_by_their_settings():
    assert arm_of({"automl.mode": "alternate", "automl.every": "epoch", "automl.source": "train"}) == "paper"
    assert arm_of({"automl.mode": "alternate", "automl.every": "1", "automl.source": "val"}) == "darts"
    assert arm_of({"automl.mode": "joint", "automl.every": "epoch", "automl.source": "train"}) == "joint"
    assert arm_of({"automl.mode": "frozen", "automl.every": "1", "automl.source": "val"}) == "frozen"
    assert arm_of({"automl.mode": "off"}) == "off"
    assert arm_of({"automl.mode": "alternate", "automl.every": "50", "automl.source": "train"}) == \
        "alternate every 50 on train"


@pytest.mark.slow
def test_arms_sweep_report_names_arms_and_chooses_on_validation(tmp_path):
    seeded_store(tmp_path)
    for i, arms in enumerate((["automl.mode=alternate,joint,frozen,off"], ["automl.every=1", "automl.source=val"])):
        sweep = run_module("m3oe_lightning.train", ["-m", *isolated(tmp_path), *TINY, *arms,
                                                    f"hydra.sweep.dir={tmp_path / f'sweep{i}'}"],
                           cwd=REPO_ROOT, timeout=400)
        assert sweep.returncode == 0, sweep.stderr[-2000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    automl.main(["--tracking-uri", uri, "--tuned", "armtest", "--out", str(tmp_path / "out")])

    with open(tmp_path / "out" / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["arm"], r["seed"]) for r in rows} == {(a, s) for a in automl.ARM_ORDER for s in ("1", "2")}
    client = MlflowClient(uri)
    by_id = {r.info.run_id: r for r in client.search_runs(
        [client.get_experiment_by_name("m3oe-lightning").experiment_id])}
    for row in rows:
        run = by_id[row["run_id"]]
        assert arm_of(run.data.params) == row["arm"]
        assert float(row["val/auc_mean_best"]) == pytest.approx(run.data.metrics["val/auc_mean_best"], abs=1e-6)
    final = {(r["arm"], r["seed"]): float(r["arch/alpha_d_final"]) for r in rows}
    for seed in ("1", "2"):
        assert final["frozen", seed] == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-6)  # never trained
        assert final["off", seed] == pytest.approx(0.5, abs=1e-6)
        for arm in automl.LEARNING_ARMS:  # each learning arm moved its weights off the initial value
            assert abs(final[arm, seed] - final["frozen", seed]) > 1e-6

    mean_val = {arm: statistics.fmean(float(r["val/auc_mean_best"]) for r in rows if r["arm"] == arm)
                for arm in automl.LEARNING_ARMS}
    text = (tmp_path / "out" / "README.md").read_text()
    assert f"**Default chosen on validation: `{max(mean_val, key=mean_val.get)}`**" in text
    assert "| `paper` | `frozen` |" in text and "| `frozen` | `off` |" in text
    assert (tmp_path / "out" / "automl_fusion.png").stat().st_size > 0


def test_without_runs_the_report_says_what_to_run(tmp_path):
    with pytest.raises(SystemExit, match="make automl-arms"):
        automl.main(["--tracking-uri", f"sqlite:///{seeded_store(tmp_path)}", "--out", str(tmp_path)])
