"""One-epoch throughput and memory benchmark: ``python -m m3oe_lightning.bench.throughput`` (``make bench``).

For each preset (``paper``: the default config, batch 4,096; ``released``: ``experiment=m3oe_released``,
batch 40,960) it composes the Hydra config as ``python -m m3oe_lightning.train`` would, builds the
datamodule, model and :class:`MDMTModule` the same way, trains with a real ``lightning.Trainer``
(no logger, no checkpoints, no validation during fit) and then runs ``Trainer.validate`` over the val
split. A callback timestamps Lightning's hooks to split the training time into

* **batch wait**: from the end of one ``training_step`` to the start of the next (the loader's
  ``next()``, which also prefetches the following batch, plus Lightning's per-batch bookkeeping), and
* **step**: ``on_train_batch_start`` → ``on_train_batch_end`` (forward, loss, backward, optimiser
  step, ``self.log`` and, once per epoch in the paper preset, the AutoML architecture step).

Each preset runs in a fresh Python process (``--in-process`` turns that off) so that its peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) is its own. The figures go to ``<out>/results.json`` and
``<out>/README.md`` (default ``experiments/bench``) and a table is printed.

Examples::

    python -m m3oe_lightning.bench.throughput                                  # both presets, MovieLens-1M
    python -m m3oe_lightning.bench.throughput --presets paper --limit-batches 20
    python -m m3oe_lightning.bench.throughput --data synthetic --limit-batches 3 --out /tmp/bench data.rows=4000
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import psutil
import torch
from omegaconf import DictConfig

from m3oe_lightning.bench import common, flops
from m3oe_lightning.bench.common import MB, StepTimer, bench_trainer
from m3oe_lightning.config import report_user_errors
from m3oe_lightning.errors import UserInputError, check_int
from m3oe_lightning.models.m3oe_reference import reference_forward
from m3oe_lightning.training.allocator import DEFAULT_ALLOCATOR
from m3oe_lightning.training.module import count_parameters
from m3oe_lightning.training.system import build_system

PRESETS: dict[str, list[str]] = {
    "paper": [],                                 # the default config: model=m3oe, batch 4,096
    "released": ["experiment=m3oe_released"],    # the released code's settings, batch 40,960
    "mmoe": ["model=mmoe"],                      # the baselines at the default data settings
    "star": ["model=star"],
    # bf16 end to end on fp32 master weights (training/precision.py)
    "paper-bf16": ["trainer.precision=bf16-true"],
    "released-bf16": ["experiment=m3oe_released", "trainer.precision=bf16-true"],
    # bf16 autocast (Lightning's precision plugin): the matmuls in bf16, the rest as it is
    "paper-autocast": ["trainer.precision=bf16-mixed"],
    "released-autocast": ["experiment=m3oe_released", "trainer.precision=bf16-mixed"],
    # glibc's own allocator thresholds (the "before" of allocator=retain: freed large blocks unmapped)
    "paper-glibc": ["allocator=system"],
    "released-glibc": ["experiment=m3oe_released", "allocator=system"],
    "paper-compile": ["callbacks=compile"],      # torch.compile (minutes of compiling: not in the default run)
    "paper-reference": [],                       # the paper preset through m3oe_reference (the "before")
    # evaluation forwards whole eval batches (the "before"); a run setting, outside the run's identity
    "paper-unchunked-eval": ["++eval_chunk_rows=${data.eval_batch_size}"],
}
REFERENCE_PRESETS = {"paper-reference"}  # forward = models/m3oe_reference.py, the literal equations
DEFAULT_PRESETS = [name for name in PRESETS if not name.endswith(("-compile", "-reference", "-unchunked-eval"))]
# issue #5's targets (reported, not enforced)
TARGET_BATCH_SHARE = 0.05       # batch production ≤ 5 % of a training step
TARGET_LOG_SHARE = 0.05         # metric updates and logging ≤ 5 %
TARGET_EVAL_RATIO = 3.0         # evaluation ≥ 3× training samples/s
TARGET_PEAK_RSS_MB = 2 * 1024   # below 2 GiB
TARGET_BF16_SPEEDUP = 2.0       # bf16 end to end ≥ 2× the fp32 throughput of the same preset (#17)
BF16_SUFFIXES = ("-bf16", "-autocast")  # the bf16 presets, named after their fp32 twin
TARGET_TRAIN = {("released", 40960): 25_000, ("paper", 4096): 40_000}  # samples/s
TARGET_MFU = {("released", 40960): 0.50}
TARGET_KERNEL_SHARE = {("released", 40960): 0.10}  # issue #17: the kernel's share of the CPU time < 10 %
BUSY_OTHER_CORES = 0.25        # other processes' mean CPU use above which the README warns
MODULE = "m3oe_lightning.bench.throughput"


# ------------------------------------------------------------------------------------ measuring
class RowCounter(L.Callback):
    """Counts the rows of the validation batches (what ``Trainer.validate`` actually evaluated)."""

    def __init__(self) -> None:
        self.rows = 0
        self.batches = 0

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.rows += int(batch["domain"].shape[0])
        self.batches += 1


class TimedLoader:
    """The datamodule's training loader unchanged, with the time spent in its ``next()`` added up."""

    def __init__(self, loader: Any, timer: StepTimer) -> None:
        self.loader = loader
        self.timer = timer

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        start = time.perf_counter()
        iterator = iter(self.loader)
        self.timer.iterator_seconds += time.perf_counter() - start
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                self.timer.iterator_seconds += time.perf_counter() - start
                return
            self.timer.iterator_seconds += time.perf_counter() - start
            yield batch


