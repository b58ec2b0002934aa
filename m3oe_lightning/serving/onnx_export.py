"""ONNX export of a model over its encoded inputs, and the check that onnxruntime agrees with PyTorch.

The graph takes what the readers produce (docs/serving.md, "Encoded input layout"): ``sparse`` int64
``[B, n_sparse]``, ``dense`` float32 ``[B, n_dense]``, ``domain`` int64 ``[B]``, and gives ``logits``
float32 ``[B, T]``. What is traced is :meth:`MDMTModel.export_forward`, whose graph no value of the batch
shapes, so one file serves any batch size and any mix of domains.

The exporter is ``torch.export``'s (``dynamo=True``, the default since PyTorch 2.9): it refuses control
flow that depends on the batch's values (a :class:`torch.fx.experimental.symbolic_shapes
.GuardOnDataDependentSymNode` error) instead of silently keeping one batch's rows per domain as the
deprecated TorchScript tracer would, so a model that forgets its export formulation fails to export
rather than exporting wrong logits.

A model with no dense features keeps the ``dense`` input, zero columns wide (ONNX and onnxruntime take
zero-sized dimensions): every exported graph has the same three inputs.

``onnxruntime`` is imported inside the function that needs it, and ``torch.onnx`` loads ``onnx`` and
``onnxscript`` only when it exports: importing this module costs an entry point that never exports nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from m3oe_lightning.data.schema import Batch
from m3oe_lightning.models.base import MDMTModel

INPUT_NAMES = ("sparse", "dense", "domain")
OUTPUT_NAME = "logits"
# Rows of the example batch the exporter traces: any size ≥ 2 (torch.export specialises sizes 0 and 1,
# which would fix the batch axis), odd so it coincides with no model width; every domain appears.
EXAMPLE_ROWS = 7


class _EncodedInputs(nn.Module):
    """The model with the three encoded tensors as separate arguments (the graph's named inputs)."""

    def __init__(self, model: MDMTModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return self.model.export_forward(sparse, dense, domain)


def example_inputs(model: MDMTModel, rows: int = EXAMPLE_ROWS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zeros (id 0 = unknown, valid in every vocabulary) and every domain: shapes and dtypes are what count."""
    schema = model.schema
    domain = torch.arange(rows) % schema.num_domains
    return (torch.zeros(rows, len(schema.sparse), dtype=torch.int64),
            torch.zeros(rows, len(schema.dense), dtype=torch.float32),
            domain)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration (dropout off, running statistics), then the caller's mode again."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence what the exporter says on every export that is no fault of ours: a log line per torchvision
    operator it cannot register (torchvision is not a dependency) and a note that the three inputs share
    one batch axis (they do: that is the point)."""
    # the registry's line per operator, onnx_ir's and onnxscript's INFO lines per initializer and folded node
    # (shown wherever the root logger takes INFO, as under Hydra)
    logs = [logging.getLogger(name)
            for name in ("torch.onnx._internal.exporter._registration", "onnx_ir", "onnxscript")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*axis name: batch will not be used", category=UserWarning)
            yield
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


def _temporary_sibling(path: Path) -> Path:
    """An empty file next to ``path`` (same file system, so :func:`os.replace` is atomic)."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    return Path(name)


def export_onnx(model: MDMTModel, path: Path, *, opset: int | None = None) -> Path:
    """Write ``model`` (in eval mode) to ``path`` as one self-contained ONNX file; returns ``path``.

    The file appears whole or not at all: the graph is written to a temporary file in the same folder
    and moved over ``path`` only once the exporter has finished (a failed export leaves no file, and an
    existing file at ``path`` stays as it was). ``opset``: the ONNX opset (default: the exporter's).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch")
    temporary = _temporary_sibling(path)
    try:
        with _eval_mode(model), torch.no_grad(), _quiet_exporter():
            torch.onnx.export(
                _EncodedInputs(model).eval(), example_inputs(model), str(temporary), dynamo=True,
                input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME], opset_version=opset,
                dynamic_shapes={name: {0: batch} for name in INPUT_NAMES},
                external_data=False, verbose=False,
            )
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; the export is an ordinary file
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def onnx_logits(path: Path, batch: Batch) -> np.ndarray:
    """``logits`` of the exported graph at ``path`` for ``batch``, by onnxruntime on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"sparse": batch["sparse"].numpy().astype(np.int64, copy=False),
             "dense": batch["dense"].numpy().astype(np.float32, copy=False),
             "domain": batch["domain"].numpy().astype(np.int64, copy=False)}
    (logits,) = session.run([OUTPUT_NAME], feeds)
    return logits


def verify_onnx(model: MDMTModel, path: Path, batch: Batch, *, atol: float = 1e-5) -> float:
    """The largest absolute difference between onnxruntime's logits (file ``path``) and ``model``'s own
    ``forward`` (eval mode) on ``batch``; a ``ValueError`` naming the model when it exceeds ``atol``.

    The reference is ``forward``, not the traced ``export_forward``: the check covers the export
    formulation and the exporter together.
    """
    with _eval_mode(model), torch.no_grad():
        expected = model(batch).numpy()
    actual = onnx_logits(Path(path), batch)
    name = type(model).__name__
    if actual.shape != expected.shape:
        raise ValueError(f"{name}: the ONNX graph at {path} gave logits of shape {actual.shape}, "
                         f"PyTorch {expected.shape}")
    difference = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    if not difference <= atol:  # also catches NaN
        raise ValueError(f"{name}: the ONNX graph at {path} differs from PyTorch by {difference:.3g} "
                         f"(max abs over {expected.shape[0]} rows; allowed {atol:g})")
    return difference
