"""MLflow → results tables and plots for ``experiments/``.

Reads finished runs (never log files) tagged with a study name, and writes a Markdown report with the
per-(domain, task) test AUC and logloss of each run, the overall means, the pooled AUC (each task over
every domain's rows, averaged over tasks), the best validation AUC, how
long training took, and the command that reproduces each run; plus a PNG comparing the runs.

``python -m m3oe_lightning.reports.presets --study movielens --out experiments/movielens --name presets.md``
(``make movielens-report``; the folder's README.md is the paper reproduction, ``make report``)
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from mlflow.entities import Run  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from m3oe_lightning import metric_keys as keys  # noqa: E402
from m3oe_lightning.reports import common  # noqa: E402
from m3oe_lightning.reports.common import MOVIELENS_DOMAINS, MOVIELENS_TASKS  # noqa: E402
from m3oe_lightning.tracking.provenance import git_commit  # noqa: E402

MOVIELENS_NOTES = (
    "Data: `../shared/data/movielens-1m` (1,000,209 ratings; click = rating ≥ 4, like = rating = 5, exact "
    "for every row). Domains by age: age_1-18 = {1, 18}, age_25, age_35plus = {35, 45, 50, 56}. Splits: "
    "`random` = seeded 80/10/10 (split seed 2022); `ordered` = 80/10/10 in file order (rows are grouped by "
    "user, so test users are unseen in training, as in the released code's split; its exact row order, which "
    "puts other users in val/test, is `data.split=released`). Presets: "
    "`m3oe_paper` (N=1, paper equations, alternating AutoML step once per epoch, batch 4,096) and "
    "`m3oe_released` (the released code's choices: N=4, LayerNorm towers, detached gates, joint fusion "
    "updates, batch 40,960). At most 10 epochs, early stopping (patience 3) on the mean validation AUC.\n\n"
    "`train s` is each run's wall time (training, validation and test) on the machine as it was at the "
    "time — runs that shared the 2 cores with other jobs were several times slower; clean throughput is in "
    "`experiments/bench/`.\n\n"
    "For reference, the released M3oE code on this same reconstructed data reaches test AUC 0.811 (mean of "
    "the six groups) on the random split after 10 epochs, and about 0.72 validation AUC on the ordered split.\n\n"
    "The paper's Table 2/3 reproduction (every baseline row, seeds 2022–2026) is [README.md](README.md) in this "
    "folder (`make reproduce`)."
)


TEST_AUC_MEAN, TEST_LOGLOSS_MEAN = keys.TEST_AUC_MEAN, keys.key("test", keys.LOGLOSS_MEAN)
TEST_AUC_POOLED_MEAN = keys.TEST_AUC_POOLED_MEAN  # beside the mean over groups; `–` for runs that predate it
TEST_AUC_PREFIX = keys.key("test", keys.AUC, "")  # test/auc/{domain}/{task}


def test_group(metric: str, domain: str, task: str) -> str:
    """``test/{metric}/{domain}/{task}``: one (domain, task) group's test metric."""
    return keys.key("test", keys.group(metric, domain, task))


def study_runs(tracking_uri: str, experiment: str, study: str) -> list[Run]:
    """Finished runs of ``study``, newest last; a rerun of the same (model, split, seed) replaces the older."""
    latest = common.newest_finished_runs(
        tracking_uri, experiment, lambda run: tuple(run.data.tags.get(t, "?") for t in ("model", "split", "seed")),
        tags={"study": study})
    return sorted(latest.values(), key=lambda r: (r.data.tags.get("split", ""), r.data.tags.get("model", "")))


def run_summary(client: MlflowClient, run: Run) -> dict[str, Any]:
    """The figures the report shows for one run."""
    metrics, tags = run.data.metrics, run.data.tags
    history = client.get_metric_history(run.info.run_id, keys.VAL_AUC_MEAN)
    best = max(history, key=lambda m: m.value) if history else None
    return {
        "model": tags.get("model", "?"), "split": tags.get("split", "?"), "seed": tags.get("seed", "?"),
        "epochs": len(history), "best_epoch": history.index(best) + 1 if best else 0,
        "val_auc": best.value if best else math.nan, "seconds": common.run_seconds(run),
        "command": tags.get("command", ""), "commit": common.short_commit(run),
        "metrics": metrics,
    }


def pooled_cell(metrics: dict[str, float]) -> str:
    """The pooled AUC (mean over tasks of each task's AUC over all domains) of a run; `–` when it has none."""
    value = metrics.get(TEST_AUC_POOLED_MEAN, math.nan)
    return f"{value:.4f}" if math.isfinite(value) else "–"


