"""A study's runs exported to files and imported into a fresh store: the report reads the same, the study
resumed there skips what already ran."""

from __future__ import annotations

import gzip

import mlflow
import pytest

from m3oe_lightning.errors import UserInputError
from m3oe_lightning.federate import federate
from m3oe_lightning.reports import federated as report_federated
from m3oe_lightning.tracking import archive
from tests.helpers import REPO_ROOT, compose_train, isolated, run_module, seeded_store

RUN = ["data=synthetic", "data.rows=2000", "data.batch_size=256", "model.star_dim=8", "model.bottom_dim=8",
       "model.expert_dims=[8]", "model.tower_dims=[8]", "federated.rounds=2", "threads=1",
       "+logger.tags.study=archived", "skip_finished=true"]


def uri(folder) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def on(folder) -> list[str]:
    """A store and logs of its own in ``folder``, the data cache shared: the cache's path is part of a run's
    identity (``data.cache_dir``), the same on every machine by default (a relative path), so here too."""
    log_dir, tracking, _, hydra_dir = isolated(folder)[:4]
    return [log_dir, tracking, f"paths.cache_dir={folder.parent / 'cache'}", hydra_dir]


def study_runs(folder):
    mlflow.set_tracking_uri(uri(folder))
    return mlflow.search_runs(experiment_names=["m3oe-federated"], output_format="list")


def test_an_archived_study_resumes_on_a_fresh_store_and_reports_the_same(tmp_path):
    old, new, files = tmp_path / "old", tmp_path / "new", tmp_path / "runs"
    seeded_store(old)
    for overrides in (["federated=fedavg", "seed=1"], ["federated=fedprox", "seed=1"]):
        federate(compose_train([*RUN, *overrides, *on(old)], config_name="federate"))
    federate(compose_train([*RUN, "federated=fedavg", "seed=2", "logger.tags.study=other", *on(old)],
                           config_name="federate"))  # another study: not archived

    written = archive.export_study(uri(old), "m3oe-federated", "archived", files)
    assert len(written) == 2 and archive.export_study(uri(old), "m3oe-federated", "archived", files) == []

    seeded_store(new)
    artifacts = new / "logs" / "mlflow" / "artifacts"
    assert len(archive.import_folder(uri(new), files, artifact_location=str(artifacts))) == 2
    assert archive.import_folder(uri(new), files) == []  # twice adds nothing
    experiment = mlflow.MlflowClient(uri(new)).get_experiment_by_name("m3oe-federated")
    assert experiment.artifact_location == artifacts.resolve().as_uri()  # as a run would have made it
    before = {r.algorithm: r for r in report_federated.load_runs(uri(old), "m3oe-federated", "archived")}
    after = {r.algorithm: r for r in report_federated.load_runs(uri(new), "m3oe-federated", "archived")}
    assert sorted(after) == ["fedavg", "fedprox"]
    for algorithm, run in after.items():
        assert run.metrics == before[algorithm].metrics and run.history == before[algorithm].history
        assert run.seconds == before[algorithm].seconds and run.commit == before[algorithm].commit
        assert run.run_id == before[algorithm].run_id  # the id it was trained under, as results.csv names it
    # an imported run exported again is the same file, not a second one
    assert archive.export_study(uri(new), "m3oe-federated", "archived", files) == []

    # the study resumed on the fresh store skips the imported run and runs only the new arm
    federate(compose_train([*RUN, "federated=fedavg", "seed=1", *on(new)], config_name="federate"))
    federate(compose_train([*RUN, "federated=fedavg", "seed=2", *on(new)], config_name="federate"))
    seeds = sorted((r.data.tags["algorithm"], r.data.tags["seed"], archive.ORIGIN_TAG in r.data.tags)
                   for r in study_runs(new))
    assert seeds == [("fedavg", "1", True), ("fedavg", "2", False), ("fedprox", "1", True)]


def test_a_damaged_archive_is_one_line_and_imports_nothing(tmp_path):
    files = tmp_path / "runs"
    files.mkdir()
    (files / f"abc{archive.SUFFIX}").write_bytes(gzip.compress(b"{not json"))
    seeded_store(tmp_path)
    result = run_module("m3oe_lightning.tracking.archive", ["import", "--dir", str(files), "--tracking-uri",
                                                           uri(tmp_path)], cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {files / 'abc.json.gz'}: not a run archive")
    missing = run_module("m3oe_lightning.tracking.archive", ["import", "--dir", str(tmp_path / "nope")],
                         cwd=REPO_ROOT, timeout=120)
    assert missing.returncode == 2 and "no such folder of run archives" in missing.stderr


@pytest.mark.parametrize("record", [{"format": 99}, []])
def test_an_archive_of_another_format_is_refused(tmp_path, record):
    path = tmp_path / f"x{archive.SUFFIX}"
    archive.write_record(path, record)  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="not a run archive of format 1"):
        archive.read_record(path)
