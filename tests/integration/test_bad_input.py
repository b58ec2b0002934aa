"""Bad settings and data through the entry point: one clear line, exit code ≠ 0, no stack trace."""

from __future__ import annotations

import pytest

from tests.helpers import REPO_ROOT, isolated, run_module


def train_cli(tmp_path, *overrides: str):
    return run_module("m3oe_lightning.train", [*isolated(tmp_path), "trainer.max_epochs=1", *overrides],
                      cwd=REPO_ROOT, timeout=120)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["seed=abc"], "seed='abc' is not an integer"),
        (["data=synthetic", "model.num_domains=4"], "model.num_domains=4 but the data has 3"),
        (["data=movielens100k", "data.root=/nonexistent/place"], "/nonexistent/place"),
        (["data=synthetic", "data.split=sideways"], "data.split"),
        (["data=synthetic", "automl.mode=sometimes"], "automl.mode='sometimes'"),
    ],
    ids=["seed", "domains", "missing-data", "split", "automl"],
)
def test_bad_settings_fail_with_one_line(tmp_path, overrides, expected):
    result = train_cli(tmp_path, *overrides)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1


def test_unknown_model_lists_the_choices(tmp_path):
    result = train_cli(tmp_path, "model=nosuchmodel")
    assert result.returncode != 0
    assert "Could not find 'model/nosuchmodel'" in result.stderr
    assert "m3oe" in result.stderr  # Hydra's list of available options
    assert "Traceback" not in result.stderr


def test_unknown_data_lists_the_choices(tmp_path):
    result = train_cli(tmp_path, "data=nosuchdata")
    assert result.returncode != 0
    assert "movielens1m" in result.stderr and "Traceback" not in result.stderr
