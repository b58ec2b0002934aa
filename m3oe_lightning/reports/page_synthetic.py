"""MLflow → the report of PAGE's Synthetic study (``make page-synthetic-report``).

Reads the finished ``m3oe-federate`` runs tagged ``study=page_synthetic`` (``make page-synthetic``: FedAvg,
FedProx, Ditto, PAGE with the released and the affine action map, and the random-action control) and writes
into ``--out``:

- ``README.md``: per arm, global accuracy (the global model on the pooled global test set) and local accuracy
  (each client's own model on its local test split, plain mean over clients), each the mean over the last
  ``--last`` rounds of a run (the independent check in issue #13 used rounds 281–300), mean ± std over seeds;
  two-sided Welch tests of each PAGE arm against FedAvg and against the random-action control; PAGE's relative
  gain over the best baseline beside the paper's headline claim;
- ``results.csv``: one line per run used;
- ``synthetic_curves.png``: global and local accuracy per round, mean over seeds, one line per arm.

``python -m m3oe_lightning.reports.page_synthetic --out experiments/federated/page_synthetic``
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.federated.strategies.page import page_key
from m3oe_lightning.reports import common
from m3oe_lightning.reports.common import describe, fmt_p, mean_std, table_head, table_row, welch_p
from m3oe_lightning.reports.federated import TIMES, FederatedRun, algorithms, cell, curves_plot, load_runs
from m3oe_lightning.tracking.provenance import git_commit

GLOBAL_ACCURACY, LOCAL_ACCURACY = keys.key(keys.GLOBAL, keys.ACCURACY), keys.key(keys.PERSONAL, keys.ACCURACY)
CURVES = (GLOBAL_ACCURACY, LOCAL_ACCURACY)
# the server agent's signal: the aggregated model on the union of the clients' validation rows (never test)
SERVER_VALIDATION = page_key("server", "val_accuracy")
MAPS = ("page-released", "page-affine")  # the arms that pick federated.action_map's default
ORDER = ("fedavg", "fedprox", "ditto", "page-random", "page-released", "page-affine")
BASELINES = ("fedavg", "fedprox", "ditto")
CONTROL = "page-random"
# the paper's headline (Chen et al., WWW 2024, abstract): PAGE's relative gain over the best baseline
PAPER_GAIN = {GLOBAL_ACCURACY: 35.20, LOCAL_ACCURACY: 39.91}
CSV_COLUMNS = ("arm", "seed", "rounds", "global_accuracy_last", "local_accuracy_last", "seconds", "run_id")


def tail_mean(run: FederatedRun, metric: str, last: int) -> float:
    """The mean of ``metric`` over those of the run's last ``last`` rounds that logged it (NaN without any)."""
    scored = [v for v in run.history.get(metric, [])[-last:] if math.isfinite(v)]
    return statistics.fmean(scored) if scored else math.nan


def arms(runs: Sequence[FederatedRun]) -> list[str]:
    return algorithms(runs, ORDER)


def values(runs: Sequence[FederatedRun], arm: str, metric: str, last: int) -> list[float]:
    return [v for v in (tail_mean(r, metric, last) for r in runs if r.algorithm == arm) if math.isfinite(v)]


def results_table(runs: Sequence[FederatedRun], last: int) -> list[str]:
    lines = table_head(["arm", "seeds", "rounds", f"global accuracy (last {last})", f"local accuracy (last {last})",
                        "seconds per run"])
    for arm in arms(runs):
        mine = [r for r in runs if r.algorithm == arm]
        seconds = [r.seconds for r in mine if math.isfinite(r.seconds)]
        lines.append(table_row([arm, str(len(mine)), describe([str(r.rounds) for r in mine]),
                                cell(values(runs, arm, GLOBAL_ACCURACY, last)),
                                cell(values(runs, arm, LOCAL_ACCURACY, last)),
                                f"{statistics.fmean(seconds):.0f}" if seconds else "–"]))
    return lines


def tests_table(runs: Sequence[FederatedRun], last: int) -> list[str]:
    """Each PAGE arm minus FedAvg and minus the random-action control: Δ (points) and Welch's p."""
    references = [a for a in ("fedavg", CONTROL) if a in arms(runs)]
    pages = [a for a in arms(runs) if a.startswith("page") and a != CONTROL]
    if not references or not pages:
        return ["(Needs FedAvg or the random-action control, and a PAGE arm.)"]
    lines = table_head(["PAGE arm", *[f"Δ {m} vs {ref} (p)" for ref in references for m in ("global", "local")]])
    for arm in pages:
        row = []
        for ref in references:
            for metric in CURVES:
                ours, base = values(runs, arm, metric, last), values(runs, ref, metric, last)
                row.append(f"{100 * (statistics.fmean(ours) - statistics.fmean(base)):+.2f} "
                           f"({fmt_p(welch_p(ours, base))})" if ours and base else "–")
        lines.append(table_row([arm, *row]))
    return lines