def _median_ms(values: Sequence[float]) -> float:
    return 1000 * statistics.median(values) if values else float("nan")


# --------------------------------------------------------------------------------- building
def compose_preset(preset: str, data: str | None = None, overrides: Sequence[str] = (),
                   default_root_dir: str | None = None) -> DictConfig:
    """The config ``python -m m3oe_lightning.train <preset overrides> [data=<data>] <overrides>`` runs."""
    if preset not in PRESETS:
        raise UserInputError(f"unknown preset {preset!r}: use {', '.join(PRESETS)}")
    return common.compose_train(preset_overrides(preset, data, overrides), default_root_dir)


def preset_overrides(preset: str, data: str | None = None, overrides: Sequence[str] = ()) -> list[str]:
    """The preset's own overrides, then ``data=<data>``, then the caller's."""
    return [*PRESETS[preset], *([f"data={data}"] if data else []), *overrides]


# ----------------------------------------------------------------------------------- one preset
def run_preset(preset: str, *, data: str | None = None, overrides: Sequence[str] = (), epochs: int = 1,
               limit_batches: int | None = None, reset_peak: bool = True) -> dict[str, Any]:
    """Train ``epochs`` epochs and validate once for one preset in this process; returns its figures.

    ``reset_peak``: restart the peak-RSS count first (for several presets in one process); a fresh
    process (the default of :func:`main`) reports its whole-life peak instead.
    """
    common.quiet_for_this_process()
    load_before = common.load_average()
    peak_scope = "since preset start" if reset_peak and common.reset_peak_rss() else "whole process"
    rss_start = psutil.Process().memory_info().rss / MB
    with tempfile.TemporaryDirectory(prefix="m3oe-bench-") as root:
        cfg = compose_preset(preset, data, overrides, default_root_dir=root)
        start = time.perf_counter()
        datamodule, model, system = build_system(cfg)
        build_seconds = time.perf_counter() - start
        if preset in REFERENCE_PRESETS:  # same weights and training system, the straightforward forward
            model.forward = functools.partial(reference_forward, model)  # type: ignore[method-assign]

        timer = StepTimer()
        train_loader = datamodule.train_dataloader
        datamodule.train_dataloader = (  # type: ignore[method-assign]
            lambda: TimedLoader(train_loader(), timer))
        limit = {} if limit_batches is None else {"limit_train_batches": limit_batches}
        trainer = bench_trainer(cfg, timer, max_epochs=epochs, limit_val_batches=0, **limit)
        start = time.perf_counter()
        trainer.fit(system, datamodule=datamodule)
        fit_seconds = time.perf_counter() - start
        datamodule.train_dataloader = train_loader  # type: ignore[method-assign]

        counter = RowCounter()
        evaluator = bench_trainer(cfg, counter, limit_val_batches=1.0 if limit_batches is None else limit_batches)
        start = time.perf_counter()
        evaluator.validate(system, datamodule=datamodule, verbose=False)
        eval_seconds = time.perf_counter() - start

        if preset in REFERENCE_PRESETS:  # MFU counts the useful FLOPs: those of the optimized forward
            del model.forward
        utilisation = model_flop_utilisation(system, datamodule, int(cfg.data.batch_size), str(trainer.precision))

    threads = torch.get_num_threads()
    epoch_seconds = sum(timer.epoch_seconds)
    # the model's matmul FLOP/s in the epochs
    achieved = utilisation["flops_per_sample"] * timer.rows / epoch_seconds if epoch_seconds > 0 else float("nan")
    wait, step = sum(timer.waits), sum(timer.steps)
    dataset = datamodule.load()
    return {
        "preset": preset,
        "model": type(model).__name__,
        "precision": str(trainer.precision),
        "overrides": preset_overrides(preset, data, overrides),
        "data": str(cfg.data.name),
        "batch_size": int(cfg.data.batch_size),
        "eval_batch_size": int(cfg.data.eval_batch_size),
        "epochs": epochs,
        "limit_batches": limit_batches,
        "train_rows_in_split": len(dataset.train),
        "val_rows_in_split": len(dataset.val),
        "train_rows": timer.rows,
        "train_batches": len(timer.steps),
        "train_seconds": epoch_seconds,
        "train_samples_per_s": timer.rows / epoch_seconds if epoch_seconds > 0 else float("nan"),
        "eval_rows": counter.rows,
        "eval_batches": counter.batches,
        "eval_seconds": eval_seconds,
        "eval_samples_per_s": counter.rows / eval_seconds if eval_seconds > 0 else float("nan"),
        "eval_method": "Trainer.validate wall time (forward, loss, AUC/logloss metrics, epoch-end compute)",
        "batch_share": wait / (wait + step) if wait + step > 0 else float("nan"),
        "iterator_share": timer.iterator_seconds / (wait + step) if wait + step > 0 else float("nan"),
        "median_wait_ms": _median_ms(timer.waits),
        "median_step_ms": _median_ms(timer.steps),
        "median_forward_ms": _median_ms(timer.forward),
        "median_backward_ms": _median_ms(timer.backward),
        "median_rest_ms": _median_ms(timer.rest),
        "median_optimizer_ms": _median_ms(timer.optimizer),
        # shares of the training time (Σ wait + Σ step): where a step's time goes
        **{f"{name}_share": sum(values) / (wait + step) if wait + step > 0 else float("nan")
           for name, values in (("forward", timer.forward), ("backward", timer.backward),
                                ("optimizer", timer.optimizer))},
        # the rest of a step after backward, minus the optimiser: self.log (the loss's epoch mean; training
        # updates no metrics) and Lightning's bookkeeping; medians × steps, so the once-per-epoch AutoML step
        # (also in rest) is left out, but never more than the measured Σ rest − Σ optimiser (with a handful
        # of steps the median estimate can exceed it, and the shares would then add up to more than 1)
        "log_share": min(max(0.0, statistics.median(timer.rest) - statistics.median(timer.optimizer))
                         * len(timer.rest), max(0.0, sum(timer.rest) - sum(timer.optimizer)))
        / (wait + step) if timer.optimizer and wait + step > 0 else float("nan"),
        # one median batch (wait + step): the steady-state rate without warm-up and the AutoML step
        "median_batch_samples_per_s": int(cfg.data.batch_size) / (statistics.median(timer.waits)
                                                                  + statistics.median(timer.steps))
        if timer.steps else float("nan"),
        "first_wait_ms": 1000 * timer.waits[0] if timer.waits else float("nan"),
        "max_step_ms": 1000 * max(timer.steps) if timer.steps else float("nan"),
        "build_seconds": build_seconds,
        "fit_seconds": fit_seconds,
        "peak_rss_mb": common.peak_rss_mb(),
        "peak_rss_scope": peak_scope,
        "rss_at_start_mb": rss_start,
        "process_cpu_cores": timer.cpu_seconds / epoch_seconds if epoch_seconds > 0 else float("nan"),
        "other_cpu_cores": max(0.0, timer.system_busy_seconds - timer.cpu_seconds) / epoch_seconds
        if epoch_seconds > 0 else float("nan"),
        "steal_cpu_cores": timer.steal_seconds / epoch_seconds if epoch_seconds > 0 else float("nan"),
        "load_before": list(load_before),
        "load_after": common.load_average(),
        "parameters": count_parameters(model),
        **utilisation,
        "mfu": achieved / utilisation["matmul_flops_per_s"],
        "mfu_bf16": achieved / utilisation["matmul_bf16_flops_per_s"] if utilisation["matmul_bf16_flops_per_s"]
        else None,
        "allocator": str(cfg.get("allocator", DEFAULT_ALLOCATOR)),
        # the kernel's share of this process's CPU time in the epochs, and pages faulted in per step
        "kernel_share": timer.kernel_seconds / timer.cpu_seconds if timer.cpu_seconds > 0 else float("nan"),
        "faults_per_step": timer.minor_faults / len(timer.steps) if timer.steps else float("nan"),
        "threads": threads,
        "interop_threads": torch.get_num_interop_threads(),
        "accelerator": type(trainer.accelerator).__name__,
        "device": str(trainer.strategy.root_device),
        "torch": torch.__version__,
        "lightning": L.__version__,
    }


