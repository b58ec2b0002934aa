"""Helpers for tests that go through the public entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from m3oe_lightning.config import compose

REPO_ROOT = Path(__file__).resolve().parent.parent
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def isolated(tmp_path: Path) -> list[str]:
    """Overrides that keep a run's store, checkpoints and outputs inside ``tmp_path``."""
    return [f"paths.log_dir={tmp_path / 'logs'}", f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'hydra'}", *QUIET]


def compose_train(overrides: list[str], config_name: str = "train") -> DictConfig:
    """Compose like ``python -m m3oe_lightning.train`` would, with the Hydra runtime set."""
    return compose(config_name, overrides, runtime=True)


def run_module(module: str, args: list[str], cwd: Path, timeout: int = 300,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m <module> <args>`` in a subprocess (the console entry point as a user runs it)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)
