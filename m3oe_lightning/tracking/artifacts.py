"""Turning a run's test metrics into what people read: a per-(domain, task) table and a bar plot."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: plots are files and MLflow artifacts
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def table_rows(metrics: Mapping[str, float], domains: Sequence[str], tasks: Sequence[str],
               stage: str = "test") -> list[tuple[str, str, float, float]]:
    """``(domain, task, auc, logloss)`` per group; NaN AUC where the group has a single class."""
    rows = []
    for domain in domains:
        for task in tasks:
            auc = metrics.get(f"{stage}/auc/{domain}/{task}", math.nan)
            logloss = metrics.get(f"{stage}/logloss/{domain}/{task}", math.nan)
            rows.append((domain, task, auc, logloss))
    return rows


def markdown_table(metrics: Mapping[str, float], domains: Sequence[str], tasks: Sequence[str],
                   stage: str = "test") -> str:
    """The per-(domain, task) table plus the overall means, as Markdown."""
    lines = ["| domain | task | AUC | logloss |", "|---|---|---|---|"]
    for domain, task, auc, logloss in table_rows(metrics, domains, tasks, stage):
        lines.append(f"| {domain} | {task} | {auc:.4f} | {logloss:.4f} |")
    lines.append(f"| **mean** | | **{metrics.get(f'{stage}/auc_mean', math.nan):.4f}** | "
                 f"**{metrics.get(f'{stage}/logloss_mean', math.nan):.4f}** |")
    return "\n".join(lines)


def auc_bar_plot(metrics: Mapping[str, float], domains: Sequence[str], tasks: Sequence[str],
                 title: str, stage: str = "test") -> Figure:
    """Grouped bars: x = domain, one bar per task, height = AUC."""
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(domains), 3.6))
    width = 0.8 / max(len(tasks), 1)
    for t, task in enumerate(tasks):
        values = [metrics.get(f"{stage}/auc/{d}/{task}", math.nan) for d in domains]
        positions = [i + (t - (len(tasks) - 1) / 2) * width for i in range(len(domains))]
        bars = ax.bar(positions, values, width=width, label=task)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    finite = [v for k, v in metrics.items() if k.startswith(f"{stage}/auc/") and math.isfinite(v)]
    low = min(finite, default=0.5)
    ax.set_ylim(max(0.0, low - 0.05), min(1.0, max(finite, default=1.0) + 0.03))
    ax.set_xticks(range(len(domains)), list(domains))
    ax.set_ylabel(f"{stage} AUC")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