def markdown(summaries: Sequence[dict[str, Any]], domains: Sequence[str], tasks: Sequence[str],
             title: str, command: str, notes: str) -> str:
    groups = [(d, t) for d in domains for t in tasks]
    header = ["model", "split", "seed", *[f"{d} {t}" for d, t in groups], "**mean AUC**", "pooled AUC",
              "mean logloss", "best val AUC", "epochs (best)", "train s"]
    lines = [f"# {title}", "", notes, "",
             f"Generated by `{command}` on {dt.date.today().isoformat()} (commit {git_commit()[:10]}) from the "
             "MLflow store; every row is one finished run. Test metrics are those of the best-validation "
             "checkpoint.", "", "## Test AUC per (domain, task)", "", *common.table_head(header)]
    for s in summaries:
        m = s["metrics"]
        lines.append(common.table_row([
            s["model"], s["split"], s["seed"],
            *[f"{m.get(test_group(keys.AUC, d, t), math.nan):.4f}" for d, t in groups],
            f"**{m.get(TEST_AUC_MEAN, math.nan):.4f}**", pooled_cell(m), f"{m.get(TEST_LOGLOSS_MEAN, math.nan):.4f}",
            f"{s['val_auc']:.4f}", f"{s['epochs']} ({s['best_epoch']})", f"{s['seconds']:.0f}"]))
    lines += ["", "## Test logloss per (domain, task)", "",
              *common.table_head(["model", "split", *[f"{d} {t}" for d, t in groups]])]
    for s in summaries:
        m = s["metrics"]
        lines.append(common.table_row([s["model"], s["split"], *[
            f"{m.get(test_group(keys.LOGLOSS, d, t), math.nan):.4f}" for d, t in groups]]))
    lines += ["", "## Commands", "", "Each run, reproducible on its own:", ""]
    lines += [f"- {s['model']} / {s['split']}: `{s['command']}` (commit {s['commit']})" for s in summaries]
    lines += ["", "![test AUC per (domain, task)](test_auc.png)", ""]
    return "\n".join(lines)


def readme_summary(summaries: Sequence[dict[str, Any]], command: str) -> str:
    """The compact table the top-level README shows (generated, between its RESULTS markers)."""
    lines = [f"Generated by `{command}` ({dt.date.today().isoformat()}, commit {git_commit()[:10]}).", "",
             *common.table_head(["preset", "split", "test AUC (mean of 6)", "test AUC (pooled)", "test logloss (mean)",
                                 "best val AUC", "epochs"])]
    for s in summaries:
        m = s["metrics"]
        lines.append(common.table_row([s["model"], s["split"], f"{m.get(TEST_AUC_MEAN, math.nan):.4f}",
                                       pooled_cell(m), f"{m.get(TEST_LOGLOSS_MEAN, math.nan):.4f}",
                                       f"{s['val_auc']:.4f}",
                                       str(s["epochs"])]))
    return "\n".join(lines)


def replace_between_markers(path: Path, body: str, start: str = "<!-- RESULTS:START -->",
                            end: str = "<!-- RESULTS:END -->") -> None:
    """Rewrite the text between two marker lines of ``path`` (atomically); other text is untouched."""
    text = path.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"error: {path} has no {start} … {end} markers to fill")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    common.write_atomic(path, f"{head}{start}\n{body}\n{end}{tail}")


def comparison_plot(summaries: Sequence[dict[str, Any]], domains: Sequence[str], tasks: Sequence[str],
                    path: Path) -> None:
    groups = [(d, t) for d in domains for t in tasks]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / max(len(summaries), 1)
    for k, s in enumerate(summaries):
        values = [s["metrics"].get(test_group(keys.AUC, d, t), math.nan) for d, t in groups]
        positions = [i + (k - (len(summaries) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(positions, values, width=width, label=f"{s['model']} ({s['split']})")
    finite = [v for s in summaries for k, v in s["metrics"].items() if k.startswith(TEST_AUC_PREFIX)]
    ax.set_ylim(min(finite, default=0.5) - 0.03, max(finite, default=1.0) + 0.02)
    ax.set_xticks(range(len(groups)), [f"{d}\n{t}" for d, t in groups], fontsize=8)
    ax.set_ylabel("test AUC")
    ax.legend(fontsize=7, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_store_arguments(parser, experiment="m3oe-lightning", study="movielens",
                               study_help="value of the runs' `study` tag", out="logs/reports/movielens",
                               command="make movielens")
    parser.add_argument("--title", default="M3oE on MovieLens-1M (label-complete reconstruction)")
    parser.add_argument("--notes", default=MOVIELENS_NOTES)
    parser.add_argument("--name", default="README.md", help="file name of the report inside --out")
    parser.add_argument("--readme", type=Path, default=None,
                        help="also fill this file's RESULTS markers with a summary table")
    args = parser.parse_args(argv)

    runs = study_runs(args.tracking_uri, args.experiment, args.study)
    if not runs:
        raise SystemExit(f"error: no finished runs tagged study={args.study!r} in {args.tracking_uri}; "
                         "run the study first (e.g. `make movielens`)")
    client = MlflowClient(args.tracking_uri)
    summaries = [run_summary(client, r) for r in runs]
    args.out.mkdir(parents=True, exist_ok=True)
    comparison_plot(summaries, MOVIELENS_DOMAINS, MOVIELENS_TASKS, args.out / "test_auc.png")
    text = markdown(summaries, MOVIELENS_DOMAINS, MOVIELENS_TASKS, args.title, args.command, args.notes)
    common.write_atomic(args.out / args.name, text)
    if args.readme is not None:
        replace_between_markers(args.readme, readme_summary(summaries, args.command))
    print(f"wrote {args.out / args.name} ({len(summaries)} runs)")


if __name__ == "__main__":
    main()
