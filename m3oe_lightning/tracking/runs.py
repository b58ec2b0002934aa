"""The life of a tracked run: skip if finished → open (or reopen) → FINISHED or FAILED, once for every entry point.

Models and the LightningModule never import MLflow (docs/design.md, property 6): the entry points open
their run through :func:`tracked_run` and log what it produced. Beside each run's checkpoint folder a
small state file (``<checkpoint_dir>/<run_id>.run.json``) records its config hash and status, which is
how ``resume`` finds the newest unfinished run of the same settings.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lightning.pytorch.loggers import MLFlowLogger
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.errors import Interrupted, UserInputError
from m3oe_lightning.tracking import provenance
from m3oe_lightning.tracking.preflight import check_store, check_writable, is_remote, sqlite_path
from m3oe_lightning.training import checkpoint_io

try:
    import fcntl
except ImportError:  # Windows: run names may then collide under parallel sweeps (unique ids still)
    fcntl = None  # type: ignore[assignment]

STATE_SUFFIX = ".run.json"  # beside the run's checkpoint folder: <checkpoint_dir>/<run_id>.run.json


def ensure_experiment(tracking_uri: str, experiment_name: str, artifact_location: str | None) -> str:
    """The experiment's id, creating the store and the experiment when missing.

    Under the store's inter-process lock: processes started together on a fresh sqlite file would
    otherwise race on its schema migrations and can leave it unusable for every later run.
    """
    with store_lock(tracking_uri):
        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is not None:
            if experiment.tags.get(EXPERIMENT_KIND[0]) is None:
                client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
            return experiment.experiment_id
        # a tracking server keeps artifacts itself (its mlflow-artifacts: proxy); a local path is local only
        local = artifact_location and not is_remote(tracking_uri)
        location = Path(artifact_location).resolve().as_uri() if local else None
        return client.create_experiment(experiment_name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))


def unique_run_name(client: MlflowClient, experiment_id: str, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``… when runs of that name exist already.

    The store is searched by the name's prefix up to its first quote or LIKE wildcard (so a name such as
    ``o'brien_50%`` needs no escaping in MLflow's filter language); exact names are compared here.
    """
    prefix = re.split(r"['\"%_\\]", base, maxsplit=1)[0]
    runs = client.search_runs([experiment_id], filter_string=f"tags.`mlflow.runName` LIKE '{prefix}%'",
                              max_results=50_000)
    taken = {r.info.run_name for r in runs}
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


class RunLogger(MLFlowLogger):
    """Lightning's MLflow logger minus its say over the run's status.

    Lightning ends the run itself when a ``fit`` ends: FINISHED before the test split is scored, FAILED when
    a signal interrupts the fit. The run's owner (:func:`tracked_run`) marks it once, when the whole job
    ends; a process killed after Lightning's mark would otherwise leave a finished-looking or FAILED run
    where it was KILLED.
    """

    def finalize(self, status: str = "success") -> None:
        if self._initialized and self._checkpoint_callback:
            self._scan_and_log_checkpoints(self._checkpoint_callback)


