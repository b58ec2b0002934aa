"""MLflow → the M3oE paper's Table 2 (MovieLens rows) and Table 3 (ablation), ours beside the paper's.

Reads finished runs (never log files) that carry a ``row`` tag (every ``conf/experiment/paper/*`` file sets
one) and the ``study`` tag of the sweep, and writes into ``--out``:

- ``README.md`` (``--name``): per-(domain, task) test AUC, overall AUC, pooled AUC (each task over all
  domains' rows, averaged over tasks) and logloss as mean ± std over seeds for every row, with the best
  validation AUC beside them (the number a row is selected on); RelaImpr of M3oE over the best baseline
  per column; two-sided Welch t-tests M3oE vs each baseline; the paper's numbers for
  comparison; the ablation table; run time per row; the data, split, seeds, epochs, commit and command;
- ``results.csv``: one line per run used (the newest finished run of each (row, split, seed));
- ``paper_auc.png`` (per-(domain, task) AUC by row) and ``paper_fusion.png`` (fusion weights α, β per epoch,
  from the ``arch/*`` metric histories).

``python -m m3oe_lightning.reports.paper --study paper --out experiments/movielens`` (``make report``)
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from mlflow.entities import Run  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from m3oe_lightning import metric_keys as keys  # noqa: E402
from m3oe_lightning.reports import common  # noqa: E402
from m3oe_lightning.reports.common import (  # noqa: E402
    MOVIELENS_DOMAINS,
    MOVIELENS_TASKS,
    describe,
    fmt,
    fmt_p,
    mean_std,
    metric_history,
    table_head,
    table_row,
    welch_p,
)
from m3oe_lightning.tracking.provenance import git_commit  # noqa: E402

OURS = "M3oE"
# ---------------------------------------------------------------------------------------------------------
# THE PAPER'S NUMBERS, not ours: M3oE paper (SIGIR'24), Table 2 (MovieLens) and Table 3 (MovieLens column),
# AUC and logloss ×10⁻², typed from docs/m3oe.md §4. Columns d1t1 … d3t2: domains age {1,18},
# {25}, {35+} (our age_1-18, age_25, age_35plus) × tasks t1 = click, t2 = like. Keys are the rows' `row` tags.
PAPER_COLUMNS = ("d1t1", "d1t2", "d2t1", "d2t2", "d3t1", "d3t2")
PAPER_TABLE2: dict[str, tuple[str, tuple[float, ...], float, float]] = {
    # row: (group, six per-(d,t) AUCs, overall AUC, overall logloss)
    "MLP": ("a", (75.02, 76.40, 76.27, 78.66, 73.21, 74.15), 75.62, 51.51),
    "ShBot-MTL": ("b", (75.36, 76.25, 75.90, 78.40, 72.51, 73.30), 75.28, 56.39),
    "PLE-MTL": ("b", (75.42, 76.23, 75.87, 78.32, 72.73, 72.49), 75.18, 56.49),
    "MMOE-MTL": ("b", (75.35, 76.96, 76.58, 78.73, 73.19, 74.63), 75.90, 51.27),
    "AdaTT": ("b", (72.54, 74.24, 74.12, 73.01, 69.75, 70.25), 72.32, 58.72),
    "AdaTT-sp": ("b", (72.49, 73.51, 76.04, 77.59, 73.04, 74.26), 74.49, 54.65),
    "ShBot-MDL": ("c", (75.70, 76.50, 76.58, 78.10, 73.88, 74.76), 75.92, 51.53),
    "MMOE-MDL": ("c", (75.77, 76.50, 76.71, 78.37, 73.92, 75.16), 76.08, 51.48),
    "PLE-MDL": ("c", (75.64, 76.19, 76.48, 78.14, 73.73, 74.85), 75.84, 52.00),
    "STAR": ("c", (75.89, 76.85, 76.87, 78.47, 73.68, 74.70), 76.08, 51.11),
    "ShBot-MDMT": ("d", (75.94, 77.25, 76.56, 78.63, 73.97, 75.21), 76.26, 50.96),
    "MMOE-MDMT": ("d", (76.07, 77.27, 76.86, 78.67, 73.83, 75.41), 76.35, 51.02),
    "PLE-MDMT": ("d", (75.83, 76.95, 76.04, 78.48, 73.67, 75.09), 75.68, 51.90),  # cells average 76.01 (sic)
    "M2M": ("d", (74.12, 75.35, 75.08, 77.13, 72.11, 73.78), 74.59, 54.14),
    OURS: ("ours", (76.61, 78.13, 77.51, 79.33, 74.47, 76.09), 77.02, 50.71),
}
PAPER_TABLE3: dict[str, tuple[str, float]] = {  # row: (what it changes, mean AUC over all (d,t))
    "w/o AutoML": ("α, β fixed at 0.5", 76.37),
    "Concat modules": ("concatenate S, D, T instead of adding (no α)", 76.89),
    "Fully gated modules": ("one softmax gate over shared, domain and task experts, no α", 76.92),
    "w/o domain module": ("no domain experts", 76.89),
    "w/o task module": ("no task experts", 76.85),
    "w/o domain & task modules": ("shared experts only", 76.80),
    OURS: ("the full model", 77.02),
}
# ---------------------------------------------------------------------------------------------------------
# Our own M3oE variants (conf/experiment/diagnose/), reported under Table 3 without a paper number.
OUR_DIAGNOSTICS: dict[str, str] = {
    "w/o STAR layer": "no domain-specific STAR layer or W_c: h = f_DA(x) (ours, not in the paper)",
}
VARIANTS = (set(PAPER_TABLE3) | set(OUR_DIAGNOSTICS)) - {OURS}  # rows that are M3oE changed, not baselines
OVERALL_AUC, OVERALL_LOGLOSS = keys.TEST_AUC_MEAN, keys.key("test", keys.LOGLOSS_MEAN)
POOLED_AUC = keys.TEST_AUC_POOLED_MEAN  # per task over every domain's rows, then the mean over tasks (not the paper's)
VAL_AUC = keys.VAL_AUC_MEAN_BEST  # best mean validation AUC over epochs: the checkpoint the test metrics come from
ARCH_PREFIX = "arch/"  # the fusion weights the training system logs after each epoch


@dataclass
class RunRecord:
    """One finished run as the report uses it."""

    row: str
    seed: str
    split: str
    run_id: str
    metrics: dict[str, float]
    epochs: int = 0
    max_epochs: str = "?"
    train_seconds: float = math.nan
    data: str = "?"
    commit: str = ""
    command: str = ""
    arch: dict[str, list[float]] = field(default_factory=dict)  # arch/* metric → value per epoch
    val_curve: list[float] = field(default_factory=list)  # mean validation AUC after each epoch
    lr: str = "?"
    batch_size: str = "?"


def load_runs(tracking_uri: str, experiment: str, study: str | None, split: str | None = None) -> list[RunRecord]:
    """The newest finished run of each (row, split, seed) among runs tagged ``study`` (any, when None)."""
    latest = common.newest_finished_runs(
        tracking_uri, experiment, lambda run: run_key(run.data.tags), tags={"study": study, "split": split})
    client = MlflowClient(tracking_uri)
    records = [record_of(client, run, row) for (row, _, _), run in latest.items()]
    return sorted(records, key=lambda r: (row_order(r.row), r.split, r.seed))


def record_of(client: MlflowClient, run: Run, row: str) -> RunRecord:
    """One finished run as a record named ``row``, with its per-epoch validation and ``arch/*`` histories."""
    info, data = run.info, run.data
    arch = {key: metric_history(client, info.run_id, key) for key in sorted(data.metrics)
            if key.startswith(ARCH_PREFIX)}
    val_curve = metric_history(client, info.run_id, keys.VAL_AUC_MEAN)
    return RunRecord(
        row=row, seed=data.tags.get("seed", "?"), split=data.tags.get("split", "?"), run_id=info.run_id,
        metrics=dict(data.metrics), epochs=len(val_curve), val_curve=val_curve,
        max_epochs=data.params.get("trainer.max_epochs", "?"), train_seconds=common.run_seconds(run),
        data=data.tags.get("data", "?"), commit=common.short_commit(run), command=data.tags.get("command", ""),
        arch=arch, lr=data.params.get("optimizer.lr", "?"), batch_size=data.params.get("data.batch_size", "?"))


def run_key(tags: dict[str, str]) -> tuple[str, str, str] | None:
    """(row, split, seed) of a run with a ``row`` tag; None for any other run."""
    return (tags["row"], tags.get("split", "?"), tags.get("seed", "?")) if tags.get("row") else None


def table2_rows(records: Sequence[RunRecord]) -> list[str]:
    """The rows of Table 2 among the records (baselines and M3oE, not its variants), in the paper's order."""
    return sorted({r.row for r in records if r.row not in VARIANTS}, key=row_order)


def row_order(row: str) -> tuple[int, str]:
    order = list(PAPER_TABLE2) + [r for r in PAPER_TABLE3 if r not in PAPER_TABLE2] + list(OUR_DIAGNOSTICS)
    return (order.index(row), "") if row in order else (len(order), row)


def test_group(metric: str, domain: str, task: str) -> str:
    """``test/{metric}/{domain}/{task}``: one (domain, task) group's test metric."""
    return keys.key("test", keys.group(metric, domain, task))


def groups_of(records: Sequence[RunRecord]) -> list[tuple[str, str]]:
    """The (domain, task) pairs with a ``test/auc/{d}/{t}`` metric; MovieLens order first."""
    prefix = keys.key("test", keys.AUC, "")
    pairs = {tuple(k.split("/")[2:4]) for r in records for k in r.metrics
             if k.startswith(prefix) and k.count("/") == 3}

    def key(pair: tuple[str, str]) -> tuple[int, str, int, str]:
        d, t = pair
        return (MOVIELENS_DOMAINS.index(d) if d in MOVIELENS_DOMAINS else 99, d,
                MOVIELENS_TASKS.index(t) if t in MOVIELENS_TASKS else 99, t)

    return sorted(pairs, key=key)  # type: ignore[arg-type]


def values(records: Sequence[RunRecord], row: str, metric: str) -> list[float]:
    return [r.metrics[metric] for r in records if r.row == row and math.isfinite(r.metrics.get(metric, math.nan))]


def rela_impr(ours: float, best: float) -> float:
    """RelaImpr = (AUC_ours − 0.5) / (AUC_best_baseline − 0.5) − 1 (the paper's definition)."""
    return (ours - 0.5) / (best - 0.5) - 1


def columns(groups: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """(metric, header) of every AUC column: the per-(d,t) ones (with the paper's dNtM name), overall, pooled."""
    movielens = list(groups) == [(d, t) for d in MOVIELENS_DOMAINS for t in MOVIELENS_TASKS]
    return [(test_group(keys.AUC, d, t), f"{d} {t}" + (f" ({PAPER_COLUMNS[i]})" if movielens else ""))
            for i, (d, t) in enumerate(groups)] + [(OVERALL_AUC, "Overall AUC"), (POOLED_AUC, "Pooled AUC")]


def best_baseline(records: Sequence[RunRecord], baselines: Sequence[str], metric: str) -> str | None:
    """The baseline row with the highest mean of ``metric`` (None when no baseline has it)."""
    scored = [(mean_std(values(records, b, metric))[0], b) for b in baselines]
    scored = [(m, b) for m, b in scored if math.isfinite(m)]
    return max(scored)[1] if scored else None


def table2(records: Sequence[RunRecord], groups: Sequence[tuple[str, str]]) -> list[str]:
    """Our Table 2 (mean ± std over seeds, ×10⁻²), the RelaImpr line and the Welch t-tests."""
    rows = table2_rows(records)
    baselines = [r for r in rows if r != OURS]
    cols = columns(groups)
    header = ["grp", "row", "seeds", *[h for _, h in cols], "Overall logloss", "val AUC", "paper Overall AUC",
              "Δ vs paper"]
    lines = table_head(header)
    best = {m: best_baseline(records, baselines, m) for m, _ in cols}
    for row in rows:
        cells = []
        for metric, _ in cols:
            mean, std = mean_std(values(records, row, metric))
            star = ""
            if row == OURS and best[metric] is not None:
                theirs = values(records, best[metric], metric)
                p = welch_p(values(records, row, metric), theirs)
                star = " \\*" if math.isfinite(p) and p < 0.05 and mean > mean_std(theirs)[0] else ""
            cells.append(fmt(mean, std) + star)
        paper = PAPER_TABLE2.get(row)
        ours_overall = mean_std(values(records, row, OVERALL_AUC))[0]
        delta = f"{100 * ours_overall - paper[2]:+.2f}" if paper and math.isfinite(ours_overall) else "–"
        name = f"**{row}**" if row == OURS else row
        lines.append(table_row([paper[0] if paper else "", name, str(len(values(records, row, OVERALL_AUC))),
                                *cells, fmt(*mean_std(values(records, row, OVERALL_LOGLOSS))),
                                fmt(*mean_std(values(records, row, VAL_AUC))),
                                f"{paper[2]:.2f}" if paper else "–", delta]))
    if OURS in rows and baselines:
        impr = []
        for metric, _ in cols:
            ours = mean_std(values(records, OURS, metric))[0]
            theirs = mean_std(values(records, best[metric], metric))[0]
            impr.append(f"{100 * rela_impr(ours, theirs):.2f}% (vs {best[metric]})"
                        if math.isfinite(ours) and math.isfinite(theirs) else "–")
        lines.append("| | RelaImpr | | " + " | ".join(impr) + " | – | – | – | |")
    return lines


def paper_table2() -> list[str]:
    header = ["grp", "row", *PAPER_COLUMNS, "Overall AUC", "Overall logloss"]
    lines = table_head(header)
    for row, (group, cells, overall, logloss) in PAPER_TABLE2.items():
        lines.append(table_row([group, row, *[f"{c:.2f}" for c in cells], f"{overall:.2f}", f"{logloss:.2f}"]))
    baselines = [v for k, v in PAPER_TABLE2.items() if k != OURS]
    ours = PAPER_TABLE2[OURS]
    impr = [rela_impr(ours[1][i] / 100, max(b[1][i] for b in baselines) / 100) for i in range(len(PAPER_COLUMNS))]
    impr.append(rela_impr(ours[2] / 100, max(b[2] for b in baselines) / 100))
    lines.append("| | RelaImpr | " + " | ".join(f"{100 * x:.2f}%" for x in impr) + " | – |")
    return lines


def welch_table(records: Sequence[RunRecord], groups: Sequence[tuple[str, str]]) -> list[str]:
    cols = [*columns(groups), (OVERALL_LOGLOSS, "Overall logloss"), (VAL_AUC, "val AUC")]
    header = ["baseline", "seeds", "Δ Overall AUC (M3oE − baseline)", "Δ val AUC", *[h for _, h in cols]]
    lines = table_head(header)
    ours_overall, ours_val = (mean_std(values(records, OURS, m))[0] for m in (OVERALL_AUC, VAL_AUC))
    for row in [r for r in table2_rows(records) if r != OURS]:
        theirs, theirs_val = (mean_std(values(records, row, m))[0] for m in (OVERALL_AUC, VAL_AUC))
        lines.append(table_row([row, str(len(values(records, row, OVERALL_AUC))), fmt(ours_overall - theirs),
                                fmt(ours_val - theirs_val),
                                *[fmt_p(welch_p(values(records, OURS, m), values(records, row, m)))
                                  for m, _ in cols]]))
    return lines


def ablation_table(records: Sequence[RunRecord]) -> list[str]:
    """Table 3 (the paper's variants, then ours that have runs): overall test and validation AUC vs M3oE."""
    lines = table_head(["variant", "change", "seeds", "Overall AUC (ours)", "Δ vs our M3oE", "p vs our M3oE",
                        "val AUC", "paper", "Δ vs paper's M3oE", "Pooled AUC (ours)"])
    ours_full = values(records, OURS, OVERALL_AUC)
    variants = [(row, change, paper) for row, (change, paper) in PAPER_TABLE3.items()]
    variants += [(row, change, math.nan) for row, change in OUR_DIAGNOSTICS.items()
                 if values(records, row, OVERALL_AUC)]
    for row, change, paper in variants:
        xs = values(records, row, OVERALL_AUC)
        mean, std = mean_std(xs)
        delta = fmt(mean - mean_std(ours_full)[0]) if row != OURS and xs and ours_full else "–"
        p = fmt_p(welch_p(xs, ours_full)) if row != OURS else "–"
        paper_delta = f"{paper - PAPER_TABLE3[OURS][1]:+.2f}" if row != OURS and math.isfinite(paper) else "–"
        lines.append(f"| {row} | {change} | {len(xs)} | {fmt(mean, std)} | {delta} | {p} "
                     f"| {fmt(*mean_std(values(records, row, VAL_AUC)))} | {fmt(paper, scale=1.0)} | {paper_delta} "
                     f"| {fmt(*mean_std(values(records, row, POOLED_AUC)))} |")
    return lines


ALPHA = 0.05  # the verdict table's significance level (two-sided Welch t-test)


@dataclass(frozen=True)
class Claim:
    """One claim of the paper's Tables 2–3 as a difference of mean Overall AUC: ``better`` beats ``worse``."""

    text: str
    better: str
    worse: str
    paper_delta: float  # the paper's difference, AUC ×10⁻²


def paper_claims() -> list[Claim]:
    """Every comparison the paper's Tables 2–3 make: M3oE beats each Table-2 baseline, and each Table-3
    variant (a module or AutoML removed, or fused another way) is worse than the full model."""
    full2, full3 = PAPER_TABLE2[OURS][2], PAPER_TABLE3[OURS][1]
    claims = [Claim(f"M3oE beats {row}", OURS, row, full2 - overall)
              for row, (_, _, overall, _) in PAPER_TABLE2.items() if row != OURS]
    claims += [Claim(f"M3oE beats {row} ({change})", OURS, row, full3 - auc)
               for row, (change, auc) in PAPER_TABLE3.items() if row != OURS]
    return claims


def verdict(delta: float, p: float, seeds: tuple[int, int]) -> str:
    """``holds`` (our difference has the paper's sign and p < ALPHA), ``reversed`` (the opposite sign, p <
    ALPHA), ``not separated`` (p ≥ ALPHA) or ``not tested`` (fewer than two seeds on a side)."""
    if min(seeds) < 2 or not math.isfinite(p):
        return "not tested"
    if p >= ALPHA:
        return "not separated"
    return "holds" if delta > 0 else "reversed"


def verdict_rows(records: Sequence[RunRecord]) -> list[tuple[Claim, float, float, str, tuple[int, int]]]:
    """Each claim of :func:`paper_claims` with our Δ of mean Overall AUC (×10⁻²), Welch's p and the verdict."""
    out = []
    for claim in paper_claims():
        ours, theirs = values(records, claim.better, OVERALL_AUC), values(records, claim.worse, OVERALL_AUC)
        seeds = (len(ours), len(theirs))
        delta = 100 * (statistics.fmean(ours) - statistics.fmean(theirs)) if ours and theirs else math.nan
        p = welch_p(ours, theirs) if min(seeds) >= 2 else math.nan
        out.append((claim, delta, p, verdict(delta, p, seeds), seeds))
    return out


def verdict_table(records: Sequence[RunRecord]) -> list[str]:
    """The verdict table and one line counting it: claim · paper's Δ · ours · p · verdict."""
    rows = verdict_rows(records)
    lines = table_head(["claim (paper)", "paper's Δ Overall AUC", "our Δ Overall AUC", "seeds", "p (Welch)",
                        "verdict"])
    for claim, delta, p, said, seeds in rows:
        lines.append(table_row([claim.text, f"{claim.paper_delta:+.2f}",
                                f"{delta:+.2f}" if math.isfinite(delta) else "–", f"{seeds[0]} vs {seeds[1]}",
                                fmt_p(p), f"**{said}**" if said == "holds" else said]))
    tally = {name: sum(1 for *_, said, _ in rows if said == name)
             for name in ("holds", "not separated", "reversed", "not tested")}
    tested = len(rows) - tally["not tested"]
    lines += ["", f"In plain words: of the paper's {len(rows)} claims, {tested} have at least two seeds on each "
              f"side here; {tally['holds']} hold (our difference has the paper's sign, p < {ALPHA}), "
              f"{tally['not separated']} are not separated from no difference (p ≥ {ALPHA}), "
              f"{tally['reversed']} are reversed, and {tally['not tested']} are not tested yet."]
    return lines


def val_curve_table(records: Sequence[RunRecord]) -> list[str]:
    """Mean validation AUC (×10⁻²) after each epoch per Table-2 row: where a gap opens, and who still climbs."""
    rows = table2_rows(records)
    epochs = max((len(r.val_curve) for r in records), default=0)
    lines = ["| row | seeds | " + " | ".join(f"ep {e + 1}" for e in range(epochs)) + " | best epoch (median) |",
             "|---|---|" + "---|" * epochs + "---|"]
    for row in rows:
        curves = [r.val_curve for r in records if r.row == row and r.val_curve]
        if not curves:
            continue
        cells = [fmt(mean_std([c[e] for c in curves if e < len(c)])[0]) for e in range(epochs)]
        best = statistics.median(1 + max(range(len(c)), key=c.__getitem__) for c in curves)
        lines.append(f"| {'**' + row + '**' if row == OURS else row} | {len(curves)} | " + " | ".join(cells)
                     + f" | {best:g} |")
    return lines


def timing_table(records: Sequence[RunRecord]) -> list[str]:
    """Wall seconds of a run (train, validation, test) per row: median and range over its runs."""
    lines = table_head(["row", "runs", "epochs", "median s/run", "min–max s"])
    for row in sorted({r.row for r in records}, key=row_order):
        seconds = [r.train_seconds for r in records if r.row == row and math.isfinite(r.train_seconds)]
        epochs = describe([str(r.epochs) for r in records if r.row == row])
        if seconds:
            lines.append(f"| {row} | {len(seconds)} | {epochs} | {statistics.median(seconds):.0f} "
                         f"| {min(seconds):.0f}–{max(seconds):.0f} |")
    return lines


def auc_plot(records: Sequence[RunRecord], groups: Sequence[tuple[str, str]], path: Path) -> None:
    """Grouped bars: x = (domain, task) and overall, one bar per Table-2 row, error bars = std over seeds."""
    rows = table2_rows(records)
    cols = columns(groups)
    fig, ax = plt.subplots(figsize=(max(8.0, 2.0 + 0.12 * len(rows) * len(cols)), 4.2))
    width = 0.85 / max(len(rows), 1)
    for k, row in enumerate(rows):
        stats = [mean_std(values(records, row, m)) for m, _ in cols]
        positions = [i + (k - (len(rows) - 1) / 2) * width for i in range(len(cols))]
        errors = [s[1] if math.isfinite(s[1]) else 0.0 for s in stats]
        ax.bar(positions, [s[0] for s in stats], width=width, yerr=errors, capsize=1.5,
               label=row, color="black" if row == OURS else plt.cm.tab20(k % 20), error_kw={"elinewidth": 0.6})
    finite = [v for r in records for m, _ in cols if math.isfinite(v := r.metrics.get(m, math.nan))]
    ax.set_ylim(min(finite, default=0.5) - 0.02, max(finite, default=1.0) + 0.01)
    ax.set_xticks(range(len(cols)), [h.replace(" ", "\n") for _, h in cols], fontsize=8)
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    ax.legend(fontsize=7, ncols=min(len(rows), 8), loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def fusion_plot(records: Sequence[RunRecord], path: Path) -> bool:
    """One panel per fusion weight (``arch/*``): mean ± std over seeds per epoch, one line per row."""
    keys = sorted({k for r in records for k in r.arch})
    if not keys:
        return False
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), squeeze=False, sharey=True)
    for ax, key in zip(axes[0], keys):
        for row in sorted({r.row for r in records if key in r.arch}, key=row_order):
            histories = [r.arch[key] for r in records if r.row == row and r.arch.get(key)]
            epochs = max(len(h) for h in histories)
            stats = [mean_std([h[e] for h in histories if e < len(h)]) for e in range(epochs)]
            x = list(range(1, epochs + 1))
            mean = [s[0] for s in stats]
            ax.plot(x, mean, marker=".", label=row, linewidth=2 if row == OURS else 1)
            ax.fill_between(x, [m - s for m, s in stats], [m + s for m, s in stats], alpha=0.15)
        ax.set_title(key.removeprefix(ARCH_PREFIX), fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel("fusion weight (sigmoid)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def write_csv(records: Sequence[RunRecord], groups: Sequence[tuple[str, str]], path: Path) -> None:
    tasks = sorted({t for _, t in groups}, key=lambda t: (MOVIELENS_TASKS.index(t) if t in MOVIELENS_TASKS else 99, t))
    pooled = [keys.key("test", keys.pooled(keys.AUC_POOLED, t)) for t in tasks]
    metrics = [test_group(keys.AUC, d, t) for d, t in groups] + [OVERALL_AUC, *pooled, POOLED_AUC, OVERALL_LOGLOSS,
                                                                  VAL_AUC]
    common.write_csv_atomic(path, ["row", "seed", "split", "epochs", *metrics, "train_seconds", "run_id"], (
        [r.row, r.seed, r.split, r.epochs, *[f"{r.metrics.get(m, math.nan):.6f}" for m in metrics],
         f"{r.train_seconds:.1f}", r.run_id] for r in records))


def read_csv(path: Path) -> list[RunRecord]:
    """The runs of a committed ``results.csv`` (:func:`write_csv`'s columns) as records with their test and
    validation metrics — for tables that need only those, when the store that made the file is gone."""
    fixed = {"row", "seed", "split", "epochs", "train_seconds", "run_id"}
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise SystemExit(f"error: {path}: {error.strerror}; name a results.csv written by `make report`") from None
    if not rows or not {"row", "seed", OVERALL_AUC} <= set(rows[0]):
        raise SystemExit(f"error: {path}: not a paper report's results.csv (needs the columns row, seed and "
                         f"{OVERALL_AUC}); write one with `make report`")
    return [RunRecord(row=r["row"], seed=r["seed"], split=r.get("split", "?"), run_id=r.get("run_id", ""),
                      metrics={k: float(v) for k, v in r.items() if k not in fixed and v not in ("", None)},
                      epochs=int(r.get("epochs") or 0))
            for r in rows]


def settings_line(records: Sequence[RunRecord]) -> str:
    """The optimiser and batch settings: one lr for all rows (the paper's), or each row's own (a tuned study)."""
    rows = sorted({r.row for r in records}, key=row_order)
    lr_of = {row: describe([r.lr for r in records if r.row == row]) for row in rows}
    if len(set(lr_of.values())) <= 1:
        lr = f"Adam lr {describe([r.lr for r in records])} (`conf/shared/paper_rows.yaml`)"
    else:
        lr = ("Adam lr per row, each chosen on validation by its tuning study (`conf/experiment/tuned/`): "
              + ", ".join(f"{row} {lr_of[row]}" for row in rows))
    return (f"{lr}; batch size {describe([r.batch_size for r in records])}; each row is one file of "
            "`conf/experiment/paper/`, whose `row` tag names it here")


def verdict_markdown(records: Sequence[RunRecord], *, command: str, source: str) -> str:
    """The verdict table on its own page (for a study whose other tables are already committed)."""
    return "\n".join([
        "# M3oE paper, Tables 2–3: which claims hold here", "",
        f"Generated by `{command}` on {dt.date.today().isoformat()} (report code at commit {git_commit()[:10]}) "
        f"from {source}: {len(records)} runs; seeds {describe([r.seed for r in records])}, split "
        f"{describe([r.split for r in records])}. Overall AUC ×10⁻² is the mean of a run's per-(domain, task) "
        "test AUCs at its best-validation checkpoint; **holds**: the paper's sign and a two-sided Welch p < 0.05; "
        "**not separated**: p ≥ 0.05; **reversed**: the other sign, p < 0.05; **not tested**: fewer than two "
        "seeds on a side.", "", *verdict_table(records), ""])


PAPER_DATA = "movielens1m"  # the paper's Table 2 is on MovieLens-1M


def data_note(records: Sequence[RunRecord]) -> str:
    """What the data are, said plainly: only ML-1M runs compare with the paper's table."""
    if {r.data for r in records} == {PAPER_DATA}:
        return "the label-complete reconstruction of ML-1M in `../shared/data`, not the paper's file"
    return ("NOT the paper's dataset: the paper's numbers below are on MovieLens-1M, so differences from them "
            "say nothing about the reproduction")


def markdown(records: Sequence[RunRecord], groups: Sequence[tuple[str, str]], *, command: str, source: str,
             fusion: bool, see_also: str = "") -> str:
    trained = [r.epochs for r in records]
    commits = describe([r.commit or "unknown" for r in records])
    lines = [
        "# M3oE paper, Table 2 (MovieLens) and Table 3: our reproduction", "",
        f"Generated by `{command}` on {dt.date.today().isoformat()} (report code at commit {git_commit()[:10]}) "
        f"from {source}: {len(records)} finished runs, the newest of each (row, split, seed). Per-run numbers "
        "are in [results.csv](results.csv); each run's exact command is its MLflow `command` tag." + see_also, "",
        f"- **Data:** {describe([r.data for r in records])} ({data_note(records)}); "
        f"**split:** {describe([r.split for r in records])}",
        f"- **Seeds:** {describe([r.seed for r in records])}",
        f"- **Epochs:** at most {describe([r.max_epochs for r in records])}, early stopping on the mean validation "
        f"AUC; trained {min(trained, default=0)}–{max(trained, default=0)} epochs; test metrics are those of the "
        "best-validation checkpoint",
        f"- **Runs trained at commit(s):** {commits}",
        f"- **Settings:** {settings_line(records)}", "",
        "AUC and logloss are ×10⁻² (as in the paper); cells are mean ± sample std over seeds. "
        "Overall AUC is the mean of the per-(domain, task) AUCs of each run (the paper's, and the selection metric's "
        "kind); Pooled AUC is each task's AUC over the rows of every domain together, averaged over tasks (the "
        "Scenario-Wise-Rec benchmark's convention; `–` for runs that predate it). `\\*` on M3oE: better than the best "
        "baseline of that column with a two-sided Welch t-test p < 0.05 (the paper's mark). RelaImpr = "
        "(AUC_M3oE − 0.5) / (AUC_best baseline − 0.5) − 1, best baseline per column (named). `val AUC` is the "
        "best mean validation AUC over epochs — the checkpoint each run is tested at, and the only number used "
        "to choose between settings (the test split is never used for selection).", "",
        "## Table 2: ours", "", *table2(records, groups), "",
        "## Table 2: the paper's numbers (M3oE paper, SIGIR'24; not ours)", "",
        "Typed from the paper (docs/m3oe.md §4). Columns d1..d3 = age {1,18}, {25}, {35+}; t1 = click, "
        "t2 = like. The paper's PLE-MDMT cells average 76.01, not the printed 75.68. Its RelaImpr line is "
        "recomputed here from its own table.", "", *paper_table2(), "",
        "## Welch t-tests: M3oE vs each baseline (two-sided p-values)", "",
        "Per column, over the seeds of each row (`–`: fewer than two seeds on a side). `\\*`: p < 0.05 — in "
        "either direction; the Δ column gives the sign.", "", *welch_table(records, groups), "",
        "## Table 3: ablation (Overall AUC ×10⁻²)", "", *ablation_table(records), "",
        "## Verdict: each claim of Tables 2–3", "",
        "Each comparison the paper's tables make, as the difference of mean Overall AUC (×10⁻²) between the "
        "row the paper ranks higher and the other, over the seeds here, with a two-sided Welch t-test. "
        "**holds**: same sign as the paper and p < 0.05; **not separated**: p ≥ 0.05 (the runs cannot tell the "
        "rows apart); **reversed**: the other sign, p < 0.05; **not tested**: fewer than two seeds on a side.",
        "", *verdict_table(records), "",
        "## Validation AUC by epoch (mean over seeds, ×10⁻²)", "",
        "The selection metric after each epoch. A row whose best epoch is the last was still improving when "
        "the epoch cap stopped it.", "", *val_curve_table(records), "",
        "## Run time per row", "",
        "Wall seconds of each run (training, per-epoch validation and the test pass) as recorded by MLflow, on "
        "this 2-core CPU machine; runs that shared the cores with another job were slower than a quiet machine "
        "(clean projections: `experiments/bench/reproduce.md`).", "", *timing_table(records), "",
        "## Plots", "", "![test AUC per (domain, task) by row](paper_auc.png)", "",
    ]
    if fusion:
        lines += ["Fusion weights α (shared vs specific) and β (own vs other experts) after each epoch, "
                  "mean ± std over seeds (`arch/*` metric histories):", "", "![fusion weights](paper_fusion.png)", ""]
    else:
        lines += ["(No `arch/*` fusion-weight histories among these runs.)", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_store_arguments(parser, experiment="m3oe-lightning", study="paper",
                               study_help="value of the runs' `study` tag ('' = any run with a row tag)",
                               out="logs/reports/movielens", command="make reproduce")
    parser.add_argument("--split", default=None, help="only runs of this split (default: all)")
    parser.add_argument("--name", default="README.md", help="file name of the report inside --out")
    parser.add_argument("--verdict-from", type=Path, default=None, metavar="RESULTS_CSV",
                        help="write only the verdict table (--name in --out) from a committed results.csv")
    args = parser.parse_args(argv)

    if args.verdict_from is not None:
        records = read_csv(args.verdict_from)
        args.out.mkdir(parents=True, exist_ok=True)
        common.write_atomic(args.out / args.name, verdict_markdown(
            records, command=args.command, source=f"the per-run file `{args.verdict_from}` (itself written from "
                                                   "MLflow by the paper report; each line names its run id)"))
        print(f"wrote {args.out / args.name} ({len(records)} runs)")
        return
    records = load_runs(args.tracking_uri, args.experiment, args.study or None, args.split)
    if not records:
        raise SystemExit(f"error: no finished runs with a `row` tag (study={args.study!r}) in {args.tracking_uri}; "
                         "run `make reproduce` (or `make reproduce-quick`) first")
    if {r.data for r in records} != {PAPER_DATA}:
        print(f"warning: these runs are on {describe([r.data for r in records])}, not the paper's MovieLens-1M: "
              "the report compares them with the paper's ML-1M table anyway, and says so", file=sys.stderr)
    groups = groups_of(records)
    args.out.mkdir(parents=True, exist_ok=True)
    auc_plot(records, groups, args.out / "paper_auc.png")
    fusion = fusion_plot(records, args.out / "paper_fusion.png")
    write_csv(records, groups, args.out / "results.csv")
    source = common.store_source(args)
    see_also = ""
    if (args.out / "presets.md").exists():
        see_also = (" The M3oE presets (the paper's equations vs the released code's choices, both splits) are "
                    "compared in [presets.md](presets.md) (`make movielens`).")
    common.write_atomic(args.out / args.name,
                 markdown(records, groups, command=args.command, source=source, fusion=fusion, see_also=see_also))
    print(f"wrote {args.out / args.name} and results.csv ({len(records)} runs, "
          f"{len({r.row for r in records})} rows)")


if __name__ == "__main__":
    main()
