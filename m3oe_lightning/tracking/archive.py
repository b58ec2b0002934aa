"""A study's finished runs as files in the repository, and back into a store: a study outlives its machine.

The MLflow store of a long study (``logs/mlflow.db``) stays on the machine that ran it, while its generated
report is committed. ``export`` writes each FINISHED run of a study (its tags, params, start and end times and
the whole history of every metric; no artifacts) to ``<dir>/<run id>.json.gz``, one file a run, written once;
``import`` recreates those runs in another store. A study resumed on a fresh machine imports its archive
first, so ``skip_finished`` (which matches the ``config_hash`` and ``seed`` tags) skips what already ran and
its report is made from every run, old and new. An imported run keeps its original id in the
``archive.run_id`` tag; importing twice adds nothing.

    python -m m3oe_lightning.tracking.archive export --study S --dir D [--tracking-uri U] [--experiment E]
    python -m m3oe_lightning.tracking.archive import --dir D [--tracking-uri U] [--experiment E]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from m3oe_lightning.errors import UserInputError
from m3oe_lightning.tracking.runs import ensure_experiment
from m3oe_lightning.training import checkpoint_io

ORIGIN_TAG = "archive.run_id"  # the id a run had in the store it was exported from
RUN_NAME_TAG = "mlflow.runName"
SUFFIX = ".json.gz"
FORMAT = 1
BATCH = 500  # under MLflow's per-call limits (1,000 metrics, 100 params)
PARAM_BATCH = 100
DEFAULT_ARTIFACTS = "logs/mlflow/artifacts"  # logger.artifact_location at the default paths.log_dir


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def origin_id(run: Run) -> str:
    """The id a run is archived under: its own, or the one it had before it was imported."""
    return run.data.tags.get(ORIGIN_TAG, run.info.run_id)


def run_record(client: MlflowClient, run: Run, experiment_name: str) -> dict[str, Any]:
    """Everything a report reads from ``run``: its times, tags, params and each metric's full history."""
    histories = {key: [[m.step, m.timestamp, m.value] for m in client.get_metric_history(run.info.run_id, key)]
                 for key in sorted(run.data.metrics)}
    return {"format": FORMAT, "run_id": origin_id(run), "experiment": experiment_name,
            "run_name": run.info.run_name, "status": run.info.status, "start_time": run.info.start_time,
            "end_time": run.info.end_time, "tags": dict(sorted(run.data.tags.items())),
            "params": dict(sorted(run.data.params.items())), "metrics": histories}


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Gzipped JSON with no timestamp in its header (the same run gives the same bytes), written whole."""
    data = gzip.compress(json.dumps(record, sort_keys=True, separators=(",", ":")).encode(), mtime=0)
    checkpoint_io.write_whole(path, lambda handle: handle.write(data))


def read_record(path: Path) -> dict[str, Any]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, EOFError, json.JSONDecodeError) as error:
        raise UserInputError(f"{path}: not a run archive ({error}); delete it or export it again") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise UserInputError(f"{path}: not a run archive of format {FORMAT}; export it again")
    return record


def export_study(tracking_uri: str, experiment_name: str, study: str, folder: Path) -> list[Path]:
    """Write each FINISHED run of ``study`` not yet in ``folder``; the files written."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], max_results=50_000,
                              filter_string=f"tags.study = '{study}' and attributes.status = 'FINISHED'")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for run in runs:
        path = folder / f"{origin_id(run)}{SUFFIX}"
        if not path.exists():
            write_record(path, run_record(client, run, experiment_name))
            written.append(path)
    return written


def _known_ids(client: MlflowClient, experiment_id: str) -> set[str]:
    """The ids, own and original, of the experiment's FINISHED runs (a run cut off mid-import is not one)."""
    runs = client.search_runs([experiment_id], max_results=50_000, filter_string="attributes.status = 'FINISHED'")
    return {r.info.run_id for r in runs} | {origin_id(r) for r in runs}


def import_record(client: MlflowClient, experiment_id: str, record: dict[str, Any]) -> str:
    """Recreate one archived run (FINISHED, its times, tags, params and histories); its new id."""
    tags = {k: v for k, v in record["tags"].items() if k not in (ORIGIN_TAG, RUN_NAME_TAG)}
    run = client.create_run(experiment_id, start_time=record["start_time"], tags=tags, run_name=record["run_name"])
    run_id = run.info.run_id
    try:
        for chunk in _chunks([Param(k, str(v)) for k, v in record["params"].items()], PARAM_BATCH):
            client.log_batch(run_id, params=chunk)
        points = [Metric(key, value, timestamp, step) for key, history in record["metrics"].items()
                  for step, timestamp, value in history]
        for chunk in _chunks(points, BATCH):
            client.log_batch(run_id, metrics=chunk)
        client.log_batch(run_id, tags=[RunTag(ORIGIN_TAG, record["run_id"])])  # last: whole once tagged
        client.set_terminated(run_id, record.get("status", "FINISHED"), end_time=record["end_time"])
    except BaseException:
        client.delete_run(run_id)  # half a run must not look like an imported one
        raise
    return run_id


def import_folder(tracking_uri: str, folder: Path, experiment_name: str | None = None,
                  artifact_location: str | None = DEFAULT_ARTIFACTS) -> list[str]:
    """Import each archived run of ``folder`` the store does not have yet (by original id); the new ids.

    An experiment the store lacks is created as a run would create it (``artifact_location`` as
    ``logger.artifact_location``), so runs that later join it keep their artifacts where runs do.
    """
    if not folder.is_dir():
        raise UserInputError(f"{folder}: no such folder of run archives; export a study into it first")
    client = MlflowClient(tracking_uri)
    known: dict[str, set[str]] = {}
    imported = []
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        record = read_record(path)
        experiment_id = ensure_experiment(tracking_uri, experiment_name or record["experiment"], artifact_location)
        if experiment_id not in known:
            known[experiment_id] = _known_ids(client, experiment_id)
        if record["run_id"] in known[experiment_id]:
            continue
        imported.append(import_record(client, experiment_id, record))
        known[experiment_id].add(record["run_id"])
    return imported


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m m3oe_lightning.tracking.archive",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("export", "import"))
    parser.add_argument("--dir", type=Path, required=True, help="the folder of <run id>.json.gz files")
    parser.add_argument("--tracking-uri", default="sqlite:///logs/mlflow.db")
    parser.add_argument("--experiment", default=None,
                        help="export: the experiment to read (default m3oe-federated); import: the experiment "
                             "to recreate runs in (default: the one each was exported from)")
    parser.add_argument("--study", default=None, help="export: the value of the runs' `study` tag")
    parser.add_argument("--artifact-location", default=DEFAULT_ARTIFACTS,
                        help="import: where an experiment it creates keeps its runs' artifacts")
    args = parser.parse_args(argv)
    try:
        if args.action == "export":
            if not args.study:
                parser.error("export needs --study")
            written = export_study(args.tracking_uri, args.experiment or "m3oe-federated", args.study, args.dir)
            print(f"archived {len(written)} new run(s) of study {args.study} in {args.dir}")
        else:
            imported = import_folder(args.tracking_uri, args.dir, args.experiment, args.artifact_location)
            print(f"imported {len(imported)} run(s) from {args.dir} into {args.tracking_uri}")
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except MlflowException as error:
        print(f"error: the MLflow store {args.tracking_uri}: {error.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