def model_flop_utilisation(system: Any, datamodule: Any, batch_size: int, precision: str) -> dict[str, Any]:
    """The model's matmul FLOPs per training sample (forward + backward, one full batch) and the
    throughput of plain matmuls of the same shapes (fp32; bf16 too for a bf16 run), timed now, in this process."""
    split = datamodule.load().train
    batch = split.rows(torch.arange(min(batch_size, len(split))))
    rows = int(batch["domain"].shape[0])

    def loss_forward_backward() -> None:
        loss, _ = system._loss(batch)
        loss.backward()

    matmuls = flops.record_matmuls(loss_forward_backward)
    system.zero_grad(set_to_none=True)
    fp32 = flops.matmul_floor(matmuls)
    # a bf16 run is also measured against bf16 matmuls of its shapes (~5x the fp32 rate on this CPU)
    bf16 = flops.matmul_floor(matmuls, dtype=torch.bfloat16) if "bf16" in precision else None
    return {"flops_per_sample": flops.flops_per_sample(matmuls, rows),
            "matmul_flops_per_s": fp32.median, "matmul_flops_per_s_range": [fp32.low, fp32.high],
            "matmul_probe_repeats": fp32.repeats,
            "matmul_bf16_flops_per_s": bf16.median if bf16 else None,
            "matmul_bf16_flops_per_s_range": [bf16.low, bf16.high] if bf16 else None}


