"""Bad settings and data through the entry point: one clear line, exit code ≠ 0, no stack trace.

Refusals that come before torch loads go through ``python -m m3oe_lightning.train``; those after it (data
read, model built, run opened) run ``report_user_errors(objective, cfg)`` in process, what ``main`` runs once
Hydra composed: a subprocess would spend ~10 s importing torch to print one line."""

from __future__ import annotations

import pytest

from m3oe_lightning.train import objective
from tests.helpers import REPO_ROOT, isolated, run_in_process, run_module, seeded_store

pytestmark = pytest.mark.bad_input


def train_cli(tmp_path, *overrides: str):
    return run_module("m3oe_lightning.train", [*isolated(tmp_path), "trainer.max_epochs=1", *overrides],
                      cwd=REPO_ROOT, timeout=120)


def train_entry(tmp_path, capfd, *overrides: str):
    return run_in_process(objective, [*isolated(tmp_path), "trainer.max_epochs=1", *overrides], capfd)


@pytest.mark.parametrize(
    "overrides, expected, through",
    [
        (["seed=abc"], "seed='abc' is not an integer", "cli"),
        (["data=synthetic", "model.num_domains=4"], "model.num_domains=4 but the data has 3", "entry"),
        (["data=movielens100k", "data.root=/nonexistent/place"], "/nonexistent/place", "entry"),
        (["data=synthetic", "data.split=sideways"], "data.split", "entry"),
        (["data=synthetic", "automl.mode=sometimes"], "automl.mode='sometimes'", "entry"),
        (["allocator=jemalloc"], "allocator='jemalloc': use retain", "cli"),
        (["trainer.precision=16-true"], "trainer.precision=16-true: the models keep float32 weights", "cli"),
    ],
    ids=["seed", "domains", "missing-data", "split", "automl", "allocator", "half-precision-weights"],
)
def test_bad_settings_fail_with_one_line(tmp_path, capfd, overrides, expected, through):
    result = train_cli(tmp_path, *overrides) if through == "cli" else train_entry(tmp_path, capfd, *overrides)
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


def test_malformed_ratings_file_names_file_and_line(tmp_path, capfd):
    from tests.unit.test_movielens_readers import write_ml100k

    lines = ["1\t1\t5\t881250949", "2\t2\t3\t891717742", "3\t3\t9\t878887116"]  # rating 9 on line 3
    folder = write_ml100k(tmp_path / "movielens-100k", data=lines)
    result = train_entry(tmp_path, capfd, "data=movielens100k", f"data.root={tmp_path}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert str(folder / "u.data") in line and "line 3" in line
    assert not list((tmp_path / "cache").glob("**/*.pt"))  # nothing half-written in the cache


def test_failure_after_the_run_started_marks_it_failed(tmp_path, capfd):
    import mlflow

    seeded_store(tmp_path)
    result = train_entry(tmp_path, capfd, "data=synthetic", "data.rows=500", "trainer.max_epochs=-5")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "max_epochs" in result.stderr
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["m3oe-lightning"], output_format="list")
    assert run.info.status == "FAILED"
