"""The one interface every model implements (docs/design.md, property 1).

A model is built from a :class:`FeatureSchema`; ``forward(batch)`` returns logits of shape ``[B, T]``:
one logit per task for the row's own domain. Nothing outside a model branches on its type: the
training system only asks for :meth:`architecture_parameters` (possibly empty), which the AutoML
step optimises separately, and :meth:`architecture_weights` for logging. Federated personalisation
asks :meth:`personal_slices` which entries of the state dict a client keeps to itself. Evaluation
forwards a batch :attr:`MDMTModel.eval_chunk_rows` rows at a time (:func:`forward_in_chunks`).
Serving exports :meth:`MDMTModel.export_forward`, the same logits as ``forward`` over the encoded
tensors, written so that no value of the batch shapes the traced graph (:class:`RoutedModel`).
"""

from __future__ import annotations

import torch
from torch import nn

from m3oe_lightning.data.schema import Batch, FeatureSchema
from m3oe_lightning.errors import UserInputError, check_int
from m3oe_lightning.models.layers import DomainRouting, FeatureEmbedding

# Rows per forward pass in evaluation, by default. Inference is memory-bound past a few thousand rows (each
# layer's activations leave the cache): on this 2-core machine, Trainer.validate over MovieLens-1M's 100k val
# rows ran at ~20k rows/s with 65,536-row forwards and ~100k rows/s with 4,096-row ones (paper and released
# presets), so evaluation batches (data.eval_batch_size: rows per metric update) are forwarded in chunks.
DEFAULT_EVAL_CHUNK_ROWS = 4096

# state-dict key -> the part a client keeps local: ``None`` = the whole tensor, a slice = those rows of dim 0
PersonalSlices = dict[str, slice | None]

# ``federated.personal`` kinds every model has (served by :meth:`MDMTModel.federated_personal_slices`, not by the
# model-specific :meth:`MDMTModel.personal_slices`), and the sparse column whose table they keep local: the
# readers name the user column ``user_id`` (MovieLens, KuaiRand, synthetic)
USER_EMBEDDINGS, USER_COLUMN = "user_embeddings", "user_id"


def check_domains_tasks(schema: FeatureSchema, num_domains: int | None, num_tasks: int | None,
                        model_name: str) -> None:
    """Fail before training when a model was configured for a different D or T than the data has."""
    for setting, wanted, actual in (("num_domains", num_domains, schema.num_domains),
                                    ("num_tasks", num_tasks, schema.num_tasks)):
        if wanted is not None and wanted != actual:
            raise UserInputError(
                f"model.{setting}={wanted} but the data has {actual} "
                f"({', '.join(schema.domains if setting == 'num_domains' else schema.tasks)}); "
                f"set model.{setting}={actual} or null (= take it from the data) for {model_name}"
            )


