"""Scoring speed of a trained model: ``python -m m3oe_lightning.bench.serving`` (part of ``make bench``).

Trains M3oE (the paper preset) briefly on MovieLens-1M — speed does not depend on how good the weights are —
then measures, in one run on one machine:

* **batch scoring, file to file**: ``m3oe-predict``'s path (:func:`score_file`) over every ML-1M rating given
  as ``user_id, movie_id`` only (the side features joined from the encoders' lookups), CSV and Parquet in and
  out; rows per second, median of ``--repeats``;
* **HTTP serving**: a real ``mlflow models serve --env-manager local`` process on 127.0.0.1; the p50/p99
  latency of 1-row and 1,000-row ``POST /invocations`` requests (sequential, after warm-up requests);
* **ONNX Runtime vs PyTorch**: the network alone on the same encoded 4,096-row batch, rows per second
  (median of ``--repeats`` timed forwards after warm-up), with the largest logit difference.

Results: ``<out>/serving.json`` and ``<out>/serving.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from m3oe_lightning.bench import common
from m3oe_lightning.bench.processes import free_port, stop_group
from m3oe_lightning.config import compose

MODULE = "m3oe_lightning.bench.serving"
TRAIN = ["trainer.max_epochs=1", "+trainer.limit_train_batches=30", "+trainer.limit_val_batches=2", "test=false",
         "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def train_model(root: Path, overrides: Sequence[str]) -> tuple[str, str]:
    """A short real training run (``python -m m3oe_lightning.train``) into a store under ``root``; its run id
    and tracking URI."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    command = [sys.executable, "-m", "m3oe_lightning.train", *overrides, *TRAIN, f"paths.log_dir={root / 'logs'}",
               f"logger.tracking_uri={uri}"]
    completed = subprocess.run(command, stdout=subprocess.DEVNULL)
    if completed.returncode != 0:
        raise SystemExit(completed.returncode)
    client = MlflowClient(uri)
    experiment = compose("train", list(overrides)).logger.experiment_name
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run.info.run_id, uri


