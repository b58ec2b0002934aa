"""MLflow → the federated comparison report (``make federated-report``).

Reads finished ``m3oe-federate`` runs (never log files) tagged with the sweep's ``study`` and writes into
``--out``:

- ``README.md``: per algorithm, the last round's personalization (``personal/auc_mean`` and its
  test-row-weighted form), generalization (``global/auc_mean``) and held-out (``heldout/auc_mean``) AUC as
  mean ± std over seeds; the global model's AUC also as a mean over clients (``global/auc_client_mean``) and
  the personalization gap (personal minus global) on both bases; rounds to reach 99% of the final global AUC;
  wall time per run and the share of a round spent in local training; two-sided Welch t-tests of every arm
  against FedAvg, of each PAGE arm against its random-action control and of each row-sparse arm against its
  dense one; and, for runs that logged ``global_val/auc_mean``, the same test metrics at
  the round whose global validation AUC was highest (chosen on validation only; a reference such as
  ``centralized`` that overfits by its last round is judged at its best round too);
- ``results.csv``: one line per run used (the newest finished run of each (algorithm, seed));
- ``federated_curves.png``: global and personal AUC per round, mean over seeds, one line per algorithm.

``python -m m3oe_lightning.reports.federated --study federated --out experiments/federated``
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from m3oe_lightning import metric_keys as keys  # noqa: E402
from m3oe_lightning.reports import common  # noqa: E402
from m3oe_lightning.reports.common import describe, fmt, fmt_p, mean_std, table_head, table_row, welch_p  # noqa: E402
from m3oe_lightning.tracking.archive import origin_id  # noqa: E402
from m3oe_lightning.tracking.provenance import git_commit  # noqa: E402

# the report's row order; algorithms not listed follow in name order
ORDER = ("centralized", "local", "fedavg", "fedprox", "ditto", "page", "fedavg+domain_experts",
         "page+domain_experts")
PERSONAL_AUC, GLOBAL_AUC = keys.key(keys.PERSONAL, keys.AUC_MEAN), keys.key(keys.GLOBAL, keys.AUC_MEAN)
FINAL = (PERSONAL_AUC, keys.key(keys.PERSONAL, keys.AUC_MEAN_WEIGHTED), GLOBAL_AUC, keys.GLOBAL_AUC_CLIENT_MEAN,
         keys.key(keys.HELDOUT, keys.AUC_MEAN))
# personalization gap = personal/auc_mean minus the global model's AUC, on two bases: pooled rows (unlike: AUC does
# not decompose over clients) and per-client means (like-for-like; runs older than the metric have none)
GAPS = (GLOBAL_AUC, keys.GLOBAL_AUC_CLIENT_MEAN)
CURVES = (GLOBAL_AUC, PERSONAL_AUC)
# the round a run is judged at in the validation table: the first one of highest global validation AUC
SELECT_ON = keys.key(keys.GLOBAL_VAL, keys.AUC_MEAN)
SELECTED = (GLOBAL_AUC, keys.GLOBAL_AUC_CLIENT_MEAN, keys.key(keys.HELDOUT, keys.AUC_MEAN))
ROUND_SECONDS, FIT_SECONDS = "time/round_s", "time/fit_s"  # the simulation's timing of each round
TIMES = (ROUND_SECONDS, FIT_SECONDS)
BYTES_SENT = "comm/bytes_sent"
CSV_COLUMNS = ("algorithm", "model", "partition", "seed", "rounds", *FINAL, "seconds", "run_id")


@dataclass
class FederatedRun:
    """One finished federated run as the report uses it."""

    algorithm: str
    seed: str
    run_id: str  # the id it was trained under (an imported run: its archive file's name)
    metrics: dict[str, float]
    model: str = "?"
    partition: str = "?"
    data: str = "?"
    commit: str = ""
    seconds: float = math.nan
    # metric → its value in round k at index k − 1 (NaN in a round that did not log it: federated.evaluate_every)
    history: dict[str, list[float]] = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        return max((len(v) for v in self.history.values()), default=0)

    def rounds_to(self, metric: str, share: float = 0.99) -> float:
        """First round whose ``metric`` reaches ``share`` × its last value (NaN without a history)."""
        curve = self.history.get(metric, [])
        if not curve:
            return math.nan
        target = share * curve[-1]
        return float(next(k for k, v in enumerate(curve, start=1) if v >= target))

    def best_round(self, metric: str = SELECT_ON) -> int | None:
        """The first round (from 1) where ``metric`` peaks among the rounds that logged it; None without any."""
        curve = self.history.get(metric, [])
        logged = [k for k, v in enumerate(curve) if math.isfinite(v)]
        return max(logged, key=lambda k: (curve[k], -k)) + 1 if logged else None

    def at_round(self, metric: str, server_round: int) -> float:
        """``metric`` in round ``server_round`` (NaN where the run did not log it then)."""
        curve = self.history.get(metric, [])
        return curve[server_round - 1] if 0 < server_round <= len(curve) else math.nan


def load_runs(tracking_uri: str, experiment: str, study: str | None,
              histories: Sequence[str] = (*CURVES, *TIMES, BYTES_SENT, SELECT_ON, *SELECTED)) -> list[FederatedRun]:
    """The newest finished run of each (algorithm, seed) among runs tagged ``study`` (any, when None), with the
    per-round ``histories`` of the metrics it logged."""
    latest = common.newest_finished_runs(tracking_uri, experiment, lambda run: run_key(run.data.tags),
                                         tags={"study": study})
    client = MlflowClient(tracking_uri)
    runs = []
    for (algorithm, seed), run in latest.items():
        info, tags = run.info, run.data.tags
        history = {key: common.metric_by_step(client, info.run_id, key)
                   for key in histories if key in run.data.metrics}
        runs.append(FederatedRun(
            algorithm=algorithm, seed=seed, run_id=origin_id(run), metrics=dict(run.data.metrics),
            model=tags.get("model", "?"), partition=tags.get("partition", "?"), data=tags.get("data", "?"),
            commit=common.short_commit(run), seconds=common.run_seconds(run), history=history))
    return sorted(runs, key=lambda r: (algorithm_order(r.algorithm), r.seed))


def run_key(tags: dict[str, str]) -> tuple[str, str] | None:
    """(algorithm, seed) of a federated run; None for any other run."""
    return (tags["algorithm"], tags.get("seed", "?")) if tags.get("task") == "federate" and tags.get("algorithm") \
        else None


def algorithm_order(name: str, order: Sequence[str] = ORDER) -> tuple[int, str]:
    return (order.index(name), "") if name in order else (len(order), name)


def algorithms(runs: Sequence[FederatedRun], order: Sequence[str] = ORDER) -> list[str]:
    """The runs' algorithms (a report's rows) in ``order``; those not listed follow by name."""
    return sorted({r.algorithm for r in runs}, key=lambda name: algorithm_order(name, order))


def final_values(runs: Sequence[FederatedRun], algorithm: str, metric: str) -> list[float]:
    return [r.metrics[metric] for r in runs
            if r.algorithm == algorithm and math.isfinite(r.metrics.get(metric, math.nan))]


def gaps(runs: Sequence[FederatedRun], algorithm: str, basis: str) -> list[float]:
    """Each run's ``personal/auc_mean`` minus its global AUC on ``basis`` (runs lacking either left out)."""
    out = []
    for r in runs:
        personal, global_auc = r.metrics.get(PERSONAL_AUC, math.nan), r.metrics.get(basis, math.nan)
        if r.algorithm == algorithm and math.isfinite(personal) and math.isfinite(global_auc):
            out.append(personal - global_auc)
    return out


