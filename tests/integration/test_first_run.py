"""What a new user sees and finds after one run (issue #16, first-run frictions)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import REPO_ROOT, isolated, run_module, seeded_store

NOISE = ("litlogger", "LeafSpec", "Total FLOPs", "log_every_n_steps", "v_num", "Traceback")


def write_events(path, rows: int = 600) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user", "item", "dom", "click", "prix (€)"])
        for k in range(rows):
            writer.writerow([k % 13, k % 11, "café" if k % 2 else "thé/vert", int((k * 7) % 5 < 2), k % 17])


def test_one_run_reads_cleanly_and_lands_complete_in_mlflow(tmp_path):
    path = tmp_path / "events.csv"
    write_events(path)
    (tmp_path / "conf" / "experiment").mkdir(parents=True)  # a column name the command line cannot spell
    (tmp_path / "conf" / "experiment" / "prices.yaml").write_text(
        "# @package _global_\ndata:\n  dense_features:\n    'prix (€)': minmax\n", encoding="utf-8")
    result = run_module("m3oe_lightning.train", [
        *isolated(tmp_path), "data=tabular", f"data.path={path}", "data.domain_column=dom",
        "data.tasks={click: click}", "data.sparse_features=[user,item]",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "experiment=prices",
        "model=mlp", "trainer.max_epochs=2", "trainer.enable_model_summary=true"], cwd=REPO_ROOT, timeout=240)
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert not [word for word in NOISE if word in out], out
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and "val/auc_mean" in epoch_lines[1] and "ETA" in epoch_lines[1]
    assert any(line.startswith("model MLP: ") for line in result.stdout.splitlines())
    (closing,) = [line for line in result.stdout.splitlines() if line.startswith("MLflow run ")]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("m3oe-lightning")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id in closing and "mlflow ui --backend-store-uri" in closing
    params = run.data.params
    assert "optimizer.lr" in params and "lr" not in params and "automl_mode" not in params
    assert params["data.dense_features.prix ___"] == "minmax"  # MLflow refuses "(€)": made safe, mapping kept
    renamed = client.download_artifacts(run.info.run_id, "config/param_names.json", str(tmp_path))
    assert json.loads(open(renamed, encoding="utf-8").read()) == {
        "data.dense_features.prix ___": "data.dense_features.prix (€)"}
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "tabular" and str(path) in dataset_input.dataset.source
    assert any(k.startswith("test/auc/caf") for k in run.data.metrics)  # a domain named "thé/vert" is made safe
    assert any(k.startswith("test/auc/th") and k.count("/") == 3 for k in run.data.metrics)


def test_a_sweep_ends_with_one_summary_table(tmp_path):
    seeded_store(tmp_path)  # the one-run test above is the one on a new store
    result = run_module("m3oe_lightning.train", [
        "-m", *isolated(tmp_path), "data=synthetic", "data.rows=600", "model=mlp", "trainer.max_epochs=1",
        "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(k for k, line in enumerate(lines) if line.startswith("run ") and "status" in line)
    assert "val/auc_mean_best" in lines[header] and "test/auc_mean" in lines[header]
    assert [line.split()[1] for line in lines[header + 1:header + 3]] == ["FINISHED", "FINISHED"]


def test_help_lists_only_the_groups_each_entry_point_composes():
    train = run_module("m3oe_lightning.train", ["--help"], cwd=REPO_ROOT, timeout=60)
    federate = run_module("m3oe_lightning.federate", ["--help"], cwd=REPO_ROOT, timeout=60)
    assert train.returncode == 0 and federate.returncode == 0
    train_groups = {line.split(":")[0] for line in train.stdout.splitlines() if ": " in line}
    federate_groups = {line.split(":")[0] for line in federate.stdout.splitlines() if ": " in line}
    assert "model" in train_groups and "federated" not in train_groups and "experiment/federated" not in train_groups
    assert "federated" in federate_groups and "trainer" not in federate_groups


ANSWER_ONLY = """
import runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_module(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
print("loaded:", *sorted(name for name in ("torch", "lightning", "mlflow", "optuna") if name in sys.modules))
"""


@pytest.mark.parametrize("module, args", [
    ("m3oe_lightning.train", ["--help"]), ("m3oe_lightning.federate", ["--help"]),
    ("m3oe_lightning.tune", ["--help"]), ("m3oe_lightning.predict", ["--help"]),
    ("m3oe_lightning.export", ["--help"]), ("m3oe_lightning.train", ["seed=abc"]),
], ids=["train", "federate", "tune", "predict", "export", "train-settings-error"])
def test_help_and_a_settings_error_answer_without_loading_torch_lightning_mlflow_or_optuna(module, args):
    """They answer in about a second (bench.startup has the times) because none of the heavy libraries loads."""
    done = subprocess.run([sys.executable, "-c", ANSWER_ONLY, module, *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    (loaded,) = [line for line in done.stdout.splitlines() if line.startswith("loaded:")]
    assert loaded == "loaded:", (loaded, done.stderr[-500:])
