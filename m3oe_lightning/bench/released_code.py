"""Side by side with the released M3oE code: its trainer's samples/s against our ``released`` preset.

Issue #17 asks for the ratio on the same rows and batch size, measured in one run. The bench never fetches
the released code: with ``--released-code PATH`` (``make bench RELEASED_CODE=PATH``), a local checkout of
Applied-Machine-Learning-Lab/M3oE, it writes that code's input file (``ml-1m.csv``) from the MovieLens-1M
files our reader uses, then alternates ``--pairs`` fresh processes: one training epoch of the released
``CTRTrainer`` on the released ``MDMTRec`` (its own data pipeline, model and defaults, on this CPU), then one
epoch of our ``experiment=m3oe_released`` preset at the same batch size. The median of the per-pair ratios
is the figure (machines are shared and noisy). Without a path it rewrites the report from the last
measurement, saying when and on which commit that was.

Outputs (``--out``, default experiments/bench/): ``released-code.json`` and ``released-code.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from m3oe_lightning.bench import common
from m3oe_lightning.config import report_user_errors
from m3oe_lightning.errors import UserInputError

MODULE = "m3oe_lightning.bench.released_code"
RESULTS, REPORT = "released-code.json", "released-code.md"
TARGET_RATIO = 2.8  # issue #17: our released preset at batch 40,960 against the released code
RELEASED_FILES = ("MDMTRec/trainers/ctr_trainer.py", "examples/run_movielens.py")
# the released run_movielens.py defaults (its argparse), the settings our released preset mirrors
RELEASED_DEFAULTS = {"lr": 1e-2, "lr_darts": 1e-3, "weight_decay": 1e-5, "expert_num": 4,
                     "fcn_dims": [512, 256, 256, 64]}


def check_checkout(path: Path) -> Path:
    """``path`` resolved, when it holds the released code (else a :class:`UserInputError` naming what is missing)."""
    missing = [name for name in RELEASED_FILES if not (path / name).is_file()]
    if missing:
        raise UserInputError(f"--released-code {path}: no {', '.join(missing)} there; point it at a local checkout "
                             "of Applied-Machine-Learning-Lab/M3oE (the bench never downloads it)")
    return path.resolve()


def write_released_input(folder: Path) -> int:
    """``folder/ml-1m.csv`` in the columns the released ``get_movielens_data_rank_multidomain`` reads, from the
    rows our MovieLens-1M reader yields. The released code keeps only the first genre and derives its labels
    as rating > 3 / rating > 4, so a rating of 5 / 4 / 3 from our like / click labels gives it the same
    labels (the reconstruction lacks some ratings, never a label); it drops title and timestamp."""
    from m3oe_lightning.data.paths import find_dataset_folder
    from m3oe_lightning.data.readers.movielens import read_movielens1m
    from m3oe_lightning.data.registry import FILE_DATASETS

    root = find_dataset_folder(None, FILE_DATASETS["movielens1m"].find)
    if root is None:
        raise SystemExit("no MovieLens-1M files found (M3OE_DATA_DIR, ./data or ../shared/data): the side-by-side "
                         "row needs the same rows for both codes")
    frame = read_movielens1m(root)
    frame["rating"] = 3 + frame["click"].astype(int) + frame["like"].astype(int)
    frame = frame.assign(timestamp=0, title="", genres=frame["genre"])
    columns = ["user_id", "movie_id", "rating", "timestamp", "title", "genres", "gender", "age", "occupation", "zip"]
    frame[columns].to_csv(folder / "ml-1m.csv", index=False)
    return len(frame)


def released_epoch(checkout: Path, data_folder: Path, batch_size: int) -> dict[str, Any]:
    """One training epoch of the released trainer in this process (its own loader, model and loss)."""
    import torch

    sys.path.insert(0, str(checkout))
    spec = importlib.util.spec_from_file_location("released_run_movielens", checkout / "examples" / "run_movielens.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from MDMTRec.trainers import CTRTrainer  # type: ignore[import-not-found]
    from MDMTRec.utils.data import DataGenerator  # type: ignore[import-not-found]

    torch.manual_seed(2022)
    dense, sparse, x_train, y_train, x_val, y_val, x_test, y_test, domains = \
        script.get_movielens_data_rank_multidomain("all", "all", str(data_folder))
    loaders = DataGenerator(x_train, y_train).generate_dataloader(
        x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test, batch_size=batch_size)
    model = script.MDMTRec(dense + sparse, domain_num=domains, task_num=2, fcn_dims=RELEASED_DEFAULTS["fcn_dims"],
                           expert_num=RELEASED_DEFAULTS["expert_num"], exp_d=1, exp_t=1, bal_d=1, bal_t=1)
    with tempfile.TemporaryDirectory(prefix="m3oe-released-") as tmp:
        trainer = CTRTrainer(model, optimizer_params={"lr": RELEASED_DEFAULTS["lr"],
                                                      "weight_decay": RELEASED_DEFAULTS["weight_decay"]},
                             optimizer_params_darts={"lr": RELEASED_DEFAULTS["lr_darts"],
                                                     "weight_decay": RELEASED_DEFAULTS["weight_decay"]},
                             n_epoch=1, device="cpu", model_path=tmp + "/")
        start = time.perf_counter()
        trainer.train_one_epoch(loaders[0], domains, 2)
        seconds = time.perf_counter() - start
    return {"train_rows": len(x_train), "train_seconds": seconds, "train_samples_per_s": len(x_train) / seconds,
            "peak_rss_mb": common.peak_rss_mb(), "torch_threads": torch.get_num_threads()}


def ours_epoch(batch_size: int) -> dict[str, Any]:
    """One epoch of our ``released`` preset in a fresh process (throughput bench's own measurement)."""
    from m3oe_lightning.bench import throughput

    return common.run_in_fresh_process(throughput.MODULE, ["--presets", "released", "--epochs", "1",
                                                               f"data.batch_size={batch_size}"])


def measure(checkout: Path, batch_size: int, pairs: int) -> list[dict[str, Any]]:
    """``pairs`` alternations released → ours; each element holds both figures and their ratio."""
    results = []
    with tempfile.TemporaryDirectory(prefix="m3oe-released-data-") as tmp:
        rows = write_released_input(Path(tmp))
        for k in range(pairs):
            released = common.run_in_fresh_process(MODULE, ["--released-code", str(checkout), "--data-folder", tmp,
                                                            "--batch-size", str(batch_size)])
            ours = ours_epoch(batch_size)
            ratio = ours["train_samples_per_s"] / released["train_samples_per_s"]
            print(f"pair {k + 1}/{pairs}: released {released['train_samples_per_s']:,.0f} samples/s, "
                  f"ours {ours['train_samples_per_s']:,.0f} samples/s → ×{ratio:.2f}")
            results.append({"rows": rows, "released": released, "ours": ours, "ratio": ratio})
    return results


def summary(pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ratios = [p["ratio"] for p in pairs]
    return {"ratio_median": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
            "released_samples_per_s_median": statistics.median(p["released"]["train_samples_per_s"] for p in pairs),
            "ours_samples_per_s_median": statistics.median(p["ours"]["train_samples_per_s"] for p in pairs),
            "released_peak_rss_mb_median": statistics.median(p["released"]["peak_rss_mb"] for p in pairs),
            "ours_peak_rss_mb_median": statistics.median(p["ours"]["peak_rss_mb"] for p in pairs)}


def render(result: dict[str, Any], *, fresh: bool, command: str) -> str:
    ctx, s = result["context"], result["summary"]
    state = ("measured in this run" if fresh else
             f"**not measured in this run** (`{command}` had no `--released-code`): the last measurement, "
             f"from {ctx['date']}, is shown")
    met = "met" if s["ratio_median"] >= TARGET_RATIO else "**missed**"
    low, high = s["ratio_range"]
    return "\n".join([
        "# Benchmark: our released preset against the released M3oE code", "",
        "Generated by `m3oe_lightning/bench/released_code.py`; rerun `make bench RELEASED_CODE=<checkout>` (a local "
        "checkout of Applied-Machine-Learning-Lab/M3oE; never downloaded). One training epoch each on the same "
        "MovieLens-1M rows, alternating fresh processes; ratios are per pair, the median is the figure.", "",
        f"- {state}",
        f"- command: `{ctx['command']}`; git commit: {ctx['git_commit']}",
        f"- machine: {ctx['machine'].get('cpu', '?')}, load average before: {common.format_load(ctx['load_before'])}",
        f"- batch size {result['batch_size']:,}, {len(result['pairs'])} pairs, {result['pairs'][0]['rows']:,} rows "
        "(the released code trains on its first 80 %)", "",
        "| pair | released code, samples/s | ours (`experiment=m3oe_released`), samples/s | ratio | released peak RSS "
        "(MB) | ours peak RSS (MB) |",
        "|---:|---:|---:|---:|---:|---:|",
        *(f"| {k} | {p['released']['train_samples_per_s']:,.0f} | {p['ours']['train_samples_per_s']:,.0f} | "
          f"×{p['ratio']:.2f} | {p['released']['peak_rss_mb']:,.0f} | {p['ours']['peak_rss_mb']:,.0f} |"
          for k, p in enumerate(result["pairs"], start=1)), "",
        f"Median ratio **×{s['ratio_median']:.2f}** (range ×{low:.2f}–×{high:.2f}); target ≥ ×{TARGET_RATIO} "
        f"(issue #17): {met}.", "",
    ])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--released-code", type=Path, default=None,
                        help="a local checkout of the released M3oE code (without it: the last measurement)")
    parser.add_argument("--batch-size", type=int, default=40960, help="both codes' batch size (default 40,960)")
    parser.add_argument("--pairs", type=int, default=3, help="alternations released → ours (default 3)")
    parser.add_argument("--out", type=Path, default=Path(common.DEFAULT_OUT))
    parser.add_argument("--data-folder", type=Path, default=None, help=argparse.SUPPRESS)  # a released child
    parser.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.batch_size < 1:
        parser.error("--pairs and --batch-size must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """CLI entry; returns the measurement reported. Bad input: one line, exit code 2."""
    args = parse_args(argv)
    return report_user_errors(lambda a: _main(a, argv), args)


def _main(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any] | None:
    if args.worker_out is not None:  # the released code's child process
        args.worker_out.write_text(json.dumps(released_epoch(check_checkout(args.released_code), args.data_folder,
                                                             args.batch_size)))
        return None
    command = common.command_line(MODULE, argv)
    last = args.out / RESULTS
    if args.released_code is None:
        if not last.is_file():
            print(f"released-code row: no --released-code and no earlier measurement in {last}; nothing to report")
            return None
        result = json.loads(last.read_text())
        common.write_outputs(args.out, {REPORT: render(result, fresh=False, command=command)})
        print(f"released-code row: last measured {result['context']['date']} "
              f"(×{result['summary']['ratio_median']:.2f})")
        return result
    checkout = check_checkout(args.released_code)
    context = common.run_context(command)
    pairs = measure(checkout, args.batch_size, args.pairs)
    result = {"context": context, "batch_size": args.batch_size, "pairs": pairs, "summary": summary(pairs)}
    common.write_outputs(args.out, {RESULTS: result, REPORT: render(result, fresh=True, command=command)})
    return result


if __name__ == "__main__":
    main()
