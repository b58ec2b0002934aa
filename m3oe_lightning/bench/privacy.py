"""What differential privacy costs a federated run: ``python -m m3oe_lightning.bench.privacy``.

FedAvg with M3oE on small synthetic data (``domain`` partition: 3 clients), built in process exactly as
``python -m m3oe_lightning.federate`` builds it, once per ``federated.dp`` setting:

* **time**: the server's aggregation (``aggregate_train``: clipping and noise included) and the whole
  round, median over the rounds, for ``dp.mode`` none / server_fixed / client_fixed; plus one client-side
  clip of a real update (``protect_reply`` on the model's arrays, what ``client_fixed`` adds to each fit);
* **accuracy**: the global model's AUC after the last round for a few noise multipliers.

The figures of one run on one machine; with 3 clients central DP cannot hide one client (``w_max`` ≈ 1/3),
which is the point of the accuracy table: it shows how fast utility falls when few clients share the noise.
Writes ``<out>/privacy.md``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.bench import common
from m3oe_lightning.config import compose
from m3oe_lightning.federated.factory import build_federated
from m3oe_lightning.federated.messages import Arrays, FitRes, Metrics
from m3oe_lightning.federated.privacy import CLIPPED_FRACTION, NOISE_STD, DPSettings, Privacy, protect_reply
from m3oe_lightning.training.quiet import quiet_lightning

MODULE = "m3oe_lightning.bench.privacy"
BASE = ["data=synthetic", "data.rows=6000", "data.num_users=50", "data.num_items=30", "data.batch_size=256",
        "model=m3oe", "federated=fedavg", "federated.partition=domain", "federated.local_epochs=2", "seed=0"]
GLOBAL_AUC = keys.key(keys.GLOBAL, keys.AUC_MEAN)
TIMED_MODES = ("none", "server_fixed", "client_fixed")
NOISE_MULTIPLIERS = (0.0, 0.01, 0.1, 1.0)


def dp_overrides(mode: str, noise_multiplier: float, clipping_norm: float) -> list[str]:
    return [f"federated.dp.mode={mode}", f"federated.dp.noise_multiplier={noise_multiplier}",
            f"federated.dp.clipping_norm={clipping_norm}"]


def measure(overrides: Sequence[str], rounds: int) -> dict[str, Any]:
    """One run of ``rounds`` rounds: per-round server (aggregation) and round seconds, dp metrics, final AUC."""
    with tempfile.TemporaryDirectory(prefix="m3oe-bench-privacy-") as root:
        cfg = compose("federate", [*overrides, f"client_trainer.default_root_dir={root}", f"paths.log_dir={root}"])
        setup = build_federated(cfg)
        strategy, server_seconds = setup.strategy, []
        aggregate_train = strategy.aggregate_train

        def timed(server_round: int, replies: dict[str, FitRes]) -> tuple[Arrays | None, Metrics]:
            start = time.perf_counter()
            out = aggregate_train(server_round, replies)
            server_seconds.append(time.perf_counter() - start)
            return out
        strategy.aggregate_train = timed  # type: ignore[method-assign]
        with quiet_lightning():
            history = [setup.simulation.run_round() for _ in range(rounds)]
        arrays = setup.simulation.state.global_arrays
    return {"server_s": statistics.median(server_seconds),
            "round_s": statistics.median(m["time/round_s"] for m in history),
            "clipped_fraction": statistics.mean(m.get(CLIPPED_FRACTION, 0.0) for m in history),
            "noise_std": history[-1].get(NOISE_STD, 0.0), "global_auc": history[-1][GLOBAL_AUC],
            "arrays": arrays}


def client_clip_ms(arrays: Arrays, clipping_norm: float, repeats: int = 5) -> float:
    """Median milliseconds of one client-side clip of an update of the model's size (``client_fixed``)."""
    generator = torch.Generator().manual_seed(0)
    moved = {n: v + torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
             for n, v in arrays.items()}
    config = Privacy(DPSettings("client_fixed", 0.0, clipping_norm)).fit_config()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        protect_reply(FitRes(arrays=moved, num_examples=1), arrays, config, seed=0)
        seconds.append(time.perf_counter() - start)
    return 1000 * statistics.median(seconds)