def _run_isolated(preset: str, *, data: str | None, overrides: Sequence[str], epochs: int,
                  limit_batches: int | None) -> dict[str, Any]:
    """:func:`run_preset` in a fresh ``python -m m3oe_lightning.bench.throughput`` process (its own peak RSS)."""
    args = ["--presets", preset, "--epochs", str(epochs)]
    if limit_batches is not None:
        args += ["--limit-batches", str(limit_batches)]
    if data:
        args += ["--data", data]
    return common.run_in_fresh_process(MODULE, [*args, *overrides])


# ------------------------------------------------------------------------------------- reporting
def _fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _floor(r: dict[str, Any], key: str) -> str:
    """A matmul floor in GFLOP/s with the range of its probe's repeats ("–" when not measured)."""
    if not r.get(key):
        return "–"
    spread = r.get(f"{key}_range")
    return f"{r[key] / 1e9:.1f}" + (f" ({spread[0] / 1e9:.0f}–{spread[1] / 1e9:.0f})" if spread else "")


def _share(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.0f} %"


def results_table(results: Sequence[dict[str, Any]]) -> str:
    rows = ["| preset | model | precision | allocator | batch | parameters | train samples/s | eval samples/s "
            "| batch share | kernel share of CPU | page faults/step | peak RSS (MB) | MFLOP/sample (fwd+bwd) "
            "| fp32 matmul floor, GFLOP/s (range) | MFU | bf16 matmul floor | MFU vs bf16 |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        faults = r.get("faults_per_step")
        rows.append(f"| {r['preset']} | {r['model']} | {r['precision']} | {r.get('allocator', '–')} "
                    f"| {r['batch_size']:,} | {r['parameters']:,} "
                    f"| {_fmt(r['train_samples_per_s'])} | {_fmt(r['eval_samples_per_s'])} "
                    f"| {100 * r['batch_share']:.1f} % | {_share(r.get('kernel_share'))} "
                    f"| {'–' if faults is None else _fmt(faults)} | {_fmt(r['peak_rss_mb'])} "
                    f"| {r['flops_per_sample'] / 1e6:.3f} | {_floor(r, 'matmul_flops_per_s')} "
                    f"| {100 * r['mfu']:.0f} % | {_floor(r, 'matmul_bf16_flops_per_s')} "
                    f"| {_share(r.get('mfu_bf16'))} |")
    return "\n".join(rows)


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _twin(preset: str, batch_size: int, results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The run of ``preset`` at ``batch_size`` in these results (a "before" to set a run against)."""
    return next((r for r in results if r["preset"] == preset and r["batch_size"] == batch_size), None)


def target_rows(results: Sequence[dict[str, Any]]) -> list[str]:
    """One line per issue-#5 target that these results can judge: the target, the figure, met or not."""
    rows = ["| run | target | measured | |", "|---|---|---:|---|"]
    for r in results:
        name = f"{r['preset']} @ {r['batch_size']:,}"
        key = (r["preset"], r["batch_size"])
        if key in TARGET_TRAIN:
            rows.append(f"| {name} | train ≥ {TARGET_TRAIN[key]:,} samples/s | {_fmt(r['train_samples_per_s'])} "
                        f"| {_mark(r['train_samples_per_s'] >= TARGET_TRAIN[key])} |")
        if key in TARGET_MFU:
            rows.append(f"| {name} | MFU ≥ {100 * TARGET_MFU[key]:.0f} % | {100 * r['mfu']:.0f} % "
                        f"| {_mark(r['mfu'] >= TARGET_MFU[key])} |")
        if key in TARGET_KERNEL_SHARE and math.isfinite(r.get("kernel_share", math.nan)):
            rows.append(f"| {name} | kernel < {100 * TARGET_KERNEL_SHARE[key]:.0f} % of CPU time (#17) "
                        f"| {100 * r['kernel_share']:.1f} % | {_mark(r['kernel_share'] < TARGET_KERNEL_SHARE[key])} |")
        before = _twin(f"{r['preset']}-glibc", r["batch_size"], results)  # its allocator=system run
        if before is not None and "faults_per_step" in before and "faults_per_step" in r:
            rows.append(f"| {name} | allocator=retain vs glibc's thresholds ({before['preset']}), train samples/s "
                        f"| {r['train_samples_per_s'] / before['train_samples_per_s']:.2f}× "
                        f"| {_fmt(before['faults_per_step'])} → {_fmt(r['faults_per_step'])} faults/step |")
        # a bf16 preset's fp32 run at the same batch size (paper-bf16 → paper, paper-autocast → paper)
        fp32 = next((r["preset"].removesuffix(s) for s in BF16_SUFFIXES if r["preset"].endswith(s)), None)
        twin = _twin(fp32, r["batch_size"], results) if fp32 is not None else None
        if twin is not None:
            ratio = r["train_samples_per_s"] / twin["train_samples_per_s"]
            rows.append(f"| {name} | {r['precision']} ≥ {TARGET_BF16_SPEEDUP:.0f}× fp32 ({twin['preset']}) "
                        f"| {ratio:.2f}× | {_mark(ratio >= TARGET_BF16_SPEEDUP)} |")
        rows.append(f"| {name} | batch production ≤ {100 * TARGET_BATCH_SHARE:.0f} % | "
                    f"{100 * r['batch_share']:.1f} % | {_mark(r['batch_share'] <= TARGET_BATCH_SHARE)} |")
        if math.isfinite(r.get("log_share", math.nan)):
            rows.append(f"| {name} | metric updates + logging ≤ {100 * TARGET_LOG_SHARE:.0f} % | "
                        f"{100 * r['log_share']:.1f} % | {_mark(r['log_share'] <= TARGET_LOG_SHARE)} |")
        ratio = r["eval_samples_per_s"] / r["train_samples_per_s"]
        rows.append(f"| {name} | eval ≥ {TARGET_EVAL_RATIO:.0f}× train samples/s | {ratio:.2f}× "
                    f"| {_mark(ratio >= TARGET_EVAL_RATIO)} |")
        rows.append(f"| {name} | peak RSS < {TARGET_PEAK_RSS_MB:,} MB | {_fmt(r['peak_rss_mb'])} MB "
                    f"| {_mark(r['peak_rss_mb'] < TARGET_PEAK_RSS_MB)} |")
    return rows


def _targets(results: Sequence[dict[str, Any]]) -> str:
    return "\n".join(target_rows(results))


def render_readme(results: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    machine = meta["machine"]
    load = ", ".join(f"{x:.2f}" for x in meta["load_before"])
    first = results[0]
    timing = ["| preset | batch | train rows | batches | epoch (s) | median wait (ms) | median step (ms) "
              "| forward / backward / optimizer / rest, median (ms) "
              "| share: batch production / forward / backward / optimizer / logging "
              "| first wait (ms) | slowest step (ms) | samples/s of a median batch |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        shares = " / ".join(f"{100 * r.get(k, math.nan):.1f} %" for k in
                            ("batch_share", "forward_share", "backward_share", "optimizer_share", "log_share"))
        timing.append(
            f"| {r['preset']} | {r['batch_size']:,} | {r['train_rows']:,} | {r['train_batches']} "
            f"| {r['train_seconds']:.1f} | {r['median_wait_ms']:.2f} | {r['median_step_ms']:.1f} "
            f"| {r['median_forward_ms']:.1f} / {r['median_backward_ms']:.1f} / "
            f"{r.get('median_optimizer_ms', math.nan):.1f} / {r['median_rest_ms']:.1f} "
            f"| {shares} | {r['first_wait_ms']:.1f} | {r['max_step_ms']:.1f} "
            f"| {_fmt(r['median_batch_samples_per_s'])} |")
    load_rows = ["| preset | batch | threads | CPU cores used: bench / other processes / stolen by host "
                 "| load (1 min) before → after | eval rows | eval batches | eval (s) | build (s) "
                 "| fit (s) |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        load_rows.append(
            f"| {r['preset']} | {r['batch_size']:,} | {r['threads']} "
            f"| {r['process_cpu_cores']:.2f} / {r['other_cpu_cores']:.2f} "
            f"/ {r['steal_cpu_cores']:.2f} "
            f"| {r['load_before'][0]:.2f} → {r['load_after'][0]:.2f} "
            f"| {r['eval_rows']:,} | {r['eval_batches']} "
            f"| {r['eval_seconds']:.2f} | {r['build_seconds']:.2f} | {r['fit_seconds']:.1f} |")
    busiest = max(r["other_cpu_cores"] for r in results)
    busy = (f"\n**The machine was busy:** other processes used up to {busiest:.2f} of its {machine['cores']} "
            f"cores on average during the training epochs, while torch ran {first['threads']} thread(s). "
            "The figures are those of a shared machine and can be far below an idle one's.\n"
            if busiest > BUSY_OTHER_CORES else "")
    limited = "" if first["limit_batches"] is None else (
        f" **Quick run: at most {first['limit_batches']} batches per stage.**")
    hardware = (f"{machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
                f"{machine['memory_gb']} GB RAM, {machine['platform']}")
    software = (f"Python {machine['python']}, torch {first['torch']}, Lightning {first['lightning']}, "
                f"`torch.get_num_threads()` = {first['threads']} (inter-op {first['interop_threads']}), "
                f"{first['accelerator']} ({first['device']})")
    presets = ", ".join(f"`{r['preset']}` ({' '.join(r['overrides']) or 'default config'})" for r in results)
    return f"""# Benchmark: M3oE, {meta['epochs']} epoch(s) on {first['data']}

Generated by `m3oe_lightning/bench/throughput.py`; do not edit by hand, rerun `make bench`. Figures of one run on
one machine.{limited}

- command: `{meta['command']}` (in `{meta['cwd']}`)
- date: {meta['date']}
- git commit: {meta['git_commit']}
- machine: {hardware}
- software: {software}
- load average before the run (1, 5, 15 min): {load}
- presets: {presets}; each {'in its own fresh process' if meta['isolated'] else 'in one shared process'}
{busy}
## Results

{results_table(results)}

Targets of issues #5 and #17 (reported, not enforced; MFU is against the fp32 matmul floor, and a bf16 run's
also against the bf16 floor):

{_targets(results)}

## Where the training time goes

{chr(10).join(timing)}

## Evaluation and machine load

{chr(10).join(load_rows)}

## Method

- Config composed as `python -m m3oe_lightning.train <overrides>` would; datamodule, model and
  `MDMTModule` built as `train.py` builds them; a real `lightning.Trainer` from `conf/trainer`
  with `logger=False`, no checkpointing, no progress bar, `limit_val_batches=0` (no validation during
  fit), `max_epochs={meta['epochs']}`.
- **train samples/s**: rows trained / wall time from `on_train_epoch_start` to `on_train_epoch_end`,
  summed over the epochs (includes the first batches' warm-up and, in the paper preset, the
  once-per-epoch AutoML architecture step).
- **MFU** (model FLOP utilisation): the matmul FLOPs of one full training batch's loss forward +
  backward (every `mm`/`addmm`/`bmm`/`baddbmm`, recorded with its shapes by `m3oe_lightning/bench/flops.py`)
  per sample × train samples/s, divided by the FLOP/s of plain `torch.mm`/`torch.bmm` on exactly that mix
  of shapes, timed in the same process right after training: outputs preallocated, warmed up, the median of
  7 blocks of ≥ 0.25 s (their range in brackets). A bf16 run is also divided by the bf16 floor of its shapes.
- **kernel share of CPU**: this process's system CPU seconds / its user + system CPU seconds in the epochs;
  **page faults/step**: its minor page faults in the epochs / training steps (memory faulted in afresh:
  with `allocator=system`, each large activation is a fresh `mmap`; `allocator=retain` reuses freed blocks).
- **batch share**: Σ batch wait / (Σ batch wait + Σ step). *Batch wait* = end of one training step
  (`on_train_batch_end`) to the start of the next (`on_train_batch_start`), the first one measured from
  `on_train_epoch_start`: the loader's `next()` (Lightning prefetches one batch ahead) plus Lightning's
  per-batch bookkeeping. *Iterator share*: the part spent inside the loader's `next()` alone (the
  loader wrapped by a timer). *Step* = `on_train_batch_start` → `on_train_batch_end`; *forward* runs to
  the first `on_before_backward` (forward, loss, zero_grad), *backward* to `on_after_backward`, *rest*
  to the batch end (Adam step, `self.log`, the AutoML step when due).
- **eval samples/s**: val rows / wall time of `Trainer.validate` over the val split
  (batch {first['eval_batch_size']:,}; forward, loss and the per-(domain, task) AUC/logloss metrics).
- **peak RSS** (MB = 2^20 bytes): `resource.getrusage(RUSAGE_SELF).ru_maxrss` of the process that ran
  the preset ({first['peak_rss_scope']}: imported libraries, the loaded dataset, training, evaluation).
- **CPU cores used**: this process's CPU seconds / epoch wall seconds; *other processes*: every other
  process's CPU seconds on the machine (`/proc/stat`) over the same time; *stolen by host*: time the
  hypervisor ran something else while this (virtual) machine wanted to run.
- Machine-readable figures: `results.json` beside this file.
"""


# ------------------------------------------------------------------------------------------ CLI
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m m3oe_lightning.bench.throughput",
        description="Train M3oE for one epoch per preset; write throughput and peak RSS to <out>/README.md "
                    "and <out>/results.json.")
    parser.add_argument("--presets", nargs="+", choices=list(PRESETS), default=DEFAULT_PRESETS,
                        help=f"presets to run (default: {' '.join(DEFAULT_PRESETS)})")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, metavar="N",
                        help="run every preset at each of these training batch sizes (default: the preset's own)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs per preset (default 1)")
    parser.add_argument("--limit-batches", type=int, default=None, metavar="N",
                        help="train and evaluate on at most N batches (quick runs and tests)")
    parser.add_argument("--data", default=None, help="data config to use instead of movielens1m "
                                                     "(e.g. movielens100k, synthetic)")
    parser.add_argument("--out", default=common.DEFAULT_OUT, help=f"output folder (default {common.DEFAULT_OUT})")
    parser.add_argument("--in-process", action="store_true",
                        help="run every preset in this process (faster start; peak RSS reset per preset "
                             "where Linux allows it) instead of one fresh process per preset")
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)  # a preset's child process
    parser.add_argument("overrides", nargs="*",
                        help="extra Hydra overrides for every preset, e.g. threads=1 data.rows=4000")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """The counts must be positive (a :class:`UserInputError` naming the option otherwise)."""
    check_int("--epochs", args.epochs)
    for batch_size in args.batch_sizes or []:
        check_int("--batch-sizes", batch_size)
    check_int("--limit-batches", args.limit_batches, optional=True)