def agent_summary(run: FederatedRun) -> dict[str, float]:
    """What a PAGE run's agents chose in its last round: the clients' mean lr and local epochs, and how far the
    server's aggregation weights are from uniform (coefficient of variation; the largest weight × clients)."""
    def chosen(suffix: str) -> list[float]:
        return [v for k, v in run.metrics.items() if k.startswith(page_key("client")) and k.endswith(f"/{suffix}")]

    weights = [v for k, v in run.metrics.items() if k.startswith(page_key("weight") + "/")]
    lrs, epochs = chosen("lr"), chosen("epochs")
    if not weights or not lrs:
        return {}
    mean_weight = statistics.fmean(weights)
    return {"lr": statistics.fmean(lrs), "epochs": statistics.fmean(epochs),
            "weight_cv": statistics.pstdev(weights) / mean_weight, "weight_max": max(weights) / mean_weight}


AGENT_COLUMNS = (("lr", "clients' mean lr", "{:.4f}"), ("epochs", "clients' mean local epochs", "{:.1f}"),
                 ("weight_cv", "server weights: CV", "{:.2f}"), ("weight_max", "largest weight ÷ uniform", "{:.2f}"))


def agents_table(runs: Sequence[FederatedRun], last: int) -> list[str]:
    """Per PAGE arm, what its agents chose in the last round (mean ± std over seeds): whether it left FedAvg's
    setting (lr 0.1, 20 epochs, uniform weights) and how far; beside it the server's validation accuracy."""
    pages = [a for a in arms(runs) if a.startswith("page")]
    if not pages:
        return ["(No PAGE arm.)"]
    lines = table_head(["PAGE arm", f"server validation accuracy (last {last})",
                        *[title for _, title, _ in AGENT_COLUMNS]])
    for arm in pages:
        summaries = [s for s in (agent_summary(r) for r in runs if r.algorithm == arm) if s]
        cells = [cell(values(runs, arm, SERVER_VALIDATION, last))]
        for name, _, form in AGENT_COLUMNS:
            mean, std = mean_std([s[name] for s in summaries])  # sample std over seeds, as every table here
            cells.append(form.format(mean) + (f" ± {form.format(std)}" if math.isfinite(std) else "")
                         if math.isfinite(mean) else "–")
        lines.append(table_row([arm, *cells]))
    return lines


def default_line(runs: Sequence[FederatedRun], last: int) -> str:
    """Which action map the validation data favours: the PAGE arm with the higher mean server validation
    accuracy over the last rounds (never a test number), as the default of ``federated.action_map``."""
    scores = {arm: statistics.fmean(xs) for arm in MAPS if (xs := values(runs, arm, SERVER_VALIDATION, last))}
    if len(scores) < len(MAPS):
        return "(Needs both action maps' arms to choose a default.)"
    best = max(scores, key=scores.__getitem__)
    listed = ", ".join(f"{arm} {100 * score:.2f}" for arm, score in scores.items())
    return (f"- **Default action map, chosen on validation only** (the server validation accuracy of the last "
            f"{last} rounds, mean over seeds: {listed}): `federated.action_map={best.removeprefix('page-')}`.")


def claim_lines(runs: Sequence[FederatedRun], last: int) -> list[str]:
    """PAGE's relative gain over the best baseline arm, beside the paper's."""
    present = arms(runs)
    baselines = [a for a in BASELINES if a in present]
    pages = [a for a in present if a.startswith("page") and a != CONTROL]
    if not baselines or not pages:
        return ["(Needs a baseline arm and a PAGE arm.)"]
    lines = []
    for metric, label in ((GLOBAL_ACCURACY, "global"), (LOCAL_ACCURACY, "local")):
        best = max(baselines, key=lambda a: statistics.fmean(values(runs, a, metric, last) or [-math.inf]))
        base = statistics.fmean(values(runs, best, metric, last) or [math.nan])
        ours = {arm: statistics.fmean(values(runs, arm, metric, last) or [math.nan]) for arm in pages}
        gains = ", ".join(f"{arm} {100 * (value / base - 1):+.2f} %" for arm, value in ours.items())
        lines.append(f"- **{label} accuracy:** over the best baseline ({best}, {100 * base:.2f}): {gains}; the paper "
                     f"claims +{PAPER_GAIN[metric]:.2f} % over baselines on its datasets.")
    return lines


