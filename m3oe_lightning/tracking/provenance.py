"""Where a run came from: its settings' hash, the git commit, library versions and the command line.

One implementation of each, so the training run, the federated run and the sweep's parent run record
the same provenance.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "lightning", "torchmetrics", "hydra-core", "mlflow", "numpy", "pandas")


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


def config_hash(config: Mapping[str, Any]) -> str:
    """Identity of a run's settings (what resume matches on)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def command_line(hydra_config: Any | None) -> str:
    """The command that reproduces this run: the entry point plus this job's overrides."""
    overrides = list(hydra_config.overrides.task) if hydra_config is not None else []
    return " ".join(["python -m m3oe_lightning.train", *overrides])


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[f"version.{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[f"version.{name}"] = "absent"
    return versions