def fit_share(run: FederatedRun) -> float:
    """Share of the run's round time spent in the clients' local fits."""
    total = sum(run.history.get(ROUND_SECONDS, []))
    return sum(run.history.get(FIT_SECONDS, [])) / total if total > 0 else math.nan


def cell(xs: Sequence[float]) -> str:
    return fmt(*mean_std(xs)) if xs else "–"


def average(xs: Sequence[float], pattern: str) -> str:
    return pattern.format(statistics.fmean(xs)) if xs else "–"


def results_table(runs: Sequence[FederatedRun]) -> list[str]:
    lines = table_head(["algorithm", "seeds", "personal AUC", "personal AUC (weighted)", "global AUC",
                        "global AUC (client mean)", "held-out AUC", "gap personal − global (pooled)",
                        "gap personal − global (client mean)", "rounds to 99% of final global AUC",
                        "seconds per run", "local fits share of a round"])
    for name in algorithms(runs):
        mine = [r for r in runs if r.algorithm == name]
        to99 = [r.rounds_to(GLOBAL_AUC) for r in mine if GLOBAL_AUC in r.history]
        seconds = [r.seconds for r in mine if math.isfinite(r.seconds)]
        shares = [s for s in (fit_share(r) for r in mine) if math.isfinite(s)]
        cells = [cell(final_values(runs, name, m)) for m in FINAL]
        cells += [cell(gaps(runs, name, basis)) for basis in GAPS]
        cells += [average(to99, "{:.1f}"), average(seconds, "{:.0f}"), average([100 * s for s in shares], "{:.0f}%")]
        lines.append(table_row([name, str(len(mine)), *cells]))
    return lines