@dataclass
class RunHandle:
    """The MLflow run of one training run and its checkpoint folder."""

    logger: MLFlowLogger
    run_id: str
    run_name: str
    checkpoint_dir: Path
    resumed_from: Path | None
    lock: IO[str] | None = None  # held while the run is open: a second process cannot continue it too

    @property
    def client(self) -> MlflowClient:
        return self.logger.experiment

    def release(self) -> None:
        """Let another process continue this run (the lock goes with the file handle)."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None

    def finish(self, status: str) -> None:
        """End the MLflow run with ``status`` and record it beside the checkpoints.

        Best effort when the run already failed: a full disk must not hide the first error. SIGTERM and
        SIGINT wait until both marks are written (a sweep's launcher signals its jobs twice when stopped).
        """
        try:
            with signals_deferred():
                self.client.set_terminated(self.run_id, status)
                self.mark(status)
        except (OSError, MlflowException, UserInputError) as error:
            if status == "FINISHED":
                raise
            print(f"warning: could not mark run {self.run_id} {status}: {error}")

    def mark(self, status: str) -> None:
        """Record the run's state in its checkpoint folder (resume looks for unfinished runs)."""
        mark_state(self.checkpoint_dir, status)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGTERM and SIGINT held back while the body runs, delivered when it ends."""
    held = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def state_path(checkpoint_dir: Path) -> Path:
    return checkpoint_dir.with_name(checkpoint_dir.name + STATE_SUFFIX)


def mark_state(checkpoint_dir: Path, status: str) -> None:
    """``status`` into the run's state file, when it has one."""
    state_file = state_path(checkpoint_dir)
    if state_file.exists():
        write_json_atomic(state_file, {**json.loads(state_file.read_text()), "status": status})


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """The whole file or the previous one (a full disk leaves no 0-byte ``.tmp`` behind)."""
    text = json.dumps(payload, indent=2, sort_keys=True).encode()
    checkpoint_io.write_whole(path, lambda handle: handle.write(text))


@contextlib.contextmanager
def store_errors(tracking_uri: str) -> Iterator[None]:
    """MLflow failures of the store itself (read-only, locked, unreachable) as one line naming it."""
    try:
        yield
    except MlflowException as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserInputError(f"the MLflow store logger.tracking_uri={tracking_uri} failed: {first[:300]}") from None


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
             tags: Mapping[str, str], checkpoint_root: Path, cfg_hash: str, resume_artifact: str | None = None,
             run_id: str | None = None) -> RunHandle:
    """Create the MLflow run and its checkpoint folder, or reopen one.

    ``resume_artifact``: reopen the newest unfinished run of ``cfg_hash`` whose checkpoint folder holds
    this file (``last.ckpt``, ``server_state.pt``); ``resumed_from`` then points at it. ``run_id``: join
    that run (DDP worker ranks join the run rank 0 created).
    """
    check_writable(checkpoint_root, "paths.checkpoint_dir")
    with store_errors(tracking_uri):
        experiment_id = ensure_experiment(tracking_uri, experiment_name, artifact_location)
    client = MlflowClient(tracking_uri)
    resumed_from = None
    joining = run_id is not None  # a DDP worker joining its rank 0's run: that process holds the lock
    if run_id is None and resume_artifact is not None:
        found = find_resumable(checkpoint_root, cfg_hash, resume_artifact)
        if found is not None:
            run_id, resumed_from = found[0], checkpoint_io.usable(found[1])  # damaged: the kept previous one
    lock = None
    if run_id is None:
        with store_errors(tracking_uri):  # the runs of processes killed outright, before this one starts
            mark_orphans_killed(client, running_runs(client, experiment_id), checkpoint_root)
        with store_lock(tracking_uri), store_errors(tracking_uri):
            run_name = unique_run_name(client, experiment_id, base_name)
            run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        run_id = run.info.run_id
        lock = run_lock(checkpoint_root, run_id)
    else:
        if not joining:  # refused when another process holds it: that run is not ours to mark
            lock = run_lock(checkpoint_root, run_id)
        run_name = client.get_run(run_id).info.run_name
    checkpoint_dir = checkpoint_root / run_id
    try:  # the run is ours from here on: a full disk or a signal must not leave it RUNNING
        if resumed_from is not None or joining:
            client.update_run(run_id, status="RUNNING")
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        state_file = state_path(checkpoint_dir)
        if not state_file.exists():
            write_json_atomic(state_file, {"run_id": run_id, "run_name": run_name, "config_hash": cfg_hash,
                                           "status": "RUNNING"})
        logger = RunLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, run_id=run_id,
                           artifact_location=artifact_location)
    except BaseException as error:
        if not joining:  # a DDP worker leaves its rank 0's run to rank 0
            status = "KILLED" if isinstance(error, Interrupted) else "FAILED"
            with contextlib.suppress(Exception):
                client.set_terminated(run_id, status)
                mark_state(checkpoint_dir, status)
        if lock is not None:
            lock.close()
        raise
    return RunHandle(logger=logger, run_id=run_id, run_name=run_name, checkpoint_dir=checkpoint_dir,
                     resumed_from=resumed_from, lock=lock)


def run_lock(checkpoint_root: Path, run_id: str) -> IO[str] | None:
    """Hold ``<checkpoint_root>/<run_id>.lock`` for the run's lifetime, or refuse in one line.

    Two ``resume=true`` processes on the same run would both continue it (metrics logged twice, a stale
    ``last.ckpt``); the second one stops here. The OS drops the lock when the holder dies, even by
    ``kill -9``, so a crashed run can always be resumed.
    """
    checkpoint_root.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        return None
    path = lock_path(checkpoint_root, run_id)
    handle = try_lock(path)
    if handle is None:
        raise UserInputError(f"run {run_id} is in use by another process (lock {path}); wait for it to end, "
                             f"or start a new run without resume=true")
    return handle


def lock_path(checkpoint_root: Path, run_id: str) -> Path:
    return checkpoint_root / f"{run_id}.lock"


def try_lock(path: Path) -> IO[str] | None:
    """``path`` opened and exclusively locked, or None when another process holds it."""
    handle = open(path, "a")  # noqa: SIM115 - kept open as the lock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def mark_orphans_killed(client: MlflowClient, runs: Iterable[Run], checkpoint_root: Path) -> list[str]:
    """Mark KILLED (in MLflow and the state file) each RUNNING run of ``runs`` whose process is gone.

    Why: a process that is killed outright (``kill -9``; joblib tearing its sweep workers down on Ctrl-C)
    cannot close its run, which would stay RUNNING for ever. Its process held ``<run_id>.lock`` under the
    checkpoint root for the run's whole life, and the OS frees that lock when the process dies however it
    dies: a RUNNING run whose lock can be taken has no process left. The status is read again under the
    lock, so a run that its owner closed in the meantime is left as it is. Runs without a lock file here
    (opened on another machine, or not yet past :func:`open_run`'s first step) are never touched.
    Returns the ids of the runs it marked.
    """
    if fcntl is None:
        return []
    marked = []
    for run in runs:
        path = lock_path(checkpoint_root, run.info.run_id)
        if run.info.status != "RUNNING" or not path.exists():
            continue
        handle = try_lock(path)
        if handle is None:
            continue  # its process is alive
        with handle:
            if client.get_run(run.info.run_id).info.status != "RUNNING":
                continue
            client.set_terminated(run.info.run_id, "KILLED")
            mark_state(checkpoint_root / run.info.run_id, "KILLED")
            marked.append(run.info.run_id)
    return marked


