"""Hydra callbacks (registered in ``conf/hydra/default.yaml``; they act in multirun mode only).

:class:`MLflowSweepRun` gives every sweep one parent MLflow run. Before any job starts it initialises the
sqlite store and creates the experiment, once, in the launching process (two parallel jobs opening a fresh
sqlite store race on its schema migrations and can leave it unusable), then creates the parent run and
exports its id in ``M3OE_MLFLOW_PARENT_RUN_ID``. Each job's run then carries the tags ``mlflow.parentRunId``
and ``sweep`` (``provenance.sweep_tags``), so the MLflow UI shows the sweep collapsed under its parent. Jobs
inherit the variable: in-process with the basic launcher, through the environment of the worker processes
with the joblib launcher (they start after this hook).
"""

from __future__ import annotations

import atexit
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.tracking import provenance

if TYPE_CHECKING:
    from mlflow.entities import Run

# Hydra builds this callback for every run, a single one too: MLflow and Lightning are imported only once a
# multirun starts, so `--help` and settings errors do not pay for them.

log = logging.getLogger(__name__)


class MLflowSweepRun(Callback):
    """One parent MLflow run per Hydra multirun, named ``name`` (default ``sweep-<sweep dir name>``)."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self._parent: tuple[str, str] | None = None  # (tracking uri, parent run id) while the sweep runs

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.tracking import MlflowClient

        from m3oe_lightning.tracking import runs

        uri, experiment = str(config.logger.tracking_uri), str(config.logger.experiment_name)
        experiment_id = runs.ensure_experiment(uri, experiment, config.logger.get("artifact_location"))
        sweep_dir = str(config.hydra.sweep.dir)
        client = MlflowClient(uri)
        with runs.store_lock(uri):
            name = runs.unique_run_name(client, experiment_id, self.name or f"sweep-{Path(sweep_dir).name}")
            tags = {"sweep": name, "sweep_dir": sweep_dir, "git_commit": provenance.git_commit(),
                    "command": provenance.command_line(str(config.get("task_name") or "train"),
                                                       list(config.hydra.overrides.task), multirun=True)}
            parent = client.create_run(experiment_id, run_name=name, tags=tags)
        self._parent = (uri, parent.info.run_id)
        os.environ[provenance.PARENT_RUN_ENV] = parent.info.run_id
        os.environ[provenance.SWEEP_NAME_ENV] = name
        atexit.register(self._end, "FAILED")  # a job raised: Hydra re-raises and skips on_multirun_end
        log.info("MLflow parent run %s (%s) in %s", name, parent.info.run_id, uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._end("FINISHED")

    def _end(self, status: str) -> None:
        if self._parent is None:
            return
        uri, run_id = self._parent
        self._parent = None
        os.environ.pop(provenance.PARENT_RUN_ENV, None)
        os.environ.pop(provenance.SWEEP_NAME_ENV, None)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        children = client.search_runs([client.get_run(run_id).info.experiment_id], max_results=50_000,
                                      filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
        states = [c.info.status for c in children]
        client.set_tag(run_id, "runs", f"{states.count('FINISHED')} finished / {len(states)}")  # skipped: none
        client.set_terminated(run_id, status)
        print(summary_table(children), flush=True)


SUMMARY_METRICS = (keys.VAL_AUC_MEAN_BEST, keys.TEST_AUC_MEAN, keys.key(keys.GLOBAL, keys.AUC_MEAN),
                   keys.key(keys.PERSONAL, keys.AUC_MEAN))


def summary_table(children: list[Run]) -> str:
    """One line per job of the sweep (oldest first): name, status and the metrics that rank runs."""
    shown = [m for m in SUMMARY_METRICS if any(m in c.data.metrics for c in children)]
    rows = [["run", "status", *shown]]
    for child in sorted(children, key=lambda c: c.info.start_time):
        rows.append([child.info.run_name, child.info.status,
                     *(f"{child.data.metrics[m]:.4f}" if m in child.data.metrics else "" for m in shown)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
