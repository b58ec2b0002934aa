"""Per-round cost of a federated round: ``python -m m3oe_lightning.bench.federated`` (part of ``make bench``).

Builds the in-process simulation exactly as ``python -m m3oe_lightning.federate`` does (default: FedAvg,
M3oE, MovieLens-1M, ``region`` partition = 10 clients, none held out) and runs a few rounds, timing each
round's parts:

* **local training**: the time inside the clients' Lightning training epochs (``on_train_epoch_start``
  → ``on_train_epoch_end`` of every local fit);
* **trainer overhead**: the rest of each client's ``fit`` call: building a fresh ``Trainer`` and
  datamodule, Lightning's fit setup and teardown, loading the received weights and copying the trained
  ones (what Lightning Fabric could save: it would replace only the Trainer part);
* **evaluation**: each client's personalized model on its local test split and the global model on
  the pooled global test set (server side);
* **server**: aggregation and everything else the runner does (the round time minus the above).

Rounds are evaluated as :meth:`Simulation.run` would evaluate them (``federated.evaluate_every``: every k-th
round and the last), so with ``federated.evaluate_every=k --rounds k`` the figures are those of a long run
that evaluates every k-th round. The table gives the mean round (what a run pays per round on average) and
the share is of the rounds' summed time.

The share of the round that is *not* local training is the figure issues #4 (10 clients) and #13 (100
clients in one process) target: ≤ 15 %. ``make bench`` runs both settings. Results: ``<out>/<name>.json`` and
``<out>/<name>.md`` (``--name``, default ``federated``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.bench import common
from m3oe_lightning.config import compose
from m3oe_lightning.federated.factory import build_federated
from m3oe_lightning.training.quiet import quiet_lightning

MODULE = "m3oe_lightning.bench.federated"
TARGET_OTHER_SHARE = 0.15
# the simulation's per-round figures (seconds of the whole round, of the clients' fits and of evaluation)
ROUND_SECONDS, FIT_SECONDS, EVALUATE_SECONDS = "time/round_s", "time/fit_s", "time/evaluate_s"
CLIENTS_OK, EVALUATED = "round/clients_ok", "round/evaluated"
GLOBAL_AUC = keys.key(keys.GLOBAL, keys.AUC_MEAN)


class EpochClock(L.Callback):
    """Adds up the time inside training epochs over every local fit it is attached to."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds += time.perf_counter() - self._start


def compose_federate(overrides: Sequence[str], root: str) -> Any:
    return compose("federate", [*overrides, f"client_trainer.default_root_dir={root}", f"paths.log_dir={root}"])


def measure(overrides: Sequence[str], rounds: int) -> dict[str, Any]:
    """Build the federated setup and time ``rounds`` rounds; one dict of figures."""
    with tempfile.TemporaryDirectory(prefix="m3oe-bench-fed-") as root:
        cfg = compose_federate(overrides, root)
        start = time.perf_counter()
        setup = build_federated(cfg)
        build_seconds = time.perf_counter() - start
        clock = EpochClock()
        for client in setup.simulation.clients.values():
            make_trainer = client.trainer_fn

            def with_clock(*args: Any, _make=make_trainer, **kwargs: Any) -> L.Trainer:
                return _make(*args, **{**kwargs, "callbacks": [*kwargs.get("callbacks", []), clock]})
            client.trainer_fn = with_clock
        # federated.cohort=true: the round's fits run as one stacked run, timed by its trainer
        cohort = getattr(setup.simulation.transport, "trainer", None)
        per_round = []
        with quiet_lightning():
            for server_round in range(1, rounds + 1):
                clock.seconds = 0.0
                cohort_before = cohort.seconds if cohort is not None else 0.0
                metrics = setup.simulation.run_round(evaluate=setup.simulation.evaluates(server_round, rounds))
                if cohort is not None:
                    clock.seconds += cohort.seconds - cohort_before
                total, fit, evaluate = metrics[ROUND_SECONDS], metrics[FIT_SECONDS], metrics[EVALUATE_SECONDS]
                per_round.append({"round_s": total, "local_training_s": clock.seconds,
                                  "trainer_overhead_s": fit - clock.seconds, "evaluation_s": evaluate,
                                  "server_s": max(0.0, total - fit - evaluate),
                                  "clients": int(metrics[CLIENTS_OK]), "evaluated": bool(metrics[EVALUATED]),
                                  "global_auc": metrics.get(GLOBAL_AUC, float("nan"))})
    parts = ("round_s", "local_training_s", "trainer_overhead_s", "evaluation_s", "server_s")
    mean = {key: statistics.fmean(r[key] for r in per_round) for key in parts}
    evaluated = [r for r in per_round if r["evaluated"]]
    clients = per_round[-1]["clients"]
    return {
        "overrides": list(overrides), "rounds": rounds, "clients": clients,
        "evaluate_every": setup.simulation.evaluate_every, "evaluated_rounds": len(evaluated),
        "train_rows": sum(len(c.data.train) for c in setup.federation.clients),
        "build_seconds": build_seconds, "per_round": per_round, "mean": mean,
        "other_share": 1.0 - mean["local_training_s"] / mean["round_s"],
        "trainer_overhead_per_fit_ms": 1000 * mean["trainer_overhead_s"] / max(1, clients),
        "fit_ms": 1000 * (mean["local_training_s"] + mean["trainer_overhead_s"]) / max(1, clients),
        "evaluation_per_client_ms": 1000 * statistics.fmean(r["evaluation_s"] for r in evaluated) / max(1, clients),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "lightning": L.__version__,
    }