def timed(fn: Any, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def batch_scoring(scorer: Any, rows: pd.DataFrame, root: Path, repeats: int, chunk_rows: int) -> dict[str, Any]:
    from m3oe_lightning.serving.files import score_file

    out: dict[str, Any] = {}
    for kind in ("csv", "parquet"):
        source = root / f"rows.{kind}"
        if kind == "csv":
            rows.to_csv(source, index=False)
        else:
            rows.to_parquet(source, index=False)
        seconds = timed(lambda s=source, k=kind: score_file(scorer, s, root / f"scores.{k}", chunk_rows=chunk_rows),
                        repeats)
        out[kind] = {"rows": len(rows), "seconds": seconds, "rows_per_s": len(rows) / statistics.median(seconds)}
    return out


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()


def http_serving(run_id: str, uri: str, rows: pd.DataFrame, requests: int) -> dict[str, Any]:
    """Latency of a real ``mlflow models serve``: ``requests`` sequential 1-row and 1,000-row POSTs."""
    port = free_port()
    venv_bin = Path(sys.executable).parent
    server = subprocess.Popen([str(venv_bin / "mlflow"), "models", "serve", "-m", f"runs:/{run_id}/model",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                              env={**os.environ, "MLFLOW_TRACKING_URI": uri,
                                   "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        started = time.perf_counter()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.perf_counter() - started > 180:
                    raise SystemExit("mlflow models serve did not start") from None
                time.sleep(0.25)
        startup = time.perf_counter() - started
        url = f"http://127.0.0.1:{port}/invocations"
        out: dict[str, Any] = {"startup_s": startup, "requests": requests}
        for size in (1, 1000):
            body = json.dumps({"dataframe_split": json.loads(rows.head(size).to_json(orient="split", index=False))})
            payload = body.encode()
            for _ in range(5):  # warm-up
                _post(url, payload)
            latencies = np.asarray(timed(lambda p=payload: _post(url, p), requests)) * 1000
            out[f"rows_{size}"] = {"p50_ms": float(np.percentile(latencies, 50)),
                                   "p99_ms": float(np.percentile(latencies, 99)),
                                   "rows_per_s": size * 1000 / float(np.median(latencies))}
        return out
    finally:
        stop_group(server)


def onnx_vs_torch(scorer: Any, rows: pd.DataFrame, root: Path, repeats: int, batch_rows: int) -> dict[str, Any]:
    import onnxruntime

    from m3oe_lightning.serving.onnx_export import export_onnx

    batch, _ = scorer.encoders.encode(rows.head(batch_rows).reset_index(drop=True), str)
    path = export_onnx(scorer.network, root / "model.onnx")
    feeds = {name: batch[name].numpy() for name in ("sparse", "dense", "domain")}

    def torch_forward() -> torch.Tensor:
        with torch.inference_mode():
            return scorer.network(batch)

    for _ in range(3):  # warm-up
        torch_forward()
    torch_seconds = timed(torch_forward, repeats)  # before the session exists: its thread pool never competes
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads as PyTorch
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads sleep, as torch's
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, feeds)
    onnx_seconds = timed(lambda: session.run(None, feeds), repeats)
    difference = float(np.max(np.abs(session.run(None, feeds)[0] - torch_forward().numpy())))
    torch_rate = batch_rows / statistics.median(torch_seconds)
    onnx_rate = batch_rows / statistics.median(onnx_seconds)
    return {"batch_rows": batch_rows, "torch_rows_per_s": torch_rate, "onnx_rows_per_s": onnx_rate,
            "ratio": onnx_rate / torch_rate, "max_abs_difference": difference,
            "torch_seconds": torch_seconds, "onnx_seconds": onnx_seconds}


def measure(overrides: Sequence[str], repeats: int, requests: int, chunk_rows: int) -> dict[str, Any]:
    from m3oe_lightning.data.readers.movielens import read_movielens1m
    from m3oe_lightning.data.registry import FILE_DATASETS
    from m3oe_lightning.serving.scorer import Scorer
    from m3oe_lightning.tracking.models import resolve

    with tempfile.TemporaryDirectory(prefix="m3oe-bench-serving-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        run_id, uri = train_model(root, overrides)
        train_seconds = time.perf_counter() - start
        found = resolve(run_id, uri, root / "download")
        scorer = Scorer.load(found.folder, found.weights)
        ratings = read_movielens1m(FILE_DATASETS["movielens1m"].folder_for(None))[["user_id", "movie_id"]]
        return {
            "overrides": list(overrides), "train_seconds": train_seconds, "threads": torch.get_num_threads(),
            "batch_scoring": batch_scoring(scorer, ratings, root, repeats, chunk_rows),
            "http": http_serving(run_id, uri, ratings, requests),
            "onnx": onnx_vs_torch(scorer, ratings, root, max(repeats, 5) * 4, 4096),
            "chunk_rows": chunk_rows, "torch": torch.__version__,
        }


def render(result: dict[str, Any], meta: dict[str, Any]) -> str:
    machine, load = meta["machine"], common.format_load(meta["load_before"])
    batch, http, onnx = result["batch_scoring"], result["http"], result["onnx"]
    scoring_rows = "\n".join(
        f"| {kind} → {kind} | {b['rows']:,} | {statistics.median(b['seconds']):.2f} | {b['rows_per_s']:,.0f} |"
        for kind, b in batch.items())
    http_rows = "\n".join(
        f"| {size} | {http[f'rows_{size}']['p50_ms']:.1f} | {http[f'rows_{size}']['p99_ms']:.1f} | "
        f"{http[f'rows_{size}']['rows_per_s']:,.0f} |" for size in (1, 1000))
    return f"""# Benchmark: scoring with a trained model

Generated by `m3oe_lightning/bench/serving.py`; rerun `make bench`. Figures of one run on one machine.

- command: `{meta['command']}`
- date: {meta['date']}; git commit: {meta['git_commit']}
- machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB RAM; torch {result['torch']},
  {result['threads']} torch thread(s); load average before: {load}
- model: M3oE `{' '.join(result['overrides']) or '(paper preset)'}` on MovieLens-1M, trained for
  {result['train_seconds']:.0f} s (a short run: speed does not depend on the weights)

## Batch scoring, file to file (`m3oe-predict`)

Every ML-1M rating as `user_id, movie_id` (the user's and movie's attributes joined from the run's
encoders), read, encoded, scored and written {result['chunk_rows']:,} rows at a time; median of
{len(next(iter(batch.values()))['seconds'])} runs.

| format | rows | seconds | rows/s |
|---|---:|---:|---:|
{scoring_rows}

## HTTP: `mlflow models serve --env-manager local` (one worker)

Started in {http['startup_s']:.1f} s; {http['requests']} sequential requests per size after 5 warm-up
requests, `dataframe_split` JSON over 127.0.0.1.

| rows per request | p50 (ms) | p99 (ms) | rows/s at p50 |
|---:|---:|---:|---:|
{http_rows}

## The network alone: ONNX Runtime vs PyTorch

The same encoded {onnx['batch_rows']:,}-row batch; median of {len(onnx['torch_seconds'])} timed forwards.

| engine | rows/s |
|---|---:|
| PyTorch (eager, inference mode) | {onnx['torch_rows_per_s']:,.0f} |
| ONNX Runtime (CPU) | {onnx['onnx_rows_per_s']:,.0f} |

ONNX Runtime / PyTorch: **{onnx['ratio']:.2f}×**; largest logit difference {onnx['max_abs_difference']:.1e}.
"""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each file-to-file scoring")
    parser.add_argument("--requests", type=int, default=200, help="timed HTTP requests per request size")
    parser.add_argument("--chunk-rows", type=int, default=65_536)
    parser.add_argument("--out", default=common.DEFAULT_OUT)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the trained model (default: paper preset)")
    args = parser.parse_args(argv)
    common.quiet_for_this_process()
    meta = common.run_context(common.command_line(MODULE, argv))
    result = measure(args.overrides, args.repeats, args.requests, args.chunk_rows)
    out = common.write_outputs(args.out, {"serving.json": {"meta": meta, "result": result},
                                          "serving.md": render(result, meta)})
    print(f"wrote {out / 'serving.md'}")


if __name__ == "__main__":
    main()
