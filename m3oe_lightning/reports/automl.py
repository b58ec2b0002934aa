"""M3oE's AutoML arms and controls side by side, and the default arm chosen on validation (issue #12, part d).

The paper tunes its fusion weights α/β by "AutoML"; how (and how often) decides whether they move at all. This
report reads the FINISHED runs of one M3oE configuration (by default those made from a tuned config: the runs'
``tuned`` tag) and names each run's arm from its ``automl.*`` parameters — ``paper`` (alternate, one step after
each epoch on a training batch), ``joint`` (the released code), ``darts`` (a step on a validation batch after
every training step) and the controls ``frozen`` (the initial value, untrained) and ``off`` (0.5) — so a run made
for another study (part b's M3oE row is the ``paper`` arm) counts without being rerun. It writes ``README.md``,
``results.csv`` and ``automl_fusion.png`` (α/β after each epoch, mean ± std over seeds, per arm):

- per arm: seeds, the best mean validation AUC (the only number the choice reads), test AUC, pooled test AUC,
  best epoch, final α/β, wall time;
- each learning arm against the controls (Welch t-tests on validation and on test);
- the default: the learning arm with the highest mean validation AUC, and whether it is separated from the
  runner-up.

``python -m m3oe_lightning.reports.automl --tuned paper-m3oe-movielens1m-paper
--out experiments/movielens/automl-paper``
(``make automl-report``)
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from mlflow.tracking import MlflowClient

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.reports import common
from m3oe_lightning.reports.common import fmt, fmt_p, mean_std, table_head, table_row, welch_p
from m3oe_lightning.reports.paper import ARCH_PREFIX, RunRecord, fusion_plot, record_of

# arm → what it does; the learning arms train α/β, the controls do not
LEARNING_ARMS = {
    "paper": "the paper as written: one Adam step of α/β (lr `automl.lr`) on a training batch after each epoch",
    "joint": "the released code: α/β also in the model optimiser, every step at the model lr",
    "darts": "first-order DARTS: one step of α/β on a validation batch after every training step",
}
CONTROLS = {
    "frozen": "control: α/β kept at their initial value (sigmoid(1) = 0.731), trained by nobody",
    "off": "control, the paper's \"w/o AutoML\": every fusion weight fixed at 0.5",
}
DESCRIPTIONS = {**LEARNING_ARMS, **CONTROLS}
ARM_ORDER = tuple(DESCRIPTIONS)
VAL = keys.VAL_AUC_MEAN_BEST
TEST = keys.TEST_AUC_MEAN
POOLED = keys.TEST_AUC_POOLED_MEAN
ALPHA = 0.05  # significance level of the "separated" statements (two-sided Welch t-test)


def arm_of(params: Mapping[str, str]) -> str:
    """The arm a run's ``automl.*`` parameters make; a schedule outside the presets is named by its settings."""
    mode, every, source = (params.get(f"automl.{name}", default) for name, default in
                           (("mode", "alternate"), ("every", "epoch"), ("source", "train")))
    if mode in ("frozen", "off"):
        return mode
    preset = {("alternate", "epoch", "train"): "paper", ("alternate", "1", "val"): "darts",
              ("joint", "epoch", "train"): "joint"}.get((mode, every, source))
    return preset or f"{mode} every {every} on {source}"


def arm_order(arm: str) -> tuple[int, str]:
    return (ARM_ORDER.index(arm), "") if arm in ARM_ORDER else (len(ARM_ORDER), arm)


def load_arms(tracking_uri: str, experiment: str, tags: Mapping[str, str | None]) -> list[RunRecord]:
    """The newest finished run of each (arm, seed) among the runs whose tags equal ``tags``; ``row`` holds the arm."""
    latest = common.newest_finished_runs(
        tracking_uri, experiment, lambda run: (arm_of(run.data.params), run.data.params.get("seed"))
        if TEST in run.data.metrics else None, tags=tags)
    client = MlflowClient(tracking_uri)
    records = [record_of(client, run, arm) for (arm, _), run in latest.items()]
    return sorted(records, key=lambda r: (arm_order(r.row), int(r.seed) if r.seed.isdigit() else 0, r.seed))


def metric(records: Sequence[RunRecord], arm: str, name: str) -> list[float]:
    return [r.metrics[name] for r in records if r.row == arm and math.isfinite(r.metrics.get(name, math.nan))]