def round_row(server_round: int, r: dict[str, Any]) -> str:
    evaluation, auc = ((f"{r['evaluation_s']:.2f}", f"{r['global_auc']:.4f}") if r["evaluated"]
                       else ("not evaluated", "–"))
    return (f"| {server_round} | {r['round_s']:.2f} | {r['local_training_s']:.2f} | {r['trainer_overhead_s']:.2f} "
            f"| {evaluation} | {r['server_s']:.2f} | {auc} |")


def render(result: dict[str, Any], meta: dict[str, Any]) -> str:
    m = result["mean"]
    share = lambda key: f"{100 * m[key] / m['round_s']:.1f} %"  # noqa: E731
    ok = "met" if result["other_share"] <= TARGET_OTHER_SHARE else "**missed**"
    rows = "\n".join(round_row(k, r) for k, r in enumerate(result["per_round"], start=1))
    machine, load = meta["machine"], common.format_load(meta["load_before"])
    every = result["evaluate_every"]
    evaluated = ("every round evaluated" if every == 1 else
                 f"`federated.evaluate_every={every}`: {result['evaluated_rounds']} evaluated")
    return f"""# Benchmark: one federated round

Generated by `m3oe_lightning/bench/federated.py`; rerun `make bench`. Figures of one run on one machine.

- command: `{meta['command']}`
- date: {meta['date']}; git commit: {meta['git_commit']}
- machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB RAM; torch {result['torch']},
  Lightning {result['lightning']}, {result['threads']} torch thread(s); load average before: {load}
- setup: `python -m m3oe_lightning.federate {' '.join(result['overrides'])}`: {result['clients']} clients,
  {result['train_rows']:,} local training rows per round in all (one local epoch each)

## Mean round ({result['rounds']} rounds, {evaluated})

| part | seconds | share of the round |
|---|---:|---:|
| local training (inside the clients' training epochs) | {m['local_training_s']:.2f} | {share('local_training_s')} |
| trainer overhead (fresh Trainer per fit, weights) | {m['trainer_overhead_s']:.2f} | {share('trainer_overhead_s')} |
| evaluation (personal and global models) | {m['evaluation_s']:.2f} | {share('evaluation_s')} |
| server (aggregation, bookkeeping) | {m['server_s']:.2f} | {share('server_s')} |
| **round** | {m['round_s']:.2f} | 100 % |

Everything but local training: **{100 * result['other_share']:.1f} %** of a round (target ≤
{100 * TARGET_OTHER_SHARE:.0f} % with {result['clients']} clients: {ok}). A client's local fit costs
{result['fit_ms']:.0f} ms, of which the Lightning Trainer is {result['trainer_overhead_per_fit_ms']:.0f} ms beyond
its training epochs (that, not the training loop, is all Lightning Fabric could save); evaluation costs
{result['evaluation_per_client_ms']:.0f} ms per client and evaluated round (its personalized model on its test split,
and its share of the global model's pooled test and validation sets).

## Every round

| round | round (s) | local training (s) | trainer overhead (s) | evaluation (s) | server (s) | global AUC |
|---:|---:|---:|---:|---:|---:|---:|
{rows}
"""


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=common.DEFAULT_OUT)
    parser.add_argument("--name", default="federated", help="the results' file name: <out>/<name>.{md,json}")
    parser.add_argument("overrides", nargs="*", default=None,
                        help="federate overrides (default: data=movielens1m federated=fedavg "
                             "federated.partition=region)")
    args = parser.parse_args(argv)
    overrides = args.overrides or ["data=movielens1m", "federated=fedavg", "federated.partition=region"]
    meta = common.run_context(common.command_line(MODULE, argv))
    result = measure(overrides, args.rounds)
    out = common.write_outputs(args.out, {f"{args.name}.json": {**result, **meta},
                                          f"{args.name}.md": render(result, meta)})
    print(f"bench: federated round ({result['clients']} clients) {result['mean']['round_s']:.2f} s (mean), "
          f"{100 * result['other_share']:.1f} % not local training; wrote {out / f'{args.name}.md'}")
    return result


if __name__ == "__main__":
    main()
