"""trainer=ddp: 2 CPU processes (gloo); metrics equal a single-process evaluation of the same checkpoint."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import mlflow
import pytest
import torch

from m3oe_lightning.config import build
from m3oe_lightning.training.module import MDMTModule
from tests.helpers import REPO_ROOT, compose_train, isolated, run_module, seeded_store

# small widths: what is compared is two processes' evaluation against one process', not accuracy
RUN = ["data=synthetic", "data.rows=8000", "data.batch_size=512", "trainer.max_epochs=1", "seed=11",
       "model.star_dim=32", "model.bottom_dim=16", "model.expert_dims=[16]", "model.tower_dims=[16]"]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process_evaluation(tmp_path):
    seeded_store(tmp_path)
    result = run_module("m3oe_lightning.train", [*RUN, "trainer=ddp", *isolated(tmp_path)], cwd=REPO_ROOT,
                        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["m3oe-lightning"], output_format="list")  # rank 0 only
    assert run.info.status == "FINISHED"
    (checkpoint,) = (Path(tmp_path) / "logs" / "checkpoints" / run.info.run_id).glob("best-*.ckpt")

    cfg = compose_train([*RUN, *isolated(tmp_path / "single")])
    datamodule = build(cfg.data)
    model = build(cfg.model, schema=datamodule.load().schema)
    system = MDMTModule(model)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    system.load_state_dict(state)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.test(system, datamodule=datamodule, verbose=False)
    single = system.test_results
    logged = {k: v for k, v in run.data.metrics.items() if k.startswith("test/") and k != "test/loss"}
    assert set(logged) == {k for k in single if k != "test/loss"}
    for key, value in logged.items():
        assert value == pytest.approx(single[key], abs=1e-5), key
