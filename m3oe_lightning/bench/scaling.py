"""Scaling benchmark of the memory-mapped data path: ``python -m m3oe_lightning.bench.scaling``
(``make bench-scaling``).

For each table size (default 1M, 10M and 50M synthetic rows) a fresh Python process (so the peak RSS is
that size's own) composes the paper preset (``model=m3oe``, batch 4,096) with ``data=synthetic
data.storage=memmap`` and measures

* **encode time**: generating + encoding the table chunk by chunk into memory-mapped files (the
  streaming writer, both passes; the table folder is fresh, so nothing comes from a cache);
* **train samples/s**: a real ``lightning.Trainer`` over the same number of batches at every size
  (default 200 × 4,096 rows; rows / wall time of batches 11..N, i.e. after warm-up; the whole-epoch
  figure, which includes warm-up and the end-of-epoch AutoML step, is recorded too);
* **loader samples/s**: the training loader alone over the same batches (the data path without the model);
* **peak RSS**: ``ru_maxrss`` of the process (encode + train), and of the encode phase alone.

The tables are written under ``--work-dir`` (default: the system temp folder; 50M rows ≈ 1.2 GB) and
deleted afterwards. Results: ``<out>/scaling.json``, ``<out>/scaling.md`` and ``<out>/scaling.png``
(cost vs rows), with the command, the machine and its load average (``os.getloadavg()``) around each size.

Examples::

    python -m m3oe_lightning.bench.scaling                              # 1M, 10M, 50M rows
    python -m m3oe_lightning.bench.scaling --sizes 20000,50000 --batches 5 --out /tmp/scaling
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from m3oe_lightning.bench import common

MODULE = "m3oe_lightning.bench.scaling"
DEFAULT_SIZES = (1_000_000, 10_000_000, 50_000_000)
WARMUP_BATCHES = 10
TARGET_TRAIN_DROP = 0.15  # train samples/s at the largest size within 15 % of the smallest's
TARGET_RSS_RATIO = 2.0    # peak RSS at the largest size below 2x the smallest's
TARGET_LINEAR = 0.25      # encode seconds per row at every size within 25 % of the linear fit's slope


# ------------------------------------------------------------------------------------------ worker
def measure(rows: int, *, batches: int, batch_size: int, work_dir: Path, chunk_rows: int,
            overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Encode ``rows`` synthetic rows into a fresh memmap table under ``work_dir``, then train; in-process."""
    import lightning as L
    import torch

    from m3oe_lightning.config import build
    from m3oe_lightning.training.system import build_system

    common.quiet_for_this_process()
    load_before = common.load_average()
    busy0, cpu0 = common.system_busy_seconds(), common.process_cpu_seconds()
    wall0 = time.perf_counter()
    table_dir = Path(tempfile.mkdtemp(prefix="m3oe-scaling-", dir=work_dir))
    try:
        cfg = common.compose_train([  # the paper preset: the default config
            "data=synthetic", f"data.rows={rows}", "data.storage=memmap", f"data.memmap_dir={table_dir}",
            f"data.batch_size={batch_size}", f"data.chunk_rows={chunk_rows}", *overrides,
        ], default_root_dir=str(table_dir / "run"))
        datamodule = build(cfg.data)
        start = time.perf_counter()
        datamodule.load()
        encode_seconds = time.perf_counter() - start
        encode_peak = common.peak_rss_mb()
        table_bytes = sum(p.stat().st_size for p in table_dir.rglob("*.npy"))

        datamodule, model, system = build_system(cfg)  # reopens the finished table (no second encode)
        loader = datamodule.train_dataloader()
        start, seen = time.perf_counter(), 0
        for k, batch in enumerate(loader):
            if k == batches:
                break
            seen += int(batch["domain"].shape[0])
        loader_seconds = time.perf_counter() - start

        timer = common.StepTimer()
        trainer = common.bench_trainer(cfg, timer, max_epochs=1, limit_train_batches=batches, limit_val_batches=0)
        trainer.fit(system, datamodule=datamodule)
        steady = [w + s for w, s in zip(timer.waits[WARMUP_BATCHES:], timer.steps[WARMUP_BATCHES:])]
        epoch_seconds = sum(timer.epoch_seconds)
        dataset = datamodule.load()
        wall = time.perf_counter() - wall0
        busy = common.system_busy_seconds() - busy0
        cpu = common.process_cpu_seconds() - cpu0
        return {
            "rows": rows,
            "train_rows_in_split": len(dataset.train),
            "table_mb": table_bytes / common.MB,
            "encode_seconds": encode_seconds,
            "encode_us_per_row": 1e6 * encode_seconds / rows,
            "encode_peak_rss_mb": encode_peak,
            "batches": len(timer.steps),
            "batch_size": batch_size,
            "train_samples_per_s": batch_size * len(steady) / sum(steady) if steady else float("nan"),
            "train_samples_per_s_epoch": timer.rows / epoch_seconds if epoch_seconds > 0 else float("nan"),
            "median_step_ms": 1000 * statistics.median(timer.steps) if timer.steps else float("nan"),
            "median_wait_ms": 1000 * statistics.median(timer.waits) if timer.waits else float("nan"),
            "loader_samples_per_s": seen / loader_seconds if loader_seconds > 0 else float("nan"),
            "peak_rss_mb": common.peak_rss_mb(),
            "load_before": load_before,
            "load_after": common.load_average(),
            "other_cpu_cores": max(0.0, busy - cpu) / wall if wall > 0 else float("nan"),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "lightning": L.__version__,
        }
    finally:
        shutil.rmtree(table_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------ report
def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``y = slope * x + intercept``."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else float("nan")
    return slope, my - slope * mx


def verdicts(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The three targets of the issue, smallest vs largest size."""
    small, large = results[0], results[-1]
    drop = 1 - large["train_samples_per_s"] / small["train_samples_per_s"]
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    slope, intercept = linear_fit([r["rows"] for r in results], [r["encode_seconds"] for r in results])
    worst = max(abs(r["encode_seconds"] - (slope * r["rows"] + intercept)) / max(r["encode_seconds"], 1e-9)
                for r in results)
    return {
        "train_drop": drop, "train_met": drop <= TARGET_TRAIN_DROP,
        "rss_ratio": ratio, "rss_met": ratio < TARGET_RSS_RATIO,
        "encode_slope_us_per_row": 1e6 * slope, "encode_intercept_s": intercept,
        "encode_worst_residual": worst, "encode_met": worst <= TARGET_LINEAR,
    }


def render_markdown(results: Sequence[dict[str, Any]], meta: dict[str, Any], v: dict[str, Any]) -> str:
    machine = meta["machine"]
    rows = ["| rows | table (MB) | encode (s) | encode (µs/row) | encode peak RSS (MB) | train samples/s "
            "(batches 11..N) | train samples/s (whole epoch) | loader samples/s | peak RSS (MB) "
            "| load avg before → after | other processes' CPU (cores) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in results:
        rows.append(
            f"| {r['rows']:,} | {r['table_mb']:,.0f} | {r['encode_seconds']:.1f} | {r['encode_us_per_row']:.2f} "
            f"| {r['encode_peak_rss_mb']:,.0f} | {r['train_samples_per_s']:,.0f} "
            f"| {r['train_samples_per_s_epoch']:,.0f} | {r['loader_samples_per_s']:,.0f} "
            f"| {r['peak_rss_mb']:,.0f} | {r['load_before'][0]:.2f} → {r['load_after'][0]:.2f} "
            f"| {r['other_cpu_cores']:.2f} |")
    met = {True: "met", False: "**missed**"}
    small, large = results[0]["rows"], results[-1]["rows"]
    return "\n".join([
        "# Scaling of the memory-mapped data path",
        "",
        f"Generated {meta['date']} by `{meta['command']}` (git {meta['git']}).",
        "",
        f"- machine: {machine['cpu']}, {machine['usable_cores']} usable of {machine['cores']} cores, "
        f"{machine['memory_gb']} GB RAM; {meta['threads']} torch threads; torch {meta['torch']}, "
        f"Lightning {meta['lightning']}",
        f"- load average (1/5/15 min) at start: {common.format_load(meta['load_start'])}; at end: "
        f"{common.format_load(meta['load_end'])} — the machine is shared, so absolute rates move "
        "with other users' work (the last column is their CPU use during each size's run)",
        f"- each size: a fresh process; `data=synthetic data.storage=memmap`, paper preset (M3oE, batch "
        f"{meta['batch_size']:,}), {meta['batches']} training batches at every size; tables under "
        f"`{meta['work_dir']}`, deleted afterwards. The table was just written, so training reads it from "
        "the page cache (the machine has the RAM for it), not from disk.",
        "",
        "![cost vs rows](scaling.png)",
        "",
        *rows,
        "",
        "## Targets",
        "",
        "| target | result |",
        "|---|---|",
        f"| train samples/s at {large:,} rows within 15 % of {small:,} | {met[v['train_met']]} "
        f"({results[-1]['train_samples_per_s']:,.0f} vs {results[0]['train_samples_per_s']:,.0f}: "
        f"{-100 * v['train_drop']:+.1f} %) |",
        f"| peak RSS at {large:,} rows below 2× {small:,} | {met[v['rss_met']]} (×{v['rss_ratio']:.2f}) |",
        f"| encode time linear in rows | {met[v['encode_met']]} (fit: {v['encode_slope_us_per_row']:.2f} µs/row "
        f"+ {v['encode_intercept_s']:.1f} s; largest deviation from the fit {100 * v['encode_worst_residual']:.0f} "
        "% of a size's time) |",
        "",
        "## How it is measured",
        "",
        "- **encode**: `datamodule.load()` on an empty table folder: pass 1 generates every block for the "
        "vocabularies, train min/max and logit moments; the label cut-offs come from the first 1M rows; pass 2 "
        "regenerates and appends each chunk to the `.npy` files (sequential writes), then `meta.json` and an "
        "atomic rename. At 1M rows the cut-off sample is the whole table (one extra pass), hence the higher "
        "µs/row there.",
        f"- **train samples/s**: {meta['batch_size']:,} × batches / wall time of batches "
        f"{WARMUP_BATCHES + 1}..{meta['batches']} (the bench's step timer: loader `next()` + training step); "
        "*whole epoch* adds warm-up and the end-of-epoch AutoML step.",
        "- **loader samples/s**: iterating the same training loader alone (block shuffle, 64k-row blocks).",
        "- **peak RSS**: `getrusage(RUSAGE_SELF).ru_maxrss` of the size's process (encode + train).",
        "",
    ])


def plot(results: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["rows"] / 1e6 for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    slope, intercept = linear_fit(xs, [r["encode_seconds"] for r in results])
    ax = axes[0]  # linear axes: "linear in rows" is a straight line through the points
    ax.plot(xs, [r["encode_seconds"] for r in results], "o", label="measured")
    ax.plot([0, max(xs)], [intercept, intercept + slope * max(xs)], "--", label=f"fit: {slope:.2f} s per 1M rows")
    ax.set_title("encode time (s)")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax = axes[1]
    ax.plot(xs, [r["train_samples_per_s"] for r in results], "o-", label="training (M3oE, batch 4,096)")
    ax.plot(xs, [r["loader_samples_per_s"] for r in results], "s--", label="loader alone")
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_title("samples/s")
    ax.legend()
    ax = axes[2]
    ax.plot(xs, [r["peak_rss_mb"] for r in results], "o-", label="encode + train")
    ax.plot(xs, [r["encode_peak_rss_mb"] for r in results], "s--", label="encode phase")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_title("peak RSS (MB)")
    ax.legend()
    for ax in axes:
        ax.set_xlabel("rows (millions)")
        ax.grid(alpha=0.3)
    fig.suptitle("memory-mapped synthetic table: cost vs rows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ driver
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in DEFAULT_SIZES), help="comma-separated rows")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--chunk-rows", type=int, default=262_144)
    parser.add_argument("--work-dir", default=tempfile.gettempdir(), help="where the tables are written")
    parser.add_argument("--out", default=common.DEFAULT_OUT)
    parser.add_argument("--render", help="only re-render scaling.md/.png from this scaling.json")
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)  # internal: one size, in this process
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    work_dir = Path(args.work_dir)
    settings = {"batches": args.batches, "batch_size": args.batch_size, "work_dir": work_dir,
                "chunk_rows": args.chunk_rows, "overrides": args.overrides}
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        write_report(saved["results"], saved["meta"], Path(args.out))
        return
    if args.worker_out:
        (size,) = sizes
        Path(args.worker_out).write_text(json.dumps(measure(size, **settings)))  # NaN kept for the parent
        return

    context = common.run_context(common.command_line(MODULE, argv))
    results = []
    for size in sizes:
        results.append(common.run_in_fresh_process(MODULE, [
            "--sizes", str(size), "--batches", str(args.batches), "--batch-size", str(args.batch_size),
            "--chunk-rows", str(args.chunk_rows), "--work-dir", str(work_dir), *args.overrides]))
        r = results[-1]
        print(f"{size:>12,} rows: encode {r['encode_seconds']:.1f} s, train {r['train_samples_per_s']:,.0f} "
              f"samples/s, loader {r['loader_samples_per_s']:,.0f} samples/s, peak RSS {r['peak_rss_mb']:,.0f} MB, "
              f"load {r['load_before'][0]:.2f}→{r['load_after'][0]:.2f}", flush=True)
    meta = {"date": common.utc_now("%Y-%m-%d %H:%M UTC"), "command": context["command"],
            "git": context["git_commit"], "machine": context["machine"], "load_start": context["load_before"],
            "load_end": common.load_average(), "cpu_count": psutil.cpu_count(), "batches": args.batches,
            "batch_size": args.batch_size, "work_dir": str(work_dir), "threads": results[0]["threads"],
            "torch": results[0]["torch"], "lightning": results[0]["lightning"]}
    write_report(results, meta, Path(args.out))


def write_report(results: Sequence[dict[str, Any]], meta: dict[str, Any], out_dir: Path) -> None:
    """``scaling.json`` (figures + verdicts), ``scaling.md`` and ``scaling.png`` under ``out_dir``."""
    v = verdicts(results)
    common.write_outputs(out_dir, {"scaling.json": {"meta": meta, "results": results, "targets": v},
                                   "scaling.md": render_markdown(results, meta, v)})
    plot(results, out_dir / "scaling.png")
    print(f"wrote {out_dir / 'scaling.md'}, scaling.json, scaling.png", flush=True)


if __name__ == "__main__":
    main()
