"""What a finished run leaves behind for people: a per-(domain, task) table, a bar plot, its MLflow artifacts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: plots are files and MLflow artifacts
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from m3oe_lightning import metric_keys as keys  # noqa: E402
from m3oe_lightning.data.schema import FeatureSchema  # noqa: E402
from m3oe_lightning.tracking.runs import RunHandle  # noqa: E402


def table_rows(metrics: Mapping[str, float], domains: Sequence[str], tasks: Sequence[str],
               stage: str = "test") -> list[tuple[str, str, float, float]]:
    """``(domain, task, auc, logloss)`` per group; NaN AUC where the group has a single class."""
    rows = []
    for domain in domains:
        for task in tasks:
            auc = metrics.get(keys.key(stage, keys.group(keys.AUC, domain, task)), math.nan)
            logloss = metrics.get(keys.key(stage, keys.group(keys.LOGLOSS, domain, task)), math.nan)
            rows.append((domain, task, auc, logloss))
    return rows


POOLED_LABEL = "all (pooled)"  # the domain cell of a task's row over every domain's rows


def pooled_rows(metrics: Mapping[str, float], tasks: Sequence[str],
                stage: str = "test") -> list[tuple[str, float, float]]:
    """``(task, auc, logloss)`` over the rows of every domain pooled; NaN where the run logged none."""
    return [(task, metrics.get(keys.key(stage, keys.pooled(keys.AUC_POOLED, task)), math.nan),
             metrics.get(keys.key(stage, keys.pooled(keys.LOGLOSS_POOLED, task)), math.nan)) for task in tasks]


def summary_rows(metrics: Mapping[str, float], tasks: Sequence[str],
                 stage: str = "test") -> list[tuple[str, str, float, float]]:
    """The lines under the groups: the mean over groups (the selection metric's kind), then each task pooled
    over domains and the pooled values' mean over tasks (rows of a run without pooled metrics are left out)."""
    rows = [("mean", "", metrics.get(keys.key(stage, keys.AUC_MEAN), math.nan),
             metrics.get(keys.key(stage, keys.LOGLOSS_MEAN), math.nan))]
    pooled = [(POOLED_LABEL, task, auc, logloss) for task, auc, logloss in pooled_rows(metrics, tasks, stage)]
    pooled.append(("pooled mean", "", metrics.get(keys.key(stage, keys.AUC_POOLED_MEAN), math.nan),
                   metrics.get(keys.key(stage, keys.LOGLOSS_POOLED_MEAN), math.nan)))
    if any(math.isfinite(auc) or math.isfinite(logloss) for _, _, auc, logloss in pooled):
        rows += pooled
    return rows


def markdown_table(metrics: Mapping[str, float], domains: Sequence[str], tasks: Sequence[str],
                   stage: str = "test") -> str:
    """The per-(domain, task) table, the mean over groups and the per-task pooled values, as Markdown."""
    lines = ["| domain | task | AUC | logloss |", "|---|---|---|---|"]
    for domain, task, auc, logloss in table_rows(metrics, domains, tasks, stage):
        lines.append(f"| {domain} | {task} | {auc:.4f} | {logloss:.4f} |")
    for label, task, auc, logloss in summary_rows(metrics, tasks, stage):
        lines.append(f"| **{label}** | {task} | **{auc:.4f}** | **{logloss:.4f}** |")
    return "\n".join(lines)


def auc_bar_plot(metrics: Mapping[str, float], domains: Sequence[str], tasks: Sequence[str],
                 title: str, stage: str = "test") -> Figure:
    """Grouped bars: x = domain, one bar per task, height = AUC."""
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(domains), 3.6))
    width = 0.8 / max(len(tasks), 1)
    for t, task in enumerate(tasks):
        values = [metrics.get(keys.key(stage, keys.group(keys.AUC, d, task)), math.nan) for d in domains]
        positions = [i + (t - (len(tasks) - 1) / 2) * width for i in range(len(domains))]
        bars = ax.bar(positions, values, width=width, label=task)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    finite = [v for k, v in metrics.items() if k.startswith(keys.key(stage, keys.AUC, "")) and math.isfinite(v)]
    low = min(finite, default=0.5)
    ax.set_ylim(max(0.0, low - 0.05), min(1.0, max(finite, default=1.0) + 0.03))
    ax.set_xticks(range(len(domains)), list(domains))
    ax.set_ylabel(f"{stage} AUC")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def print_results(metrics: dict[str, float], schema: FeatureSchema, title: str) -> None:
    """The test table on the console at the end of a run."""
    table = Table(title=title)
    for column in ("domain", "task", "AUC", "logloss"):
        table.add_column(column, justify="right" if column in ("AUC", "logloss") else "left")
    for domain, task, auc, logloss in table_rows(metrics, schema.domains, schema.tasks):
        table.add_row(domain, task, f"{auc:.4f}", f"{logloss:.4f}")
    for label, task, auc, logloss in summary_rows(metrics, schema.tasks):
        table.add_row(label, task, f"{auc:.4f}", f"{logloss:.4f}", style="bold")
    Console().print(table)


def log_run_outputs(run: RunHandle, cfg: DictConfig, metrics: dict[str, float],
                    schema: FeatureSchema, n_params: int) -> None:
    """What a finished training run leaves in MLflow: resolved config, results table, AUC bar plot, size,
    and the selection metrics (``val/auc_mean_best``) among ``metrics``."""
    client = run.client
    client.log_dict(run.run_id, OmegaConf.to_container(cfg, resolve=True), "config/config.yaml")
    client.log_text(run.run_id, markdown_table(metrics, schema.domains, schema.tasks),
                    "results/test_table.md")
    figure = auc_bar_plot(metrics, schema.domains, schema.tasks, title=run.run_name)
    client.log_figure(run.run_id, figure, "plots/test_auc.png")
    client.log_metric(run.run_id, "model/parameters", n_params)
    for name, value in metrics.items():
        if name.endswith(keys.BEST):
            client.log_metric(run.run_id, name, value)