def best_epoch(record: RunRecord) -> int:
    """The epoch (from 1) of the best mean validation AUC; 0 without a validation history."""
    curve = record.val_curve
    return max(range(len(curve)), key=curve.__getitem__) + 1 if curve else 0


def fusion_keys(records: Sequence[RunRecord]) -> list[str]:
    """The ``arch/*`` fusion weights any record has a history of."""
    return sorted({k for r in records for k in r.arch})


def arms_in(records: Sequence[RunRecord]) -> list[str]:
    return sorted({r.row for r in records}, key=arm_order)


def weight_cell(values: Sequence[float]) -> str:
    """A fusion weight to three decimals (they move by thousandths under the paper's schedule)."""
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{mean:.3f}" + (f" ± {std:.3f}" if len(values) > 1 else "")


def arm_table(records: Sequence[RunRecord]) -> list[str]:
    fusion = fusion_keys(records)
    lines = table_head(["arm", "what it does", "seeds", "val AUC (selection)", "test AUC", "pooled test AUC",
                        "best epoch (median) / trained", *[f"final {k.removeprefix(ARCH_PREFIX)}" for k in fusion],
                        "wall min (mean)"])
    for arm in arms_in(records):
        runs = [r for r in records if r.row == arm]
        finals = [weight_cell([r.arch[k][-1] for r in runs if r.arch.get(k)]) for k in fusion]
        lines.append(table_row([
            f"`{arm}`", DESCRIPTIONS.get(arm, "outside the presets"), str(len(runs)),
            fmt(*mean_std(metric(records, arm, VAL))), fmt(*mean_std(metric(records, arm, TEST))),
            fmt(*mean_std(metric(records, arm, POOLED))),
            f"{statistics.median(best_epoch(r) for r in runs):g} / {statistics.median(r.epochs for r in runs):g}",
            *finals, f"{statistics.fmean(r.train_seconds for r in runs) / 60:.1f}"]))
    return lines


def delta_cells(records: Sequence[RunRecord], arm: str, other: str, name: str) -> list[str]:
    ours, theirs = metric(records, arm, name), metric(records, other, name)
    if not ours or not theirs:
        return ["–", "–"]
    return [fmt(statistics.fmean(ours) - statistics.fmean(theirs)), fmt_p(welch_p(ours, theirs))]


def controls_table(records: Sequence[RunRecord]) -> list[str]:
    """Each learning arm against each control (and the controls against each other)."""
    present = arms_in(records)
    pairs = [(a, c) for a in present if a not in CONTROLS for c in CONTROLS if c in present]
    if {"frozen", "off"} <= set(present):
        pairs.append(("frozen", "off"))
    if not pairs:
        return ["(Neither control has runs yet: run `make automl-arms`.)"]
    lines = table_head(["arm", "against", "Δ val AUC", "p (val)", "Δ test AUC", "p (test)"])
    for arm, other in pairs:
        lines.append(table_row([f"`{arm}`", f"`{other}`", *delta_cells(records, arm, other, VAL),
                                *delta_cells(records, arm, other, TEST)]))
    return lines


def choice(records: Sequence[RunRecord]) -> tuple[str | None, list[str]]:
    """The learning arm with the highest mean validation AUC and the sentences that say how firmly it won."""
    scored = sorted(((statistics.fmean(v), arm) for arm in LEARNING_ARMS if (v := metric(records, arm, VAL))),
                    reverse=True)
    if not scored:
        return None, ["No learning arm has finished runs yet."]
    (best_mean, best), rest = scored[0], scored[1:]
    seeds = len(metric(records, best, VAL))
    text = [f"**Default chosen on validation: `{best}`** (mean best validation AUC {fmt(best_mean)} over {seeds} "
            f"seed(s); the test split played no part)."]
    if rest:
        runner_mean, runner = rest[0]
        p = welch_p(metric(records, best, VAL), metric(records, runner, VAL))
        separated = math.isfinite(p) and p < ALPHA
        text.append(f"It is {'separated from' if separated else '**not separated** from'} the runner-up `{runner}` "
                    f"(Δ {fmt(best_mean - runner_mean)}, Welch p = {fmt_p(p)}): "
                    + ("the choice is a real difference on this data." if separated
                       else "on this data the arms are interchangeable, and the choice is a tie-break."))
    controls = [(statistics.fmean(v), c) for c in CONTROLS if (v := metric(records, c, VAL))]
    beaten_by = [c for m, c in controls if m >= best_mean]
    if beaten_by:
        text.append("A control scores at least as high on validation (" + ", ".join(f"`{c}`" for c in beaten_by)
                    + "): training α/β does not help here.")
    return best, text


