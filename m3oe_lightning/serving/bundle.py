"""A trained model as a folder that scores raw rows: encoders, the network's settings, its weights.

Every training run writes the first two beside its checkpoints (``<checkpoint_dir>/<run_id>/``), so a
checkpoint path alone is enough to score with; the MLflow model adds ``weights.pt`` (the network's state
dict, no optimiser) and nothing else. Layout::

    encoders/       fitted vocabularies, scalers, domain map, lookups (m3oe_lightning.data.encoders)
    network.json    the model's config node (``_target_`` + settings) and the run it came from
    weights.pt      optional: the network's state dict (else a Lightning checkpoint is given)

Nothing here is unpickled: weights are read with ``torch.load(weights_only=True)``, the rest is JSON and
Parquet.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from m3oe_lightning.data.encoders import Encoders
from m3oe_lightning.errors import UserInputError

ENCODERS_DIR = "encoders"
NETWORK_FILE = "network.json"
WEIGHTS_FILE = "weights.pt"
FORMAT = 1
# prefixes a checkpoint's state dict puts before the network's own keys: the LightningModule's attribute,
# and torch.compile's wrapper (callbacks=compile)
STATE_PREFIXES = ("model.", "_orig_mod.")


def is_bundle(folder: Path) -> bool:
    return (Path(folder) / NETWORK_FILE).is_file()


def write_network(folder: Path, model_config: Mapping[str, Any], *, run_id: str | None = None,
                  label: str | None = None) -> Path:
    """``network.json``: how to rebuild the network (its resolved config node) — written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / NETWORK_FILE
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(json.dumps({"format": FORMAT, "model": dict(model_config), "run_id": run_id,
                                   "label": label}, indent=1, default=str))
    os.replace(partial, target)
    return target


def write_bundle(folder: Path, encoders: Encoders, model_config: Mapping[str, Any], *, run_id: str | None = None,
                 label: str | None = None) -> Path:
    """Encoders and ``network.json`` into ``folder`` (a run's checkpoint folder, or a model being packaged)."""
    encoders.save(Path(folder) / ENCODERS_DIR)
    write_network(folder, model_config, run_id=run_id, label=label)
    return Path(folder)


def read_network(folder: Path) -> dict[str, Any]:
    path = Path(folder) / NETWORK_FILE
    if not path.is_file():
        raise UserInputError(f"{path} is missing: {folder} holds no scoring bundle (a run trained before encoders "
                             f"were saved cannot score raw rows; retrain it)")
    try:
        network = json.loads(path.read_text())
        if network.get("format") != FORMAT or "_target_" not in network.get("model", {}):
            raise ValueError("not a network description")
    except (OSError, ValueError) as error:
        raise UserInputError(f"{path} cannot be read ({error}); restore it from the run's artifacts") from None
    return network


def network_state(weights: Path) -> dict[str, Any]:
    """The network's state dict from ``weights.pt`` or a Lightning checkpoint (``weights_only``: no pickle)."""
    import torch

    try:
        loaded = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserInputError(f"{weights} does not exist") from None
    except Exception as error:  # noqa: BLE001 - torch raises many types for a damaged file
        raise UserInputError(f"{weights} is not a readable checkpoint ({type(error).__name__}: {error})") from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        raise UserInputError(f"{weights} holds no state dict")
    cleaned: dict[str, Any] = {}
    for key, value in state.items():
        for prefix in STATE_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    return cleaned


def best_checkpoint(folder: Path) -> Path | None:
    """The run's best-validation checkpoint (``best-*.ckpt``; the newest when several), else ``last.ckpt``."""
    folder = Path(folder)
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    last = folder / "last.ckpt"
    return last if last.is_file() else None
