"""What every report shares: finding finished runs in MLflow, statistics over seeds, Markdown and files.

The reports (``presets``, ``paper``, ``federated``) read finished runs from an MLflow store, never log
files; each keeps the newest run of a key it chooses (a rerun replaces the older one). Their cells are
formatted here so that every table prints a mean, a std and a p-value the same way.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from scipy import stats as scipy_stats

# MovieLens-1M as the paper splits it: domains by age, tasks click and like (the tables' column order)
MOVIELENS_DOMAINS = ("age_1-18", "age_25", "age_35plus")
MOVIELENS_TASKS = ("click", "like")


DEFAULT_STORE = "sqlite:///logs/mlflow.db"


# ------------------------------------------------------------------------------------ command line
def add_store_arguments(parser: argparse.ArgumentParser, *, experiment: str, study: str, study_help: str,
                        out: str, command: str) -> None:
    """The options every report has: which store, experiment and study to read, where to write, and the
    command the report names as its generator."""
    parser.add_argument("--tracking-uri", default=DEFAULT_STORE)
    parser.add_argument("--experiment", default=experiment)
    parser.add_argument("--study", default=study, help=study_help)
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--command", default=command, help="the command to print as the generator")


def store_source(args: argparse.Namespace) -> str:
    """Where a report's runs came from, as its header says it."""
    return (f"the MLflow store `{args.tracking_uri}` (experiment `{args.experiment}`, "
            f"study `{args.study or 'any'}`)")


# ------------------------------------------------------------------------------------------ runs
def newest_finished_runs(tracking_uri: str, experiment: str, key: Callable[[Run], Hashable | None], *,
                         tags: Mapping[str, str | None] = {}) -> dict[Hashable, Run]:
    """The newest FINISHED run of each ``key(run)`` (runs whose key is ``None`` are skipped), among the
    runs of ``experiment`` whose tags equal ``tags`` (a ``None`` or empty value: any). A store or
    experiment that cannot be searched has no runs."""
    mlflow.set_tracking_uri(tracking_uri)
    where = [f"tags.{name} = '{value}'" for name, value in tags.items() if value]
    where.append("attributes.status = 'FINISHED'")
    try:
        found = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                                   filter_string=" and ".join(where), order_by=["attributes.start_time ASC"])
    except mlflow.exceptions.MlflowException:
        return {}
    latest: dict[Hashable, Run] = {}
    for run in found:  # oldest first: a later run of the same key replaces the earlier one
        run_key = key(run)
        if run_key is not None:
            latest[run_key] = run
    return latest


def run_seconds(run: Run) -> float:
    """Wall seconds from the run's start to its end as MLflow recorded them (NaN while it has no end)."""
    info = run.info
    return (info.end_time - info.start_time) / 1000 if info.end_time else math.nan


def metric_history(client: MlflowClient, run_id: str, name: str) -> list[float]:
    """A metric's logged values in step order (one per epoch or round)."""
    return [m.value for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)]


def metric_by_step(client: MlflowClient, run_id: str, name: str) -> list[float]:
    """A metric's values indexed by step − 1 (steps from 1, e.g. federated rounds), NaN at each step it was not
    logged (a run with ``federated.evaluate_every`` > 1 scores only some rounds)."""
    logged = {m.step: m.value for m in client.get_metric_history(run_id, name)}
    return [logged.get(step, math.nan) for step in range(1, max(logged, default=0) + 1)]


def short_commit(run: Run) -> str:
    """The first ten characters of the run's ``git_commit`` tag ('' without one)."""
    return run.data.tags.get("git_commit", "")[:10]


# ------------------------------------------------------------------------------------ statistics
def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std; the std of fewer than two values is NaN (a table shows the mean alone)."""
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Welch's t-test p-value (NaN with fewer than two values on a side or no variance at all)."""
    if len(a) < 2 or len(b) < 2 or (statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0):
        return math.nan
    return float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)


def fmt(mean: float, std: float | None = None, scale: float = 100.0) -> str:
    """``mean ± std`` ×``scale`` with two decimals (``–`` for a missing mean; the std only when finite)."""
    if not math.isfinite(mean):
        return "–"
    return f"{scale * mean:.2f}" + (f" ± {scale * std:.2f}" if std is not None and math.isfinite(std) else "")


def fmt_p(p: float) -> str:
    """A p-value with two significant digits, starred below 0.05 (``–`` when it could not be computed)."""
    return "–" if not math.isfinite(p) else f"{p:.2g}" + (" \\*" if p < 0.05 else "")


def describe(values: Sequence[str]) -> str:
    """The distinct values, shortest first, comma-separated (``?`` when there are none)."""
    unique = sorted(set(values), key=lambda v: (len(v), v))
    return ", ".join(unique) if unique else "?"


# -------------------------------------------------------------------------------------- Markdown
def table_row(cells: Iterable[str]) -> str:
    """One Markdown table line: ``| a | b |``."""
    return "| " + " | ".join(cells) + " |"


def table_head(header: Sequence[str]) -> list[str]:
    """A Markdown table's header line and its ``|---|`` separator."""
    return [table_row(header), "|" + "---|" * len(header)]


# ----------------------------------------------------------------------------------------- files
def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a crash never leaves a half-written report."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_csv_atomic(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A CSV file (header, then rows) written atomically like :func:`write_atomic`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())