def run_bench(args: argparse.Namespace, command: str) -> list[dict[str, Any]]:
    """Run the presets, write ``results.json`` and ``README.md`` into ``args.out``, print the table."""
    meta = {**common.run_context(command), "cwd": os.getcwd(), "epochs": args.epochs,
            "isolated": not args.in_process}
    results = []
    for preset in args.presets:
        for batch_size in args.batch_sizes or [None]:
            print(f"bench: {preset}" + (f" @ batch {batch_size:,}" if batch_size else "") + " ...", flush=True)
            overrides = [*([f"data.batch_size={batch_size}"] if batch_size else []), *args.overrides]
            kwargs = {"data": args.data, "overrides": overrides, "epochs": args.epochs,
                      "limit_batches": args.limit_batches}
            result = run_preset(preset, **kwargs) if args.in_process else _run_isolated(preset, **kwargs)
            results.append(result)
    shared = {"date": meta["date"], "git_commit": meta["git_commit"], "command": command,
              "cpu": meta["machine"]["cpu"], "cores": meta["machine"]["cores"],
              "usable_cores": meta["machine"]["usable_cores"], "python": meta["machine"]["python"],
              "bench_load_before": meta["load_before"], "isolated_process": meta["isolated"],
              "target_batch_share": TARGET_BATCH_SHARE, "target_log_share": TARGET_LOG_SHARE,
              "target_eval_ratio": TARGET_EVAL_RATIO, "target_peak_rss_mb": TARGET_PEAK_RSS_MB}
    records = common.json_safe([{**r, **shared} for r in results])
    out = common.write_outputs(args.out, {"results.json": records, "README.md": render_readme(results, meta)})
    print(results_table(results))
    print(f"bench: wrote {out / 'README.md'} and {out / 'results.json'}")
    return records


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """CLI entry; returns the records written to ``results.json``. Bad input: one line, exit code 2."""
    args = parse_args(argv)
    return report_user_errors(lambda a: _main(a, common.command_line(MODULE, argv)), args)


def _main(args: argparse.Namespace, command: str) -> list[dict[str, Any]]:
    check_args(args)
    if args.worker_out:  # child process of _run_isolated: one preset, its figures to a file
        result = run_preset(args.presets[0], data=args.data, overrides=args.overrides, epochs=args.epochs,
                            limit_batches=args.limit_batches, reset_peak=False)
        Path(args.worker_out).write_text(json.dumps(result))  # NaN kept: the parent renders these figures
        return [result]
    return run_bench(args, command)


if __name__ == "__main__":
    main()
