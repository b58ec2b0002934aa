"""Shared fixtures: a tiny schema and batches, and a throwaway MLflow store."""

from __future__ import annotations

import os

# Before torch loads OpenMP: idle worker threads sleep instead of spinning. On a busy 2-core runner a
# spinning thread waiting for a descheduled sibling makes small steps 10-100x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from m3oe_lightning.data.schema import Batch, DenseFeature, FeatureSchema, SparseFeature  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


@pytest.fixture
def tiny_schema() -> FeatureSchema:
    return FeatureSchema(
        sparse=(SparseFeature("user", 11, 4), SparseFeature("item", 7, 4), SparseFeature("domain", 3, 4)),
        dense=(DenseFeature("age"),),
        domains=("d0", "d1", "d2"),
        tasks=("click", "like"),
    )


def random_batch(schema: FeatureSchema, rows: int, seed: int = 0, domains: list[int] | None = None) -> Batch:
    """A batch with every domain present (unless ``domains`` restricts them) and both label classes."""
    g = torch.Generator().manual_seed(seed)
    choices = torch.tensor(domains if domains is not None else list(range(schema.num_domains)))
    domain = choices[torch.randint(0, len(choices), (rows,), generator=g)]
    domain[: len(choices)] = choices  # every requested domain appears
    sparse = torch.stack([torch.randint(0, f.vocab_size, (rows,), generator=g) for f in schema.sparse], 1)
    sparse[:, -1] = domain
    return Batch(
        sparse=sparse,
        dense=torch.rand(rows, len(schema.dense), generator=g),
        domain=domain,
        labels=torch.randint(0, 2, (rows, schema.num_tasks), generator=g).float(),
    )


@pytest.fixture
def batch_factory():
    return random_batch


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
