"""`make page-synthetic-report` end to end: real Synthetic runs (6 clients, 3 rounds) → README, CSV and curves."""

from __future__ import annotations

import csv
import statistics

import pytest
from mlflow.tracking import MlflowClient

from m3oe_lightning.federate import federate
from m3oe_lightning.reports import page_synthetic as report
from tests.helpers import compose_train, isolated, seeded_store
from tests.unit.test_classification import SMALL

ARMS = {"fedavg": ["federated=fedavg"],
        "page-released": ["federated=page", "federated.action_map=released", "federated.warmup=1",
                          "federated.epochs_max=2", "+federated.label=page-released"],
        "page-affine": ["federated=page", "federated.action_map=affine", "federated.warmup=1",
                        "federated.epochs_max=2", "+federated.label=page-affine"],
        "page-random": ["federated=page", "federated.action_map=released", "federated.warmup=3",
                        "federated.epochs_max=2", "+federated.label=page-random"]}


def test_the_synthetic_report_averages_each_runs_last_rounds_and_tests_page_against_both_references(tmp_path):
    seeded_store(tmp_path)
    for selection in ARMS.values():
        for seed in (1, 2):
            federate(compose_train([*SMALL, *selection, f"seed={seed}", "+logger.tags.study=syntest",
                                    *isolated(tmp_path)[:4]], config_name="federate"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "report"
    report.main(["--tracking-uri", uri, "--study", "syntest", "--out", str(out), "--last", "2"])

    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == report.CSV_COLUMNS
    order = ("fedavg", "page-affine", "page-random", "page-released")  # the store's order: by name
    assert [(r["arm"], r["seed"]) for r in rows] == [(a, s) for a in order for s in ("1", "2")]
    client = MlflowClient(uri)
    for row in rows:
        history = [m.value for m in sorted(client.get_metric_history(row["run_id"], "global/accuracy"),
                                           key=lambda m: m.step)]
        assert row["rounds"] == "3" and len(history) == 3
        assert float(row["global_accuracy_last"]) == pytest.approx(statistics.fmean(history[-2:]), abs=1e-6)
    text = (out / "README.md").read_text()
    assert "mean of the last 2 rounds" in text and "**Seeds:** 1, 2" in text
    tests = [line for line in text.splitlines() if line.startswith("| page-released")]
    assert len(tests) == 3 and "vs fedavg" in text and "vs page-random" in text  # results, tests and agents rows
    validation = {arm: statistics.fmean(
        statistics.fmean([m.value for m in sorted(client.get_metric_history(row["run_id"], report.SERVER_VALIDATION),
                                                  key=lambda m: m.step)][-2:])
        for row in rows if row["arm"] == arm) for arm in report.MAPS}
    chosen = max(validation, key=validation.__getitem__).removeprefix("page-")
    assert "chosen on validation only" in text and f"`federated.action_map={chosen}`" in text
    assert "the paper claims +35.20 %" in text and "the paper claims +39.91 %" in text
    assert (out / "synthetic_curves.png").stat().st_size > 5_000


def test_the_synthetic_report_without_runs_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no finished runs with study='page_synthetic'"):
        report.main(["--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--out", str(tmp_path)])


def test_the_agents_summary_is_the_last_rounds_mean_lr_epochs_and_the_spread_of_the_weights():
    from m3oe_lightning.reports.federated import FederatedRun
    metrics = {"page/client/a/lr": 0.1, "page/client/b/lr": 0.05, "page/client/a/epochs": 20.0,
               "page/client/b/epochs": 10.0, "page/client/a/reward": 9.0, "page/weight/a": 0.75,
               "page/weight/b": 0.25, "global/accuracy": 0.5}
    summary = report.agent_summary(FederatedRun(algorithm="page-released", seed="1", run_id="r", metrics=metrics))
    assert summary == pytest.approx({"lr": 0.075, "epochs": 15.0, "weight_cv": 0.5, "weight_max": 1.5})
    assert report.agent_summary(FederatedRun(algorithm="fedavg", seed="1", run_id="r", metrics={})) == {}
