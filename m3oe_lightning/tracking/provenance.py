"""Where a run came from: its identity and config hash, the git commit, library versions, the command line.

One implementation of each, so the training run, the federated run and a sweep's parent run record the
same provenance. The *identity* of a run is the part of its resolved config that changes what it
computes; its hash is what ``resume`` and ``skip_finished`` match on, so the identity rules below must
keep producing the same hash for the same settings (``tests/fixtures/config_hashes.json`` pins them).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

LIBRARIES = ("torch", "lightning", "torchmetrics", "hydra-core", "mlflow", "numpy", "pandas")
PARENT_RUN_ENV = "M3OE_MLFLOW_PARENT_RUN_ID"  # set by tracking.sweep.MLflowSweepRun for every job of a sweep
SWEEP_NAME_ENV = "M3OE_MLFLOW_SWEEP"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists kept as their string form)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def identity(resolved: Mapping[str, Any], *, drop: Iterable[str], copy_in: Mapping[str, str] = {},
             unless_default: Mapping[str, str] = {}) -> dict[str, Any]:
    """The settings that make a run what it is, from its resolved config.

    ``drop``: dotted paths left out (where it logs, resume and test hooks). ``copy_in``: top-level names
    given the value at a dotted path that ``drop`` removed (``max_epochs`` ← ``trainer.max_epochs``).
    ``unless_default``: dotted paths entered (under their dotted name) only when they differ from the
    given default, so runs from before the setting existed keep their hash.
    """
    out = copy.deepcopy(dict(resolved))
    for path in drop:
        *parents, leaf = path.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    for name, path in copy_in.items():
        out[name] = _get(resolved, path)
    for path, default in unless_default.items():
        value = _get(resolved, path, default)
        if str(value) != default:
            out[path] = value
    return out


def _get(config: Mapping[str, Any], path: str, default: Any = None) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def config_hash(config: Mapping[str, Any]) -> str:
    """Identity of a run's settings (what resume matches on)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def command_line(entry: str, overrides: Sequence[str] | None = None, *, multirun: bool = False) -> str:
    """The command that reproduces a run: ``python -m m3oe_lightning.<entry> [-m] <overrides>``.

    ``overrides`` default to the running Hydra job's own (none outside Hydra).
    """
    if overrides is None:
        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return " ".join([f"python -m m3oe_lightning.{entry}", *(["-m"] if multirun else []), *overrides])


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[f"version.{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[f"version.{name}"] = "absent"
    return versions


def sweep_tags() -> dict[str, str]:
    """Tags that nest a job's run under its sweep's parent run (empty outside a sweep)."""
    parent = os.environ.get(PARENT_RUN_ENV)
    if not parent:
        return {}
    return {"mlflow.parentRunId": parent, "sweep": os.environ.get(SWEEP_NAME_ENV, "")}


def run_tags(cfg: DictConfig, cfg_hash: str, entry: str) -> dict[str, str]:
    """The provenance tags of every run: hash, commit, versions, command, the user's tags, its sweep."""
    return {"seed": str(cfg.seed), "config_hash": cfg_hash, "git_commit": git_commit(), **library_versions(),
            "command": command_line(entry), **{str(k): str(v) for k, v in (cfg.logger.tags or {}).items()},
            **sweep_tags()}


def run_labels(cfg: DictConfig, *, from_experiment: bool = True) -> tuple[str, str]:
    """(model label, data label) for run names such as ``{model}-{data}-s{seed}``.

    The model label is the experiment preset's name when one was chosen (``experiment=paper/m3oe`` →
    ``paper_m3oe``; ``from_experiment=False`` skips that), else the model group's choice.
    """
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    model = (choices.get("experiment") if from_experiment else None) or choices.get("model") \
        or cfg.model._target_.rsplit(".", 1)[-1].lower()
    return str(model).replace("/", "_"), str(cfg.data.name)