def selected_table(runs: Sequence[FederatedRun]) -> list[str]:
    """Per algorithm with a global model: the test metrics at each run's best round on global validation AUC
    (mean ± std over the seeds that logged it), beside its last round's global AUC."""
    chosen = [r for r in runs if r.best_round() is not None]
    if not chosen:
        return [f"(No run of this study logged `{SELECT_ON}`: runs made before the server scored the validation "
                "union have none; rerun them to fill this table.)"]
    lines = table_head(["algorithm", "seeds", "round chosen (median)", "global val AUC", "global AUC",
                        "global AUC (client mean)", "held-out AUC", "global AUC, last round"])
    for name in algorithms(chosen):
        mine = [r for r in chosen if r.algorithm == name]
        picks = [(r, r.best_round()) for r in mine]
        cells = [cell([r.at_round(SELECT_ON, k) for r, k in picks])]
        cells += [cell([v for v in (r.at_round(m, k) for r, k in picks) if math.isfinite(v)]) for m in SELECTED]
        cells.append(cell([r.metrics[GLOBAL_AUC] for r in mine if GLOBAL_AUC in r.metrics]))
        lines.append(table_row([name, str(len(mine)), f"{statistics.median(k for _, k in picks):g}", *cells]))
    return lines


def delta_cells(runs: Sequence[FederatedRun], name: str, reference: str) -> list[str]:
    """Per metric of ``FINAL``: ``name``'s mean minus ``reference``'s (×10⁻²) with Welch's two-sided p."""
    row = []
    for metric in FINAL:
        ours, base = final_values(runs, name, metric), final_values(runs, reference, metric)
        if not ours or not base:
            row.append("–")
            continue
        delta = statistics.fmean(ours) - statistics.fmean(base)
        row.append(f"{100 * delta:+.2f} ({fmt_p(welch_p(ours, base))})")
    return row


def comparison_table(runs: Sequence[FederatedRun], reference: str = "fedavg") -> list[str]:
    """Each other algorithm minus ``reference`` (Δ ×10⁻² of the mean) with Welch's two-sided p."""
    names = [n for n in algorithms(runs) if n not in (reference, "centralized")]
    if reference not in algorithms(runs) or not names:
        return [f"(Needs {reference} runs and at least one other algorithm.)"]
    lines = table_head([f"vs {reference}", *[f"Δ {m} (p)" for m in FINAL], "Δ seconds per run"])
    for name in names:
        secs = [[r.seconds for r in runs if r.algorithm == n and math.isfinite(r.seconds)] for n in (name, reference)]
        time_cell = (f"{statistics.fmean(secs[0]) - statistics.fmean(secs[1]):+.0f} s "
                     f"(×{statistics.fmean(secs[0]) / statistics.fmean(secs[1]):.2f})" if all(secs) else "–")
        lines.append(table_row([name, *delta_cells(runs, name, reference), time_cell]))
    return lines


