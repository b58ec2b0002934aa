"""``python -m m3oe_lightning.bench.released_code``: the side-by-side row's input, its refusal of a wrong
path, and the report of the last measurement when no checkout is given (the released code is not in CI)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from m3oe_lightning.bench import released_code as bench
from m3oe_lightning.data.paths import find_dataset_folder
from m3oe_lightning.data.readers.movielens import read_movielens1m
from m3oe_lightning.data.registry import FILE_DATASETS


def pair(released: float, ours: float) -> dict:
    return {"rows": 1_000_209, "ratio": ours / released,
            "released": {"train_samples_per_s": released, "peak_rss_mb": 2700.0},
            "ours": {"train_samples_per_s": ours, "peak_rss_mb": 2500.0}}


def test_a_path_without_the_released_code_is_one_line_and_exit_code_2(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    (tmp_path / "MDMTRec").mkdir()
    with pytest.raises(SystemExit) as stop:
        bench.main(["--released-code", str(tmp_path), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: --released-code {tmp_path}: no MDMTRec/trainers/ctr_trainer.py")
    assert "never downloads" in line and not (tmp_path / "out").exists()


def test_without_a_checkout_or_an_earlier_measurement_nothing_is_written(tmp_path: Path, capsys):
    assert bench.main(["--out", str(tmp_path)]) is None
    assert "nothing to report" in capsys.readouterr().out and not list(tmp_path.iterdir())


def test_without_a_checkout_the_report_shows_the_last_measurement_and_its_date(tmp_path: Path):
    pairs = [pair(13_000, 28_000), pair(14_000, 27_000), pair(12_500, 30_000)]
    context = {"command": "make bench RELEASED_CODE=/src/M3oE", "date": "2026-11-20 10:00:00 UTC",
               "git_commit": "abc", "machine": {"cpu": "AMD EPYC"}, "load_before": [0.5, 0.5, 0.5]}
    (tmp_path / bench.RESULTS).write_text(json.dumps({"context": context, "batch_size": 40960, "pairs": pairs,
                                                      "summary": bench.summary(pairs)}))
    result = bench.main(["--out", str(tmp_path)])
    ratios = sorted(p["ratio"] for p in pairs)
    assert result is not None and result["summary"]["ratio_median"] == pytest.approx(ratios[1])
    text = (tmp_path / bench.REPORT).read_text()
    assert "**not measured in this run**" in text and "2026-11-20 10:00:00 UTC" in text
    assert f"×{ratios[1]:.2f}" in text and "**missed**" in text  # 2.15 < 2.8
    assert text.count("| 1 | 13,000 | 28,000 |") == 1


def test_the_released_codes_input_carries_our_rows_and_labels(tmp_path: Path):
    root = find_dataset_folder(None, FILE_DATASETS["movielens1m"].find)
    if root is None:
        pytest.skip("MovieLens-1M files are not here")
    rows = bench.write_released_input(tmp_path)
    written = pd.read_csv(tmp_path / "ml-1m.csv")
    ours = read_movielens1m(root)
    assert rows == len(written) == len(ours)
    assert list(written.columns[:6]) == ["user_id", "movie_id", "rating", "timestamp", "title", "genres"]
    # the released code's own label rules (convert_target: click = rating > 3, like = rating > 4)
    assert ((written["rating"] > 3).astype(int).to_numpy() == ours["click"].to_numpy()).all()
    assert ((written["rating"] > 4).astype(int).to_numpy() == ours["like"].to_numpy()).all()
    assert (written["user_id"].to_numpy() == ours["user_id"].to_numpy()).all()