def running_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    return client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=50_000)


# MLflow 3's UI opens an experiment without this tag in its GenAI view, which lists no runs or metric columns
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def log_settings(run: RunHandle, settings: Mapping[str, Any]) -> None:
    """Every setting as an MLflow param, each once; names MLflow refuses (a data column such as
    ``prix (€)``) are made safe per dotted part, and the mapping is kept as ``config/param_names.json``."""
    safe = {".".join(keys.safe(p) for p in name.split(".")): name for name in settings}
    run.logger.log_hyperparams({name: settings[original] for name, original in safe.items()})
    renamed = {name: original for name, original in safe.items() if name != original}
    if renamed:
        run.client.log_dict(run.run_id, renamed, "config/param_names.json")


def finished_run(cfg: DictConfig, cfg_hash: str, label: str) -> Run | None:
    """The store checked (:func:`check_store`); with ``skip_finished=true`` the FINISHED run of these
    settings and seed, announced; else None."""
    check_store(cfg.logger.tracking_uri)
    if not cfg.get("skip_finished"):
        return None
    run = find_finished(cfg.logger.tracking_uri, cfg.logger.experiment_name, cfg_hash, cfg.seed)
    if run is not None:
        print(f"skip {label} seed {cfg.seed}: finished run {run.info.run_id}")
    return run


@contextlib.contextmanager
def tracked_run(cfg: DictConfig, *, cfg_hash: str, base_name: str, tags: Mapping[str, str],
                resume_artifact: str | None = None, run_id: str | None = None,
                primary: bool = True) -> Iterator[RunHandle]:
    """Open the run of ``cfg`` (its store, experiment and checkpoint root), log its settings once, and
    close it FINISHED when the body returns or FAILED when it raises (the error propagates).

    ``primary=False`` (a DDP worker rank joining ``run_id``): it logs nothing and closes nothing.
    """
    run = open_run(tracking_uri=cfg.logger.tracking_uri, experiment_name=cfg.logger.experiment_name,
                   artifact_location=cfg.logger.get("artifact_location"),
                   base_name=cfg.logger.run_name or base_name, tags=tags,
                   checkpoint_root=Path(cfg.paths.checkpoint_dir), cfg_hash=cfg_hash,
                   resume_artifact=resume_artifact, run_id=run_id)
    try:  # from here on a signal or an error ends the run marked (logging the settings takes a while)
        if primary and run.resumed_from is None and run_id is None:
            log_settings(run, provenance.flatten(OmegaConf.to_container(cfg, resolve=True)))
        if run.resumed_from is not None:
            print(f"resuming run {run.run_name} ({run.run_id}) from {run.resumed_from}")
        yield run
    except Interrupted:
        if primary:
            run.finish("KILLED")
        raise
    except BaseException:
        if primary:
            run.finish("FAILED")
        raise
    else:
        if primary:
            run.finish("FINISHED")
            print(where_to_look(run, cfg.logger.tracking_uri))
    finally:
        run.release()


def log_dataset(run: RunHandle, name: str, source: str, settings: Mapping[str, Any]) -> None:
    """The run's data as an MLflow dataset input (name, digest of its settings, source), so the UI's
    Dataset column says what a run was trained on."""
    origin = CodeDatasetSource({"generator": source}) if source.startswith("generated:") else \
        resolve_dataset_source(source)
    dataset = MetaDataset(source=origin, name=name,
                          digest=provenance.config_hash(settings)[:8])
    context = InputTag(key="mlflow.data.context", value="training")
    # under the store's lock: parallel sweep jobs logging the same dataset would both insert its row
    # (sqlite: UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest)
    with store_lock(run.client.tracking_uri):
        run.client.log_inputs(run.run_id,
                              datasets=[DatasetInput(dataset=dataset._to_mlflow_entity(), tags=[context])])


def where_to_look(run: RunHandle, tracking_uri: str) -> str:
    """The closing line of a run: its name and id, the store, and how to open it."""
    how = "make ui (http://127.0.0.1:5000)" if sqlite_path(tracking_uri) == Path("logs/mlflow.db") else \
        f"mlflow ui --backend-store-uri {tracking_uri}" if sqlite_path(tracking_uri) else tracking_uri
    return f"MLflow run {run.run_name} ({run.run_id}) in {tracking_uri}; open it with {how}"


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