SPARSE, RANDOM_CONTROL = "+sparse", "page-random"


def control_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """The like-for-like pairs a reader needs beside the FedAvg table: each PAGE arm against the random-action
    control with the same suffix (do the agents beat random actions?) and each ``+sparse`` arm against the same
    arm without it (what row-sparse aggregation changes); only pairs whose both sides ran."""
    present = set(names)
    pairs = []
    for name in names:
        if name.startswith("page-") and not name.startswith(RANDOM_CONTROL):
            control = RANDOM_CONTROL + name[name.index("+"):] if "+" in name else RANDOM_CONTROL
            if control in present:
                pairs.append((name, control))
    pairs += [(name, name.removesuffix(SPARSE)) for name in names
              if name.endswith(SPARSE) and name.removesuffix(SPARSE) in present]
    return pairs


def controls_table(runs: Sequence[FederatedRun]) -> list[str]:
    """One row per pair of :func:`control_pairs`: Δ of the means (×10⁻²) with Welch's two-sided p."""
    pairs = control_pairs(algorithms(runs))
    if not pairs:
        return ["(No PAGE arm beside its random-action control and no `+sparse` arm beside its dense one.)"]
    lines = table_head(["arm", "against", *[f"Δ {m} (p)" for m in FINAL]])
    lines += [table_row([name, reference, *delta_cells(runs, name, reference)]) for name, reference in pairs]
    return lines


def curves_plot(runs: Sequence[FederatedRun], path: Path, *, names: Sequence[str] | None = None,
                curves: Sequence[str] = CURVES, ylabel: str = "AUC", markers: bool = True) -> None:
    """One panel per metric of ``curves``: its per-round mean over seeds, one line per algorithm of ``names``
    (all, in report order, when None); ``markers`` dots each round (off for long runs)."""
    names = algorithms(runs) if names is None else list(names)
    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.2), squeeze=False)
    colors = {name: plt.cm.tab10(k % 10) for k, name in enumerate(names)}  # one color per algorithm
    style = {"marker": "o", "markersize": 3} if markers else {}
    for ax, metric in zip(axes[0], curves):
        for name in names:
            histories = [r.history[metric] for r in runs if r.algorithm == name and r.history.get(metric)]
            if not histories:
                continue
            length = min(len(c) for c in histories)
            points = [(k + 1, statistics.fmean(c[k] for c in histories)) for k in range(length)]
            points = [(x, y) for x, y in points if math.isfinite(y)]  # rounds the runs did not score: no point
            ax.plot([x for x, _ in points], [y for _, y in points], color=colors[name],
                    label=f"{name} (n={len(histories)})", **style)
        ax.set_title(f"{metric} per round (mean over seeds)")
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_csv(runs: Sequence[FederatedRun], path: Path) -> None:
    common.write_csv_atomic(path, CSV_COLUMNS, (
        [r.algorithm, r.model, r.partition, r.seed, r.rounds,
         *(f"{r.metrics[m]:.6f}" if m in r.metrics else "" for m in FINAL), f"{r.seconds:.1f}", r.run_id]
        for r in runs))


DATA_NAMES = {"movielens1m": "MovieLens-1M", "movielens100k": "MovieLens-100K"}
PARTITIONS = {"region": "one client per first digit of the user's zip code",
              "dirichlet": "users dealt to clients by a Dirichlet draw over domains",
              "domain": "one client per domain"}


