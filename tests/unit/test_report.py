"""The report reads finished runs from an MLflow store and writes Markdown, a PNG and the README block."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from m3oe_lightning.reports import presets as report
from m3oe_lightning.reports.common import MOVIELENS_DOMAINS, MOVIELENS_TASKS
from m3oe_lightning.tracking.runs import ensure_experiment

GROUPS = [(d, t) for d in MOVIELENS_DOMAINS for t in MOVIELENS_TASKS]


def fake_run(client: MlflowClient, experiment_id: str, model: str, split: str, auc: float,
             status: str = "FINISHED", study: str = "movielens", pooled: float | None = None) -> None:
    run = client.create_run(experiment_id, run_name=f"{model}-{split}",
                            tags={"study": study, "model": model, "split": split, "seed": "2022",
                                  "command": f"python -m m3oe_lightning.train experiment={model}"})
    rid = run.info.run_id
    for epoch, value in enumerate((auc - 0.02, auc - 0.01, auc)):
        client.log_metric(rid, "val/auc_mean", value, step=epoch)
    for d, t in GROUPS:
        client.log_metric(rid, f"test/auc/{d}/{t}", auc)
        client.log_metric(rid, f"test/logloss/{d}/{t}", 0.5)
    client.log_metric(rid, "test/auc_mean", auc)
    client.log_metric(rid, "test/logloss_mean", 0.5)
    if pooled is not None:
        client.log_metric(rid, "test/auc_pooled_mean", pooled)
    client.set_terminated(rid, status)


def test_report_from_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = ensure_experiment(uri, "m3oe-lightning", str(tmp_path / "artifacts"))
    client = MlflowClient(uri)
    fake_run(client, exp, "m3oe_paper", "random", 0.8235, pooled=0.8301)
    fake_run(client, exp, "m3oe_released", "random", 0.8111)  # logged before pooled metrics existed
    fake_run(client, exp, "m3oe_paper", "ordered", 0.70, status="FAILED")  # not reported
    fake_run(client, exp, "other", "random", 0.5, study="elsewhere")  # not in the study
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- RESULTS:START -->\nold\n<!-- RESULTS:END -->\noutro\n")

    report.main(["--tracking-uri", uri, "--out", str(tmp_path / "out"), "--name", "presets.md",
                 "--readme", str(readme)])

    text = (tmp_path / "out" / "presets.md").read_text()
    assert "| m3oe_paper | random | 2022 |" in text and "**0.8235**" in text and "**0.8111**" in text
    assert "| m3oe_paper | ordered |" not in text and "| other |" not in text
    assert "`python -m m3oe_lightning.train experiment=m3oe_paper`" in text
    assert (tmp_path / "out" / "test_auc.png").stat().st_size > 1000
    block = readme.read_text()
    assert block.startswith("intro\n<!-- RESULTS:START -->\n") and block.endswith("<!-- RESULTS:END -->\noutro\n")
    assert "| m3oe_paper | random | 0.8235 | 0.8301 | 0.5000 | 0.8235 | 3 |" in block and "old" not in block
    assert "| m3oe_released | random | 0.8111 | – | 0.5000 | 0.8111 | 3 |" in block
    assert "| **0.8235** | 0.8301 | 0.5000 | 0.8235 | 3 (3) |" in text  # pooled AUC beside the mean


def test_run_table_has_each_task_pooled_under_the_mean():
    from m3oe_lightning.tracking.artifacts import markdown_table

    metrics = {"test/auc/a/click": 0.7, "test/logloss/a/click": 0.6, "test/auc_mean": 0.7, "test/logloss_mean": 0.6,
               "test/auc_pooled/click": 0.72, "test/logloss_pooled/click": 0.55, "test/auc_pooled_mean": 0.72,
               "test/logloss_pooled_mean": 0.55}
    lines = markdown_table(metrics, ["a"], ["click"]).splitlines()
    assert lines[-3:] == ["| **mean** |  | **0.7000** | **0.6000** |",
                          "| **all (pooled)** | click | **0.7200** | **0.5500** |",
                          "| **pooled mean** |  | **0.7200** | **0.5500** |"]
    without = {k: v for k, v in metrics.items() if "pooled" not in k}  # a run from before: no empty pooled rows
    assert markdown_table(without, ["a"], ["click"]).splitlines()[-1] == "| **mean** |  | **0.7000** | **0.6000** |"