class MDMTModel(nn.Module):
    """Base class: holds the schema, exposes the architecture (fusion) parameters.

    ``eval_chunk_rows`` (rows per evaluation forward) is how the model is run, not what it computes: it is
    no constructor argument (so not part of ``conf/model``, whose settings identify a run) but set after
    building with :meth:`set_eval_chunk_rows`.
    """

    # which task family scores and trains this model (m3oe_lightning.federated.families): ``recommendation``
    # (one logit per task, AUC per (domain, task)) or ``classification`` (one logit per class, accuracy)
    task_family = "recommendation"

    def __init__(self, schema: FeatureSchema) -> None:
        super().__init__()
        self.schema = schema
        self.num_domains = schema.num_domains
        self.num_tasks = schema.num_tasks
        self.eval_chunk_rows = DEFAULT_EVAL_CHUNK_ROWS

    def set_eval_chunk_rows(self, rows: int | None) -> None:
        """Rows per forward pass in evaluation (``None``: :data:`DEFAULT_EVAL_CHUNK_ROWS`); the logits do
        not depend on it, only the speed and the memory of evaluation do."""
        check_int("eval_chunk_rows", rows, optional=True)
        self.eval_chunk_rows = DEFAULT_EVAL_CHUNK_ROWS if rows is None else rows

    def forward(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def export_forward(self, sparse: torch.Tensor, dense: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """The logits of ``forward`` for an eval-mode model, from the three encoded input tensors.

        This is what ONNX export traces (``m3oe_lightning.serving``): a model whose forward lets the batch's
        values decide its control flow (rows per domain as Python ints) overrides it with a formulation
        whose graph holds for any batch size and domain mix. By default it is ``forward`` itself.
        """
        return self(encoded_batch(sparse, dense, domain))

    def architecture_parameters(self) -> list[nn.Parameter]:
        """Logits of the AutoML-tuned weights (each weight is ``sigmoid(logit)``); empty by default.

        Setting them to 0 fixes every weight at 0.5 (the paper's "w/o AutoML" ablation).
        """
        return []

    def architecture_weights(self) -> dict[str, float]:
        """Current fusion weights (after the sigmoid) by name, for logging."""
        return {}

    def personal_slices(self, kind: str) -> PersonalSlices | None:
        """The state-dict entries a federated client keeps local under ``federated.personal=kind``.

        ``None``: this model has no such part (the federated factory then refuses the setting).
        """
        return None

    def embedding_tables(self) -> dict[str, int]:
        """State-dict key of each embedding table → the sparse column (index into ``batch["sparse"]``) whose
        ids index its rows: what row-sparse federated aggregation averages row by row.

        By default every :class:`~m3oe_lightning.models.layers.FeatureEmbedding` inside the model; a model
        that embeds ids some other way overrides it.
        """
        state = self.state_dict()
        out: dict[str, int] = {}
        for prefix, module in self.named_modules():
            if isinstance(module, FeatureEmbedding):
                for column, _ in enumerate(module.tables):
                    key = f"{prefix}.tables.{column}.weight" if prefix else f"tables.{column}.weight"
                    if key in state:
                        out[key] = column
        return out

    def federated_personal_slices(self, kind: str) -> PersonalSlices | None:
        """:meth:`personal_slices`, plus the kinds every model has: ``user_embeddings`` (the table of the
        ``user_id`` column; ``None`` when the data has no such column)."""
        if kind != USER_EMBEDDINGS:
            return self.personal_slices(kind)
        names = [f.name for f in self.schema.sparse]
        if USER_COLUMN not in names:
            return None
        column = names.index(USER_COLUMN)
        slices: PersonalSlices = {key: None for key, col in self.embedding_tables().items() if col == column}
        return slices or None


class RoutedModel(MDMTModel):
    """A model whose rows go through their own domain's parameters, written once against
    :class:`~m3oe_lightning.models.layers.DomainRouting`: ``forward`` groups the rows by domain (only the
    domains present are computed), :meth:`export_forward` runs every domain on every row and gathers each
    row's own (nothing in the graph depends on the rows per domain).
    """

    def routed_forward(self, batch: Batch, route: DomainRouting) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.routed_forward(batch, DomainRouting.grouped(batch["domain"], self.num_domains))

    def export_forward(self, sparse: torch.Tensor, dense: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        if self.training:  # per-batch statistics (STAR's partitioned norm) would see every row as every domain's
            raise RuntimeError(f"{type(self).__name__}.export_forward needs eval mode: call model.eval() first")
        return self.routed_forward(encoded_batch(sparse, dense, domain),
                                   DomainRouting.for_export(domain, self.num_domains))


def encoded_batch(sparse: torch.Tensor, dense: torch.Tensor, domain: torch.Tensor) -> Batch:
    """A :data:`Batch` without labels (models never read them): what a served model is given."""
    return Batch(sparse=sparse, dense=dense, domain=domain)  # type: ignore[typeddict-item]


def forward_in_chunks(model: MDMTModel, batch: Batch, rows: int | None = None) -> torch.Tensor:
    """``model(batch)`` computed ``rows`` (default: the model's :attr:`~MDMTModel.eval_chunk_rows`) rows at a
    time (the same logits: every model's rows are independent in eval mode; tested per model)."""
    rows = model.eval_chunk_rows if rows is None else rows
    size = int(batch["domain"].shape[0])
    if size <= rows:
        return model(batch)
    return torch.cat([model(Batch(**{key: value[start:start + rows] for key, value in batch.items()}))
                      for start in range(0, size, rows)])
