"""A real ``mlflow server`` on 127.0.0.1: runs log to it and their artifacts go through its proxy (issue #16);
and ``make clean-checkpoints`` on a real run's folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from m3oe_lightning.bench.processes import free_port
from m3oe_lightning.tracking import clean
from m3oe_lightning.train import train
from tests.helpers import REPO_ROOT, compose_train, isolated, run_module, seeded_store

TINY = ["data=synthetic", "data.rows=800", "model=mlp", "trainer.max_epochs=2", "threads=1"]


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    artifacts = tmp_path / "server-artifacts"
    seeded_store(tmp_path, "server.db")  # the server would spend seconds migrating a new store
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(artifacts), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
                            start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
    yield uri, artifacts
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_a_run_on_a_tracking_server_stores_its_artifacts_on_the_server(tmp_path, mlflow_server):
    uri, artifacts = mlflow_server
    result = run_module("m3oe_lightning.train", [*isolated(tmp_path), *TINY, f"logger.tracking_uri={uri}"],
                        cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("m3oe-lightning").experiment_id])
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert list(artifacts.rglob("test_table.md"))  # on the server's side, not in a client-local folder
    assert not (REPO_ROOT / "mlruns").exists()


def test_clean_checkpoints_keeps_the_best_of_finished_runs_only(tmp_path, capsys):
    seeded_store(tmp_path)
    train(compose_train([*isolated(tmp_path), *TINY]))  # in process: the subject is the folder it leaves
    root = tmp_path / "logs" / "checkpoints"
    (finished,) = [p for p in root.iterdir() if p.is_dir()]
    unfinished = root / "0123abcd"
    unfinished.mkdir()
    (unfinished / "last.ckpt").write_bytes(b"resumable")
    (root / "0123abcd.run.json").write_text(json.dumps({"run_id": "0123abcd", "status": "KILLED"}))
    before = sorted(p.name for p in finished.iterdir())
    assert "last.ckpt" in before and any(n.startswith("best-") for n in before)

    assert clean.main(["--checkpoint-dir", str(root)]) == 0  # dry run: lists, deletes nothing
    assert "would delete" in capsys.readouterr().out and sorted(p.name for p in finished.iterdir()) == before
    assert clean.main(["--checkpoint-dir", str(root), "--apply"]) == 0
    kept = sorted(p.name for p in finished.iterdir())  # the best checkpoint and what scores with it
    assert kept == sorted([*(n for n in before if n.startswith("best-")), "encoders", "network.json"])
    assert (finished / "encoders" / "encoders.json").is_file()
    assert (unfinished / "last.ckpt").exists()
