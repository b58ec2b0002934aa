"""``make bf16-accuracy``'s path: a real sweep over seeds × {32-true, bf16-true} through the train entry point,
then the report pairs each seed's runs from MLflow."""

from __future__ import annotations

import csv
import math

import pytest
from mlflow.tracking import MlflowClient

from m3oe_lightning.reports import precision
from tests.helpers import REPO_ROOT, isolated, run_module, seeded_store

TINY = ["data=synthetic", "data.rows=1500", "data.batch_size=128", "model.star_dim=8", "model.bottom_dim=8",
        "model.expert_dims=[8]", "model.tower_dims=[8]", "threads=1", "trainer.max_epochs=2"]


@pytest.mark.slow
def test_a_seed_by_precision_sweep_is_paired_seed_by_seed(tmp_path):
    seeded_store(tmp_path)
    sweep = run_module("m3oe_lightning.train", ["-m", *isolated(tmp_path), *TINY, "seed=1,2",
                                                "trainer.precision=32-true,bf16-true", "++logger.tags.study=bf16test",
                                                f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=REPO_ROOT, timeout=400)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    precision.main(["--tracking-uri", uri, "--study", "bf16test", "--out", str(tmp_path / "out")])

    client = MlflowClient(uri)
    runs = [r for r in client.search_runs([client.get_experiment_by_name("m3oe-lightning").experiment_id])
            if r.data.tags.get("study") == "bf16test"]
    auc = {(int(r.data.params["seed"]), r.data.params["trainer.precision"]): r.data.metrics["test/auc_mean"]
           for r in runs}
    assert set(auc) == {(s, p) for s in (1, 2) for p in ("32-true", "bf16-true")}
    with open(tmp_path / "out" / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(int(r["seed"]), r["precision"]): float(r["test_auc_mean"]) for r in rows} == auc
    assert all(float(r["wall_seconds"]) > 0 for r in rows)

    text = (tmp_path / "out" / "README.md").read_text()
    diffs = [auc[s, "bf16-true"] - auc[s, "32-true"] for s in (1, 2)]
    for seed, diff in zip((1, 2), diffs):
        fp32, bf16 = auc[seed, "32-true"], auc[seed, "bf16-true"]
        assert f"| {seed} | {100 * fp32:.2f} | {100 * bf16:.2f} | {100 * diff:.2f} |" in text
    (verdict,) = [line for line in text.splitlines() if line.startswith("| `bf16-true` |")]
    mean = sum(diffs) / 2
    assert f"| 2 | {100 * mean:.2f} | {100 * max(map(abs, diffs)):.2f} |" in verdict
    assert verdict.endswith("| **yes** |" if abs(mean) <= precision.TOLERANCE else "| **no** |")
    assert all(math.isfinite(d) and d != 0 for d in diffs)  # the two precisions really computed differently


def test_without_an_fp32_run_the_report_says_what_to_run(tmp_path):
    with pytest.raises(SystemExit, match="make bf16-accuracy"):
        precision.main(["--tracking-uri", f"sqlite:///{seeded_store(tmp_path)}", "--out", str(tmp_path)])