def markdown(records: Sequence[RunRecord], *, command: str, source: str, fusion: bool) -> str:
    _, chosen = choice(records)
    lrs = common.describe([r.lr for r in records])
    lines = [
        "# M3oE's AutoML arms and controls", "",
        f"Generated by `m3oe_lightning/reports/automl.py` from {source}; do not edit by hand. Rerun: `{command}` "
        "(resumable: finished runs are skipped; a run of the same configuration made for another study counts "
        "once, as its arm).", "",
        f"- **Data:** {common.describe([r.data for r in records])}; **split:** "
        f"{common.describe([r.split for r in records])}; **epochs:** at most "
        f"{common.describe([r.max_epochs for r in records])}, early stopping on the mean validation AUC; test "
        "metrics are those of the best-validation checkpoint",
        f"- **Settings:** Adam lr {lrs} for every arm (tuned for M3oE with the `paper` arm: the other arms get "
        "that arm's lr, not their own)",
        f"- **Runs trained at commit(s):** {common.describe([r.commit for r in records])}", "",
        "AUCs are ×10⁻², mean ± sample std over seeds; `val AUC` is each run's best mean validation AUC over "
        "epochs (its checkpoint), the only number the choice below reads.", "",
        "## Arms", "", *arm_table(records), "",
        "## Against the controls", "",
        "Δ = arm − control, means over seeds; p: two-sided Welch t-test. If a learning arm does not beat `frozen`, "
        "whatever it gains over `off` comes from the initial value 0.731, not from learning α/β.", "",
        *controls_table(records), "",
        "## The default arm", "", *chosen, "",
        "## Fusion weights", "",
    ]
    lines += (["α (shared vs specific) and β (own vs other experts) after each epoch, mean ± std over seeds:", "",
               "![fusion weights per arm](automl_fusion.png)", ""] if fusion
              else ["(No `arch/*` fusion-weight histories among these runs.)", ""])
    return "\n".join(lines)


def write_csv(records: Sequence[RunRecord], path: Path) -> None:
    fusion = fusion_keys(records)
    common.write_csv_atomic(path, ["arm", "seed", "split", "lr", "epochs", "best_epoch", VAL, TEST, POOLED,
                                   *[f"{k}_final" for k in fusion], "train_seconds", "run_id"], (
        [r.row, r.seed, r.split, r.lr, r.epochs, best_epoch(r),
         *[f"{r.metrics.get(m, math.nan):.6f}" for m in (VAL, TEST, POOLED)],
         *[f"{r.arch[k][-1]:.6f}" if r.arch.get(k) else "" for k in fusion], f"{r.train_seconds:.1f}", r.run_id]
        for r in records))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_store_arguments(parser, experiment="m3oe-lightning", study="",
                               study_help="value of the runs' `study` tag ('' = any study)",
                               out="logs/reports/automl", command="make automl-arms")
    parser.add_argument("--tuned", default="paper-m3oe-movielens1m-paper",
                        help="value of the runs' `tuned` tag: the tuned M3oE config the arms share ('' = any)")
    args = parser.parse_args(argv)
    records = load_arms(args.tracking_uri, args.experiment,
                        {"study": args.study or None, "tuned": args.tuned or None})
    if not records:
        raise SystemExit(f"error: no finished M3oE runs with tuned={args.tuned!r} in {args.tracking_uri}; "
                         "run `make automl-arms` first")
    args.out.mkdir(parents=True, exist_ok=True)
    fusion = fusion_plot(records, args.out / "automl_fusion.png")
    write_csv(records, args.out / "results.csv")
    source = common.store_source(args) + (f", tag `tuned` = `{args.tuned}`" if args.tuned else "")
    common.write_atomic(args.out / "README.md", markdown(records, command=args.command, source=source, fusion=fusion))
    print(f"wrote {args.out / 'README.md'} and results.csv ({len(records)} runs, {len(arms_in(records))} arms)")


if __name__ == "__main__":
    main()
