"""``data=page_synthetic``: PAGE's Synthetic federation served to the framework (docs/page.md).

The generator (:mod:`.page_synthetic`) draws 100 clients with their own rows; this datamodule encodes them as
the project's splits (30 dense features, one label column holding the class index, one domain) and offers
them two ways: :meth:`load` pools every client's rows (train / val / local test) like any dataset, and
:meth:`natural_clients` keeps each client's rows its own (``federated.partition=natural``), with the pooled
75-rows-per-client set apart as the global test set, as PAGE's released code evaluates its global model.

Validation rows (PAGE's states and rewards without the leak of the released code, which scores on test):
the last ``val_fraction`` of each client's 210 training rows (21 by default); ``val_fraction: 0`` keeps all
210 for training (then only ``federated.paper_parity=true`` gives PAGE a signal).
"""

from __future__ import annotations

import numpy as np
import torch

from m3oe_lightning.data.datamodule import MDMTDataModule
from m3oe_lightning.data.page_synthetic import SyntheticSettings, generate
from m3oe_lightning.data.schema import (
    NUM_CLASSES,
    DenseFeature,
    EncodedDataset,
    EncodedSplit,
    FeatureSchema,
    NaturalClients,
    concat_splits,
)
from m3oe_lightning.errors import UserInputError, check_int, check_number

NAME = "page_synthetic"


def encoded(x: np.ndarray, y: np.ndarray) -> EncodedSplit:
    """Rows as an encoded split: dense = the features, labels = the class index as one float column."""
    n = len(y)
    return EncodedSplit(sparse=torch.zeros((n, 0), dtype=torch.int64), dense=torch.from_numpy(np.ascontiguousarray(x)),
                        domain=torch.zeros(n, dtype=torch.int64),
                        labels=torch.from_numpy(y.astype(np.float32)).reshape(n, 1))


class PageSyntheticDataModule(MDMTDataModule):
    """PAGE's Synthetic data (the released generator's parameters by default; :class:`SyntheticSettings`).

    Args:
        clients / dimension / classes / samples / alpha / beta / shared_solution / local_fraction /
            train_fraction: the generator's settings.
        val_fraction: share of each client's training rows kept for validation (the last ones).
        generator_seed: the draw (the same seed, the same clients: every strategy of a study sees one draw).
        batch_size / eval_batch_size / seed: as every datamodule's (PAGE's batch is 5).
    """

    def __init__(self, clients: int = 100, dimension: int = 30, classes: int = 30, samples: int = 375,
                 alpha: float = 0.0, beta: float = 1.0, shared_solution: bool = True, local_fraction: float = 0.8,
                 train_fraction: float = 0.7, val_fraction: float = 0.1, generator_seed: int = 0,
                 batch_size: int = 5, eval_batch_size: int = 65536, seed: int = 0, name: str = NAME) -> None:
        super().__init__(name=name, batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed)
        for setting, value in (("clients", clients), ("dimension", dimension), ("classes", classes),
                               ("samples", samples)):
            check_int(f"data.{setting}", value, minimum=2 if setting in ("classes", "samples") else 1)
        check_number("data.val_fraction", val_fraction, low=0, high=1, high_open=True)
        check_int("data.generator_seed", generator_seed, minimum=0)
        try:
            self.settings = SyntheticSettings(clients=clients, dimension=dimension, classes=classes, samples=samples,
                                              alpha=float(alpha), beta=float(beta),
                                              shared_solution=bool(shared_solution),
                                              local_fraction=float(local_fraction),
                                              train_fraction=float(train_fraction))
        except ValueError as error:
            raise UserInputError(f"data=page_synthetic: {error}") from None
        self.val_fraction = float(val_fraction)
        self.generator_seed = int(generator_seed)
        self._drawn: NaturalClients | None = None

    def source_uri(self) -> str:
        return f"generated:{NAME}?seed={self.generator_seed}"

    def schema_of(self) -> FeatureSchema:
        s = self.settings
        return FeatureSchema(sparse=(), dense=tuple(DenseFeature(f"x{j}") for j in range(s.dimension)),
                             domains=("all",), tasks=("class",), extras={NUM_CLASSES: s.classes})

    def natural_clients(self) -> NaturalClients:
        """Each generated client with its own rows (drawn once), and the pooled global test set."""
        if self._drawn is not None:
            return self._drawn
        drawn = generate(self.settings, seed=self.generator_seed)
        schema = self.schema_of()
        n_train = len(drawn.clients[0].train_y)
        n_fit = n_train - int(round(self.val_fraction * n_train))
        if n_fit < 1:
            raise UserInputError(f"data.val_fraction={self.val_fraction}: no training row is left of {n_train}")
        clients = [(f"client{k}", EncodedDataset(schema, encoded(rows.train_x[:n_fit], rows.train_y[:n_fit]),
                                                 encoded(rows.train_x[n_fit:], rows.train_y[n_fit:]),
                                                 encoded(rows.test_x, rows.test_y)))
                   for k, rows in enumerate(drawn.clients)]
        per_client = len(drawn.global_y) // len(drawn.clients)
        self._drawn = NaturalClients(schema=schema, clients=clients,
                                     global_test=encoded(drawn.global_x, drawn.global_y),
                                     global_test_parts=[per_client] * len(clients))
        return self._drawn

    def load(self) -> EncodedDataset:
        """Every client's rows pooled: train, val and local test (what ``m3oe-train`` would fit centrally)."""
        if self.dataset is None:
            drawn = self.natural_clients()
            self.dataset = EncodedDataset(drawn.schema, *(concat_splits([getattr(d, name) for _, d in drawn.clients])
                                                          for name in ("train", "val", "test")))
        return self.dataset