def write_csv(runs: Sequence[FederatedRun], path: Path, last: int) -> None:
    common.write_csv_atomic(path, CSV_COLUMNS, (
        [r.algorithm, r.seed, r.rounds, f"{tail_mean(r, GLOBAL_ACCURACY, last):.6f}",
         f"{tail_mean(r, LOCAL_ACCURACY, last):.6f}", f"{r.seconds:.1f}", r.run_id] for r in runs))


def markdown(runs: Sequence[FederatedRun], *, last: int, command: str, source: str) -> str:
    return "\n".join([
        "# PAGE's Synthetic setting: PAGE against FedAvg, FedProx, Ditto and a random-action control", "",
        f"Generated by `{command}` on {dt.date.today().isoformat()} (report code at commit {git_commit()[:10]}) "
        f"from {source}: {len(runs)} finished runs, the newest of each (arm, seed); per-run numbers in "
        "[results.csv](results.csv), each run's exact command in its MLflow `command` tag.", "",
        "- **Setting:** `experiment=federated/page_synthetic` (docs/page.md): 100 clients of the released "
        "generator, a zero-initialised linear softmax classifier, SGD batch 5; FedAvg/FedProx/Ditto at PAGE's upper "
        "bounds (lr 0.1, 20 local epochs; FedProx μ and Ditto λ at conf/federated's defaults); PAGE chooses lr in "
        "[1e-3, 0.1] and epochs in [1, 20] after a 35-round warm-up. `page-random` is PAGE that never leaves "
        "warm-up: random lr, epochs and aggregation weights every round, no agent learning (the control).",
        f"- **Seeds:** {describe([r.seed for r in runs])}; **rounds:** {describe([str(r.rounds) for r in runs])}; "
        f"**runs trained at commit(s):** {describe([r.commit or 'unknown' for r in runs])}",
        f"- **Metrics** (×10⁻²): the mean of the last {last} rounds of each run, then mean ± sample std over seeds. "
        "**Global**: the global model on the pooled global test set (75 rows per client); **local**: each client's "
        "own model after its round's fit on its local test split, plain mean over clients.", "",
        *results_table(runs, last), "",
        "## PAGE against FedAvg and against the random-action control", "",
        "Δ in accuracy points; two-sided Welch t-test over seeds (`–`: fewer than two seeds on a side).", "",
        *tests_table(runs, last), "",
        "## What PAGE's agents chose (last round)", "",
        f"The server agent's validation accuracy (the aggregated model on the clients' validation rows, the mean "
        f"of the last {last} rounds; the only number the default below is chosen on), the "
        "mean over clients of the lr and local epochs each client agent applied in the run's last round, and the "
        "spread of the server agent's aggregation weights (coefficient of variation over clients; 0 = uniform, "
        "FedAvg's weights here, where every client holds the same number of rows); mean ± std over seeds.", "",
        *agents_table(runs, last), "", default_line(runs, last), "",
        "## The paper's headline claim", "",
        *claim_lines(runs, last), "",
        "![global and local accuracy per round](synthetic_curves.png)", ""])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_store_arguments(parser, experiment="m3oe-federated", study="page_synthetic",
                               study_help="value of the runs' `study` tag", out="logs/reports/page_synthetic",
                               command="make page-synthetic-report")
    parser.add_argument("--last", type=int, default=20, help="rounds at the end of a run its figures average")
    args = parser.parse_args(argv)
    if args.last < 1:
        raise SystemExit(f"error: --last={args.last}: give a number of rounds ≥ 1")
    runs = load_runs(args.tracking_uri, args.experiment, args.study or None,
                     histories=(*CURVES, SERVER_VALIDATION, *TIMES))
    if not runs:
        raise SystemExit(f"error: no finished runs with study={args.study!r} in {args.tracking_uri}; "
                         "run `make page-synthetic` first")
    args.out.mkdir(parents=True, exist_ok=True)
    curves_plot(runs, args.out / "synthetic_curves.png", names=arms(runs), curves=CURVES, ylabel="accuracy",
                markers=False)
    write_csv(runs, args.out / "results.csv", args.last)
    common.write_atomic(args.out / "README.md",
                        markdown(runs, last=args.last, command=args.command, source=common.store_source(args)))
    print(f"wrote {args.out / 'README.md'} and results.csv ({len(runs)} runs, {len(arms(runs))} arms)")


if __name__ == "__main__":
    main()
