"""Raw rows in, one probability per task out: a trained network with the encoders it was trained with.

The same object answers ``m3oe-predict`` (file to file, chunk by chunk), the MLflow pyfunc model
(``mlflow models serve``) and the tests; it is built from a bundle (:mod:`m3oe_lightning.serving.bundle`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from m3oe_lightning.config import build
from m3oe_lightning.data.encoders import Encoders
from m3oe_lightning.data.schema import Batch
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.models.base import MDMTModel, forward_in_chunks
from m3oe_lightning.serving.bundle import ENCODERS_DIR, WEIGHTS_FILE, network_state, read_network
from m3oe_lightning.serving.columns import DOMAIN_COLUMN, probability_column

MODELS_PACKAGE = "m3oe_lightning.models."  # a bundle may only name a network of ours (no arbitrary callables)


@dataclass
class Scored:
    """One chunk's answer: ``frame`` (``domain`` + ``p_<task>`` per row, input order), the network's logits, the
    encoded batch (labels NaN where the input had none) and the rows per column that got the unseen id."""

    frame: pd.DataFrame
    logits: torch.Tensor
    batch: Batch
    unseen: dict[str, int] = field(default_factory=dict)


@dataclass
class Scorer:
    network: MDMTModel
    encoders: Encoders

    @classmethod
    def load(cls, folder: Path, weights: Path | None = None) -> Scorer:
        """The bundle in ``folder`` with ``weights`` (a checkpoint or state dict; default ``folder/weights.pt``)."""
        folder = Path(folder)
        network_config = read_network(folder)["model"]
        target = str(network_config.get("_target_", ""))
        if not target.startswith(MODELS_PACKAGE):
            raise UserInputError(f"{folder / 'network.json'}: _target_={target!r} is not a model of "
                                 f"{MODELS_PACKAGE.rstrip('.')}; refusing to build it")
        encoders = Encoders.load(folder / ENCODERS_DIR)
        network: MDMTModel = build(OmegaConf.create(network_config), schema=encoders.schema)
        weights = folder / WEIGHTS_FILE if weights is None else Path(weights)
        state = network_state(weights)
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first = str(error).splitlines()[0]
            raise UserInputError(f"{weights} does not fit the network in {folder} ({first}); give the checkpoint "
                                 f"of the run these encoders belong to") from None
        network.eval()
        return cls(network=network, encoders=encoders)

    def logits(self, batch: Batch) -> torch.Tensor:
        with torch.inference_mode():
            return forward_in_chunks(self.network, batch)

    def score(self, frame: pd.DataFrame, where: Callable[[int], str], *, source: str = "the input") -> Scored:
        """Score raw rows (the columns :meth:`Encoders.input_columns` accepts; labels are ignored)."""
        self.encoders.check_columns(list(frame.columns), source)
        batch, unseen = self.encoders.encode(frame.reset_index(drop=True), where)
        logits = self.logits(batch)
        probabilities = torch.sigmoid(logits).numpy().astype(np.float64)
        domains = np.asarray(self.encoders.schema.domains, dtype=object)[batch["domain"].numpy()]
        out = pd.DataFrame({DOMAIN_COLUMN: domains})
        for t, task in enumerate(self.encoders.tasks):
            out[probability_column(task)] = probabilities[:, t]
        return Scored(frame=out, logits=logits, batch=batch, unseen=unseen)
