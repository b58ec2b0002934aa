"""``python -m m3oe_lightning.bench``: it writes sane figures (speed targets are the bench's business)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from m3oe_lightning import bench

# small synthetic data, a few batches per stage, one thread (fast on a shared machine)
QUICK = ["--data", "synthetic", "--limit-batches", "3", "data.rows=2000", "data.batch_size=128", "threads=1"]


@pytest.fixture(autouse=True)
def keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def check_record(record: dict, preset: str) -> None:
    assert record["preset"] == preset and record["data"] == "synthetic" and record["batch_size"] == 128
    assert record["train_batches"] == 3 and record["train_rows"] == 3 * 128
    assert record["eval_rows"] > 0
    for key in ("train_samples_per_s", "eval_samples_per_s", "peak_rss_mb", "median_step_ms", "parameters"):
        assert math.isfinite(record[key]) and record[key] > 0, key
    for key in ("batch_share", "iterator_share"):
        assert 0.0 <= record[key] <= 1.0, key
    assert record["iterator_share"] <= record["batch_share"]
    assert record["threads"] == 1 and record["torch"] == torch.__version__
    assert record["cores"] >= 1 and record["cpu"] and record["git_commit"] and record["date"]


def test_bench_writes_readme_and_json_for_both_presets(tmp_path: Path):
    args = ["--in-process", *QUICK[:4], "--out", str(tmp_path), *QUICK[4:]]
    returned = bench.main(args)

    records = json.loads((tmp_path / "results.json").read_text())
    assert records == json.loads(json.dumps(returned))
    assert [r["preset"] for r in records] == ["paper", "released"]
    for record in records:
        check_record(record, record["preset"])
        assert "--limit-batches 3" in record["command"] and "m3oe_lightning.bench" in record["command"]
    assert records[1]["parameters"] > records[0]["parameters"]  # released: 4 shared experts, LayerNorms

    readme = (tmp_path / "README.md").read_text()
    assert "python -m m3oe_lightning.bench --in-process --data synthetic --limit-batches 3" in readme
    for text in ("train samples/s", "eval samples/s", "batch share", "peak RSS", torch.__version__,
                 "| paper | 128 |", "| released | 128 |", records[0]["git_commit"].split()[0]):
        assert text in readme, text


def test_each_preset_runs_in_its_own_process_by_default(tmp_path: Path):
    [record] = bench.main(["--presets", "paper", *QUICK[:4], "--out", str(tmp_path), *QUICK[4:]])
    check_record(record, "paper")
    assert record["isolated_process"] and record["peak_rss_scope"] == "whole process"
    assert "each in its own fresh process" in (tmp_path / "README.md").read_text()


def test_bad_override_is_one_line_and_exit_code_2(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--in-process", "--data", "no_such_data", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "results.json").exists()
