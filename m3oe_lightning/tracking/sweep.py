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
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.errors import Interrupted
from m3oe_lightning.tracking import provenance

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

# Hydra builds this callback for every run, a single one too: MLflow and Lightning are imported only once a
# multirun starts, so `--help` and settings errors do not pay for them.

log = logging.getLogger(__name__)
ORPHAN_WAIT_S = 15.0  # how long a stopped sweep waits for its killed workers to exit before it gives up


class MLflowSweepRun(Callback):
    """One parent MLflow run per Hydra multirun, named ``name`` (default ``sweep-<sweep dir name>``)."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self._parent: tuple[str, str] | None = None  # (tracking uri, parent run id) while the sweep runs
        self._checkpoint_root = Path("logs/checkpoints")
        self._signal: int | None = None  # the signal that stopped the sweep
        self._lock: IO[str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Without the lock's file handle: the joblib launcher pickles the callbacks into its workers."""
        return {**self.__dict__, "_lock": None}

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
        self._checkpoint_root = Path(str(config.paths.checkpoint_dir)).resolve()
        # held while the sweep lives, as each job holds its own: a launcher killed outright (kill -9) leaves
        # a parent run that the next run started here marks KILLED (runs.mark_orphans_killed)
        self._lock = runs.run_lock(self._checkpoint_root, parent.info.run_id)
        os.environ[provenance.PARENT_RUN_ENV] = parent.info.run_id
        os.environ[provenance.SWEEP_NAME_ENV] = name
        atexit.register(self._end, "FAILED")  # a job raised: Hydra re-raises and skips on_multirun_end
        self._stop_on_signals()
        log.info("MLflow parent run %s (%s) in %s", name, parent.info.run_id, uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._end("FINISHED")

    def _stop_on_signals(self) -> None:
        """SIGTERM stops the launching process as Ctrl-C does (an exception in its main thread), so the
        launcher stops its jobs and :meth:`_end` runs; by default SIGTERM would end this process at once and
        leave the joblib workers training on, their runs and this one RUNNING."""
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(signum: int, frame: FrameType | None) -> None:
            self._signal = signum
            raise Interrupted(signum)

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop)

    def _end(self, status: str) -> None:
        if self._parent is None:
            return
        uri, run_id = self._parent
        self._parent = None
        os.environ.pop(provenance.PARENT_RUN_ENV, None)
        os.environ.pop(provenance.SWEEP_NAME_ENV, None)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        experiment_id = client.get_run(run_id).info.experiment_id
        children = client.search_runs([experiment_id], max_results=50_000,
                                      filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
        if status != "FINISHED":
            children = self._close_orphans(client, children)
            if self._signal is not None or any(c.info.status == "KILLED" for c in children):
                status = "KILLED"
        states = [c.info.status for c in children]
        client.set_tag(run_id, "runs", f"{states.count('FINISHED')} finished / {len(states)}")  # skipped: none
        client.set_terminated(run_id, status)
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        print(summary_table(children), flush=True)

    def _close_orphans(self, client: MlflowClient, children: list[Run]) -> list[Run]:
        """The sweep's jobs again, those left RUNNING by a worker killed outright marked KILLED.

        A stopped joblib launcher kills its workers without letting them close their runs; their locks are
        freed when they have exited, which can take a moment after the launcher returns.
        """
        from m3oe_lightning.tracking import runs

        deadline = time.monotonic() + ORPHAN_WAIT_S
        while True:
            runs.mark_orphans_killed(client, children, self._checkpoint_root)
            children = [client.get_run(c.info.run_id) for c in children]
            if all(c.info.status != "RUNNING" for c in children) or time.monotonic() > deadline:
                return children
            time.sleep(0.2)


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
