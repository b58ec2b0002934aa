"""Helpers for tests that go through the public entry points."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from m3oe_lightning.config import compose, report_user_errors

REPO_ROOT = Path(__file__).resolve().parent.parent
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
_TEMPLATE_STORE: list[Path] = []  # one empty, migrated MLflow store per test process (made on first use)


def isolated(tmp_path: Path) -> list[str]:
    """Overrides that keep a run's store, checkpoints and outputs inside ``tmp_path``."""
    return [f"paths.log_dir={tmp_path / 'logs'}", f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'hydra'}", *QUIET]


def seeded_store(folder: Path, name: str = "mlflow.db") -> Path:
    """An empty MLflow store at ``folder / name``, copied from one made once per test process.

    A new sqlite store runs all of MLflow's schema migrations (3-5 s on a 2-core runner, more than a tiny run
    trains); tests whose subject is not a store's creation start from this copy. Tests about fresh stores
    (concurrent creation, what a first run creates) must not use it.
    """
    if not _TEMPLATE_STORE:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        scratch = Path(tempfile.mkdtemp(prefix="m3oe-store-template-"))
        atexit.register(shutil.rmtree, scratch, True)
        store = SqlAlchemyStore(f"sqlite:///{scratch / 'mlflow.db'}", str(scratch / "artifacts"))
        store.engine.dispose()
        _TEMPLATE_STORE.append(scratch / "mlflow.db")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    shutil.copyfile(_TEMPLATE_STORE[0], target)
    return target


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


def run_in_process(entry: Callable[[DictConfig], Any], overrides: list[str], capture: Any,
                   config_name: str = "train") -> subprocess.CompletedProcess[str]:
    """What ``main`` does after Hydra composed (``report_user_errors(entry, cfg)``), in this process.

    For refusals that come after torch has loaded: a subprocess would spend ~10 s importing it to print one
    line. ``capture`` is pytest's ``capfd`` (file-descriptor level, so nothing printed escapes the check);
    the result reads like :func:`run_module`'s.
    """
    cfg = compose_train(overrides, config_name=config_name)
    full_error = os.environ.pop("HYDRA_FULL_ERROR", None)  # would re-raise instead of printing one line
    capture.readouterr()
    try:
        report_user_errors(entry, cfg)
        code: int | str | None = 0
    except SystemExit as stop:
        code = stop.code
    finally:
        if full_error is not None:
            os.environ["HYDRA_FULL_ERROR"] = full_error
    out, err = capture.readouterr()
    return subprocess.CompletedProcess(args=overrides, returncode=code if isinstance(code, int) else 1,
                                       stdout=out, stderr=err)


def recommendation_models() -> list[str]:
    """The ``conf/model`` options of the recommendation task family (the classifier, ``linear``, is not one:
    it has no embeddings, one domain and class logits), read from each option's ``_target_`` class."""
    import hydra

    from m3oe_lightning.config import CONF_DIR

    out = []
    for path in sorted((Path(CONF_DIR) / "model").glob("*.yaml")):
        target = compose_train([f"model={path.stem}"]).model._target_  # presets may inherit their target
        if hydra.utils.get_class(target).task_family == "recommendation":
            out.append(path.stem)
    return out
