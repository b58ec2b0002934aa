"""Raw frame + split indices -> :class:`EncodedDataset` (whole tensors, ready for the datamodule).

Every dataset goes through this one function so that all of them share the same guarantees:

* label encoders are fitted on the **train rows only** (val/test values never leak into the vocabulary);
  a value first seen in val/test, or a missing value, maps to the reserved id 0;
  ``vocab_size = number of distinct train values + 1``; ids follow the sorted order of the values, so
  the same train set always gives the same ids;
* dense columns are min-max scaled with the train minimum and maximum (not clipped: val/test values
  outside the train range fall outside [0, 1]); ``TableSpec.dense_scaling`` may choose another scaling
  per column (:data:`DENSE_SCALINGS`: ``standard``, ``log1p``, ``none``), always fitted on train rows;
* the domain of each row is an int64 index into ``spec.domains``; it is also appended as the last sparse
  feature (encoded like the others) because the M3oE reference feeds it to the embedding layer;
* labels are float32 ``[N, T]`` in ``spec.tasks`` order;
* ``spec.region_column`` (when set) becomes :attr:`EncodedDataset.regions`: each row's value as a string.

All of it is vectorised (factorize / categorical codes + fancy indexing); nothing loops over rows.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from m3oe_lightning.data.schema import (
    DenseFeature,
    EncodedDataset,
    EncodedSplit,
    FeatureSchema,
    RowKeys,
    SparseFeature,
)
from m3oe_lightning.errors import UserInputError


@dataclass(frozen=True)
class TableSpec:
    """How to turn one raw frame into tensors: which columns, which domain each row belongs to.

    ``domain_of_value`` maps each value of ``domain_column`` to an index into ``domains`` (several values
    may share a domain, e.g. ML-1M age codes 35, 45, 50 and 56 are all ``age_35plus``).
    ``dense_scaling`` maps a dense column to one of :data:`DENSE_SCALINGS`; unlisted columns are ``minmax``.
    ``region_column`` names a column holding each row's region (not a feature: it only groups rows for
    ``federated.partition=region``).
    """

    name: str
    sparse: tuple[str, ...]
    dense: tuple[str, ...]
    tasks: tuple[str, ...]
    domains: tuple[str, ...]
    domain_column: str
    domain_of_value: Mapping[Hashable, int]
    domain_feature: str | None = "domain"
    embed_dim: int = 16
    extras: Mapping[str, Any] = field(default_factory=dict)
    dense_scaling: Mapping[str, str] = field(default_factory=dict)
    region_column: str | None = None


@dataclass(frozen=True)
class Vocabulary:
    """A fitted label encoder: ``ids`` for every row (0 = unseen/missing) and the train values in id order."""

    ids: np.ndarray
    values: list[Any]

    @property
    def size(self) -> int:
        return len(self.values) + 1


def _codes_and_uniques(column: pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes over all rows (-1 = missing) and the sorted distinct values they index."""
    if isinstance(column, pd.Series) and isinstance(column.dtype, pd.CategoricalDtype):
        cat = column.cat
        if not cat.ordered and not cat.categories.is_monotonic_increasing:
            cat = cat.reorder_categories(sorted(cat.categories)).cat  # the accessor returns a new Series
        return cat.codes.to_numpy(np.int64), np.asarray(cat.categories)
    codes, uniques = pd.factorize(np.asarray(column), sort=True, use_na_sentinel=True)
    return codes.astype(np.int64, copy=False), np.asarray(uniques)


def fit_vocabulary(column: pd.Series | np.ndarray, train_idx: np.ndarray) -> Vocabulary:
    """Label-encode ``column`` with ids fitted on ``train_idx`` rows; everything else unseen -> 0."""
    codes, uniques = _codes_and_uniques(column)
    seen = np.zeros(len(uniques) + 1, dtype=bool)  # last slot absorbs the -1 "missing" code
    seen[codes[train_idx]] = True
    seen = seen[:-1]
    new_id = np.zeros(len(uniques) + 1, dtype=np.int64)
    new_id[:-1][seen] = np.arange(1, int(seen.sum()) + 1, dtype=np.int64)
    ids = new_id[codes]  # code -1 reads the last slot, which stays 0
    return Vocabulary(ids=ids, values=[_plain(v) for v in uniques[seen]])