def markdown(runs: Sequence[FederatedRun], *, command: str, source: str) -> str:
    return "\n".join([
        f"# Federated comparison on {describe([DATA_NAMES.get(r.data, r.data) for r in runs])}", "",
        f"Generated by `{command}` on {dt.date.today().isoformat()} (report code at commit {git_commit()[:10]}) "
        f"from {source}: {len(runs)} finished runs, the newest of each (algorithm, seed). Per-run numbers are in "
        "[results.csv](results.csv); each run's exact command is its MLflow `command` tag.", "",
        f"- **Data:** {describe([r.data for r in runs])}; **partition:** {describe([r.partition for r in runs])} "
        f"({'; '.join(sorted({PARTITIONS.get(r.partition, r.partition) for r in runs}))}); held-out clients, "
        "where a run has them, never train; each client's rows split 0.7/0.1/0.2 into local train/val/test",
        f"- **Model:** {describe([r.model for r in runs])}; **seeds:** {describe([r.seed for r in runs])}; "
        f"**rounds:** {describe([str(r.rounds) for r in runs])}",
        f"- **Runs trained at commit(s):** {describe([r.commit or 'unknown' for r in runs])}", "",
        "Metrics are those of the last round, AUC ×10⁻² (mean of the per-(domain, task) AUCs), mean ± sample "
        "std over seeds. **personal**: each client's personalized model on its own local test split, plain mean "
        "over clients (weighted: by test rows); **global**: the global model on the union of the training "
        "clients' test splits (pooled rows); **global (client mean)**: the global model on each training "
        "client's test split, plain mean over clients, the basis personal AUC uses (AUC does not decompose over "
        "clients, so only this gap is like-for-like; the pooled gap is shown beside it); **held-out**: the global "
        "model on the held-out clients' test splits. `local` has "
        "no global model. `centralized` is the reference: M3oE trained on the pooled rows of the training "
        "clients (one client, one epoch per round), scored on the same test rows; its personal AUC is its "
        "global AUC. `+domain_experts` is federated M3oE (each client keeps its domain experts, gates and "
        "towers); `+sparse`: row-sparse embedding aggregation (`federated.sparse_embeddings=true`); "
        "`page-released` / `page-affine`: PAGE with either action map, `page-random` its random-action control "
        "(random lr, epochs and weights every round, no agent learning). "
        "Seconds per run are wall time on the machine that ran the sweep (shared with other jobs; "
        "compare ratios, not absolutes).", "",
        "## Results", "", *results_table(runs), "",
        "## Against FedAvg", "",
        "Difference of the means (×10⁻²) and a two-sided Welch t-test over seeds (`–`: fewer than two seeds "
        "on a side; `\\*`: p < 0.05).", "", *comparison_table(runs), "",
        "## Against the controls", "",
        "Each PAGE arm against its random-action control at the same aggregation (do the agents beat random "
        "actions?), and each row-sparse arm against the same arm without it; Δ of the means (×10⁻²), two-sided "
        "Welch t-test over seeds.", "", *controls_table(runs), "",
        "## Selected on validation", "",
        f"Each run judged at its round of highest `{SELECT_ON}` (the global model on the union of the training "
        "clients' validation splits; no test row chooses), AUC ×10⁻², mean ± sample std over seeds.", "",
        *selected_table(runs), "",
        "## Curves", "", "![global and personal AUC per round](federated_curves.png)", "",
    ])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_store_arguments(parser, experiment="m3oe-federated", study="federated",
                               study_help="value of the runs' `study` tag ('' = any federated run)",
                               out="logs/reports/federated", command="make federated")
    args = parser.parse_args(argv)

    runs = load_runs(args.tracking_uri, args.experiment, args.study or None)
    if not runs:
        raise SystemExit(f"error: no finished federated runs (study={args.study!r}) in {args.tracking_uri}; "
                         "run `make federated` first")
    args.out.mkdir(parents=True, exist_ok=True)
    curves_plot(runs, args.out / "federated_curves.png")
    write_csv(runs, args.out / "results.csv")
    source = common.store_source(args)
    common.write_atomic(args.out / "README.md", markdown(runs, command=args.command, source=source))
    print(f"wrote {args.out / 'README.md'} and results.csv ({len(runs)} runs, {len(algorithms(runs))} algorithms)")


if __name__ == "__main__":
    main()