def render(timed: dict[str, dict[str, Any]], accuracy: dict[float, dict[str, Any]], clip_ms: float,
           settings: dict[str, Any], meta: dict[str, Any]) -> str:
    none = timed["none"]
    time_rows = "\n".join(
        f"| {mode} | {r['server_s'] * 1000:.1f} | {(r['server_s'] - none['server_s']) * 1000:+.1f} "
        f"| {r['round_s']:.2f} | {r['clipped_fraction']:.2f} | {r['noise_std']:.4g} | {r['global_auc']:.4f} |"
        for mode, r in timed.items())
    auc_rows = "\n".join(
        f"| {z:g} | {r['noise_std']:.4g} | {r['clipped_fraction']:.2f} | {r['global_auc']:.4f} "
        f"| {r['global_auc'] - none['global_auc']:+.4f} |" for z, r in accuracy.items())
    machine, load = meta["machine"], common.format_load(meta["load_before"])
    c, z_timed, rounds = settings["clipping_norm"], settings["timed_noise_multiplier"], settings["rounds"]
    return f"""# Benchmark: the cost of differential privacy (federated.dp)

Generated by `m3oe_lightning/bench/privacy.py`. Figures of one run on one machine (shared with other
work: round times are noisy; the server-side figures are small and stable).

- command: `{meta['command']}`
- date: {meta['date']}; git commit: {meta['git_commit']}
- machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB RAM; load average before: {load}
- setup: `python -m m3oe_lightning.federate {' '.join(BASE)}` (FedAvg, M3oE, 3 clients), {rounds} rounds,
  `federated.dp.clipping_norm={c:g}` (the clients' raw updates have L2 norm ≈ 14-26 here, so clipping binds);
  model of {settings['parameters']:,} float parameters

## Time (noise multiplier {z_timed:g}; medians over {rounds} rounds)

| dp.mode | server aggregation (ms) | vs none (ms) | round (s) | clipped fraction | noise std | global AUC |
|---|---:|---:|---:|---:|---:|---:|
{time_rows}

One client-side clip of an update of this model (`client_fixed`, inside each client's fit):
{clip_ms:.1f} ms.

## Accuracy (`dp.mode=server_fixed`, global AUC after round {rounds})

| noise multiplier z | noise std (z·C·w_max) | clipped fraction | global AUC | vs no DP |
|---:|---:|---:|---:|---:|
{auc_rows}

No DP: global AUC {none['global_auc']:.4f}. z = 0 is clipping alone (no privacy guarantee, the cost of
bounding each update). With 3 clients the noise std is about a third of z·C per coordinate of every
parameter, so any z that gives a meaningful guarantee destroys the model; central DP needs many clients
per round (the std falls as 1/n).
"""


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clipping-norm", type=float, default=5.0)
    parser.add_argument("--noise-multiplier", type=float, default=0.1, help="z of the timed runs")
    parser.add_argument("--out", default=common.DEFAULT_OUT)
    args = parser.parse_args(argv)
    meta = common.run_context(common.command_line(MODULE, argv))
    timed = {mode: measure([*BASE, *dp_overrides(mode, args.noise_multiplier, args.clipping_norm)], args.rounds)
             for mode in TIMED_MODES}
    accuracy = {z: (timed["server_fixed"] if z == args.noise_multiplier else
                    measure([*BASE, *dp_overrides("server_fixed", z, args.clipping_norm)], args.rounds))
                for z in sorted({*NOISE_MULTIPLIERS, args.noise_multiplier})}
    arrays = timed["none"]["arrays"]
    settings = {"rounds": args.rounds, "clipping_norm": args.clipping_norm,
                "timed_noise_multiplier": args.noise_multiplier,
                "parameters": sum(v.numel() for v in arrays.values() if v.is_floating_point())}
    text = render(timed, accuracy, client_clip_ms(arrays, args.clipping_norm), settings, meta)
    out = common.write_outputs(args.out, {"privacy.md": text})
    print(f"bench: privacy; server aggregation {timed['none']['server_s'] * 1000:.1f} ms (none) vs "
          f"{timed['server_fixed']['server_s'] * 1000:.1f} ms (server_fixed); wrote {out / 'privacy.md'}")
    return {"timed": timed, "accuracy": accuracy}


if __name__ == "__main__":
    main()