def _plain(value: Any) -> Any:
    """numpy scalar -> Python scalar, so vocabularies are JSON- and ``weights_only``-safe."""
    return value.item() if isinstance(value, np.generic) else value


def domain_indices(frame: pd.DataFrame, spec: TableSpec) -> np.ndarray:
    """Domain index per row; a value with no domain is a data error (it would silently drop rows)."""
    keys = list(spec.domain_of_value)
    targets = np.asarray([spec.domain_of_value[k] for k in keys], dtype=np.int64)
    values = frame[spec.domain_column].to_numpy()
    pos = pd.Index(keys).get_indexer(values)
    bad = np.flatnonzero(pos < 0)
    if bad.size:
        raise UserInputError(
            f"{spec.name}: row {int(bad[0])} has {spec.domain_column}={values[bad[0]]!r}, which belongs to "
            f"no domain (known values: {keys})"
        )
    return targets[pos]


def minmax_scale(values: np.ndarray, train_idx: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Scale by the train min/max; a constant train column becomes all zeros (no division by zero)."""
    train = values[train_idx]
    low, high = float(np.nanmin(train)), float(np.nanmax(train))
    span = high - low
    scaled = (values - low) / span if span > 0 else np.zeros_like(values, dtype=np.float64)
    return np.nan_to_num(scaled, nan=0.0).astype(np.float32), low, high


DENSE_SCALINGS: tuple[str, ...] = ("minmax", "standard", "log1p", "none")


def check_dense_scaling(kind: Any, column: str, setting: str = "dense scaling") -> str:
    """Fail with one line on a scaling name that is not one of :data:`DENSE_SCALINGS`."""
    if kind not in DENSE_SCALINGS:
        raise UserInputError(f"{setting} of dense column {column!r} is {kind!r}; "
                             f"use one of {', '.join(DENSE_SCALINGS)}")
    return str(kind)


def standard_scale(values: np.ndarray, train_idx: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(x - mean) / std`` with the train mean and (population) std; a constant column becomes zeros.

    A missing value becomes 0 (the train mean), as in :func:`minmax_scale`.
    """
    train = values[train_idx]
    mean = float(np.nanmean(train)) if np.isfinite(train).any() else 0.0
    std = float(np.nanstd(train)) if np.isfinite(train).any() else 0.0
    scaled = (values - mean) / std if std > 0 else np.zeros_like(values, dtype=np.float64)
    return np.nan_to_num(scaled, nan=0.0).astype(np.float32), mean, std


def signed_log1p(values: np.ndarray) -> np.ndarray:
    """``sign(x) * log1p(|x|)``: ``log1p`` for the non-negative counts it is meant for, and still defined
    (odd-symmetric) for the occasional negative value."""
    return np.sign(values) * np.log1p(np.abs(values))


def scale_dense(values: np.ndarray, train_idx: np.ndarray, kind: str = "minmax") -> tuple[np.ndarray, list[float]]:
    """Scale one dense column with statistics of the train rows only; returns the values and the fitted
    parameters (``minmax``/``log1p``: train min and max after the transform; ``standard``: mean, std).

    ``log1p`` is :func:`signed_log1p` followed by min-max (heavy-tailed counts end up in about [0, 1]);
    ``none`` keeps the values as they are (missing -> 0).
    """
    if kind == "minmax":
        scaled, low, high = minmax_scale(values, train_idx)
        return scaled, [low, high]
    if kind == "log1p":
        scaled, low, high = minmax_scale(signed_log1p(values), train_idx)
        return scaled, [low, high]
    if kind == "standard":
        scaled, mean, std = standard_scale(values, train_idx)
        return scaled, [mean, std]
    if kind == "none":
        return np.nan_to_num(values, nan=0.0).astype(np.float32), []
    check_dense_scaling(kind, "?")
    raise AssertionError("unreachable")


def _check_inputs(frame: pd.DataFrame, spec: TableSpec, splits: tuple[np.ndarray, ...]) -> None:
    needed = [*spec.sparse, *spec.dense, *spec.tasks, spec.domain_column,
              *([spec.region_column] if spec.region_column else [])]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(f"{spec.name}: frame lacks column(s) {missing}")
    if len(splits[0]) == 0:
        raise UserInputError(f"{spec.name}: the train split is empty ({len(frame)} rows in total)")


def _split(sparse: np.ndarray, dense: np.ndarray, domain: np.ndarray, labels: np.ndarray,
           idx: np.ndarray) -> EncodedSplit:
    return EncodedSplit(
        sparse=torch.from_numpy(np.ascontiguousarray(sparse[idx])),
        dense=torch.from_numpy(np.ascontiguousarray(dense[idx])),
        domain=torch.from_numpy(np.ascontiguousarray(domain[idx])),
        labels=torch.from_numpy(np.ascontiguousarray(labels[idx])),
    )


def encode_table(
    frame: pd.DataFrame,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    test_idx: np.ndarray,
    spec: TableSpec,
) -> EncodedDataset:
    """Encode ``frame`` (one row per example) into an :class:`EncodedDataset` split by the indices.

    ``schema.extras`` records the dataset name, the dense train ranges and ``spec.extras`` (kept small:
    the schema is printed and stored in checkpoints).
    """
    _check_inputs(frame, spec, (train_idx, val_idx, test_idx))
    n = len(frame)
    domain = domain_indices(frame, spec)

    sparse_names = list(spec.sparse) + ([spec.domain_feature] if spec.domain_feature else [])
    sparse = np.empty((n, len(sparse_names)), dtype=np.int64)
    features: list[SparseFeature] = []
    for j, name in enumerate(sparse_names):
        column = domain if name == spec.domain_feature else frame[name]
        vocab = fit_vocabulary(column, train_idx)
        sparse[:, j] = vocab.ids
        features.append(SparseFeature(name=name, vocab_size=vocab.size, embed_dim=spec.embed_dim))

    dense = np.empty((n, len(spec.dense)), dtype=np.float32)
    ranges: dict[str, list[float]] = {}
    scalings: dict[str, list[Any]] = {}  # only columns not scaled min-max (keeps old extras unchanged)
    for j, name in enumerate(spec.dense):
        kind = check_dense_scaling(spec.dense_scaling.get(name, "minmax"), name)
        dense[:, j], params = scale_dense(frame[name].to_numpy(np.float64), train_idx, kind)
        if kind == "minmax":
            ranges[name] = params
        else:
            scalings[name] = [kind, *params]

    labels = frame[list(spec.tasks)].to_numpy(np.float32)
    extras = {"dataset": spec.name, "dense_range": ranges, **({"dense_scaling": scalings} if scalings else {}),
              **dict(spec.extras)}
    json.dumps(extras)  # extras travel through the cache as JSON: fail here, not at save time
    schema = FeatureSchema(
        sparse=tuple(features),
        dense=tuple(DenseFeature(name) for name in spec.dense),
        domains=tuple(spec.domains),
        tasks=tuple(spec.tasks),
        extras=extras,
    )
    return EncodedDataset(
        schema=schema,
        train=_split(sparse, dense, domain, labels, train_idx),
        val=_split(sparse, dense, domain, labels, val_idx),
        test=_split(sparse, dense, domain, labels, test_idx),
        regions=None if spec.region_column is None else row_keys(
            frame[spec.region_column], {"train": train_idx, "val": val_idx, "test": test_idx}, spec.name),
    )


def row_keys(column: pd.Series, splits: Mapping[str, np.ndarray], dataset: str) -> RowKeys:
    """Each split's rows of ``column`` as codes into its distinct values (as strings); none may be missing."""
    codes, uniques = _codes_and_uniques(column)
    if (codes < 0).any():
        raise ValueError(f"{dataset}: region column {column.name!r} has a missing value at row "
                         f"{int(np.flatnonzero(codes < 0)[0])}")
    return RowKeys(names=tuple(str(u) for u in uniques),
                   codes={name: torch.from_numpy(np.ascontiguousarray(codes[idx])) for name, idx in splits.items()})
