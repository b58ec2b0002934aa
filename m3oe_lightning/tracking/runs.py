"""MLflow side of a run: naming, tags, parameters, artifacts, resume bookkeeping.

Models and the LightningModule never import MLflow (DESIGN.md, property 6): the entry point builds
the logger here and logs what the run produced.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

try:
    import fcntl
except ImportError:  # Windows: run names may then collide under parallel sweeps (unique ids still)
    fcntl = None  # type: ignore[assignment]

STATE_SUFFIX = ".run.json"  # beside the run's checkpoint folder: <checkpoint_dir>/<run_id>.run.json


def ensure_experiment(tracking_uri: str, experiment_name: str, artifact_location: str | None) -> str:
    """Create the sqlite store and the experiment once (before any parallel job touches them)."""
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    location = Path(artifact_location).resolve().as_uri() if artifact_location else None
    return client.create_experiment(experiment_name, artifact_location=location)


def unique_run_name(client: MlflowClient, experiment_id: str, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``… when runs of that name exist already."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.runName` LIKE '{base}%'",
                              max_results=10_000)
    taken = {r.info.run_name for r in runs}
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


@dataclass
class RunHandle:
    """The MLflow run of one training run and its checkpoint folder."""

    logger: MLFlowLogger
    run_id: str
    run_name: str
    checkpoint_dir: Path
    resumed_from: Path | None

    @property
    def client(self) -> MlflowClient:
        return self.logger.experiment

    def mark(self, status: str) -> None:
        """Record the run's state in its checkpoint folder (resume looks for unfinished runs)."""
        state_file = state_path(self.checkpoint_dir)
        state = json.loads(state_file.read_text())
        state["status"] = status
        write_json_atomic(state_file, state)


def state_path(checkpoint_dir: Path) -> Path:
    return checkpoint_dir.with_name(checkpoint_dir.name + STATE_SUFFIX)


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    tmp.replace(path)


def find_resumable(checkpoint_root: Path, cfg_hash: str, artifact: str = "last.ckpt") -> tuple[str, Path] | None:
    """The newest unfinished run with this config hash that has ``artifact`` in its checkpoint folder
    (``last.ckpt`` for training, the server state for federated runs): (run id, artifact path)."""
    candidates = []
    for state_file in checkpoint_root.glob(f"*{STATE_SUFFIX}"):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        last = checkpoint_root / str(state.get("run_id")) / artifact
        if state.get("config_hash") == cfg_hash and state.get("status") != "FINISHED" and last.exists():
            candidates.append((last.stat().st_mtime, state["run_id"], last))
    if not candidates:
        return None
    _, run_id, last = max(candidates)
    return run_id, last


def open_run(*, tracking_uri: str, experiment_name: str, artifact_location: str | None, base_name: str,
             tags: Mapping[str, str], checkpoint_root: Path, cfg_hash: str, resume: bool,
             run_id: str | None = None) -> RunHandle:
    """Create (or, with ``resume``, reopen) the MLflow run and its checkpoint folder.

    ``run_id`` is given to DDP worker ranks, which join the run rank 0 created.
    """
    experiment_id = ensure_experiment(tracking_uri, experiment_name, artifact_location)
    client = MlflowClient(tracking_uri)
    resumed_from = None
    if run_id is None and resume:
        found = find_resumable(checkpoint_root, cfg_hash)
        if found is not None:
            run_id, resumed_from = found
    if run_id is None:
        with store_lock(tracking_uri):
            run_name = unique_run_name(client, experiment_id, base_name)
            run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        run_id = run.info.run_id
    else:
        run_name = client.get_run(run_id).info.run_name
        client.update_run(run_id, status="RUNNING")
    checkpoint_dir = checkpoint_root / run_id
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    state_file = state_path(checkpoint_dir)
    if not state_file.exists():
        write_json_atomic(state_file, {"run_id": run_id, "run_name": run_name, "config_hash": cfg_hash,
                                       "status": "RUNNING"})
    logger = MLFlowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, run_id=run_id,
                          artifact_location=artifact_location)
    return RunHandle(logger=logger, run_id=run_id, run_name=run_name, checkpoint_dir=checkpoint_dir,
                     resumed_from=resumed_from)


def sqlite_path(tracking_uri: str) -> Path | None:
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None


def find_finished(tracking_uri: str, experiment_name: str, cfg_hash: str, seed: int | str) -> Run | None:
    """The newest FINISHED run with this config hash and seed, or None (what ``skip_finished`` skips on).

    Never creates a store or an experiment: a missing sqlite file or experiment means nothing finished.
    """
    db = sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        return None
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
        filter_string=f"tags.config_hash = '{cfg_hash}' and tags.seed = '{seed}' and attributes.status = 'FINISHED'",
    )
    return runs[0] if runs else None


@contextlib.contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """Serialise "pick a free run name, create the run" between processes sharing one sqlite store.

    Parallel sweep jobs with the same base name would otherwise both see the name free. A no-op for
    non-sqlite stores and where ``fcntl`` is missing (Windows).
    """
    db = sqlite_path(tracking_uri)
    if db is None or fcntl is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
