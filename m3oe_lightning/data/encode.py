"""Raw frame + split indices -> :class:`EncodedDataset` (whole tensors, ready for the datamodule).

Every dataset goes through this one function so that all of them share the same guarantees:

* label encoders are fitted on the **train rows only** (val/test values never leak into the vocabulary);
  a value first seen in val/test, or a missing value, maps to the reserved id 0;
  ``vocab_size = number of distinct train values + 1``; ids follow the sorted order of the values, so
  the same train set always gives the same ids;
* dense columns are min-max scaled with the train minimum and maximum (not clipped: val/test values
  outside the train range fall outside [0, 1]); ``TableSpec.dense_scaling`` may choose another scaling
  per column (:data:`DENSE_SCALINGS`: ``standard``, ``log1p``, ``none``), always fitted on train rows;
* unless a federation's *feature specification* says otherwise (:class:`VocabularyPolicy`,
  ``TableSpec.dense_params``): sparse ids from a hash of each value's text or from an agreed vocabulary
  file, and dense parameters given rather than fitted, so that sites which never pool their rows still give
  a value the same id and a number the same scale (docs/federated-sites.md, "Feature specification");
* the domain of each row is an int64 index into ``spec.domains``; it is also appended as the last sparse
  feature (encoded like the others) because the M3oE reference feeds it to the embedding layer;
* labels are float32 ``[N, T]`` in ``spec.tasks`` order;
* ``spec.region_column`` (when set) becomes :attr:`EncodedDataset.regions`: each row's value as a string.

All of it is vectorised (factorize / categorical codes + fancy indexing); nothing loops over rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from m3oe_lightning.data.encoders import Encoders, Scaler, column_type, lookup_table, value_texts
from m3oe_lightning.data.encoders import Vocabulary as EncoderVocabulary
from m3oe_lightning.data.schema import (
    DenseFeature,
    EncodedDataset,
    EncodedSplit,
    FeatureSchema,
    RowKeys,
    SparseFeature,
)
from m3oe_lightning.errors import UserInputError

DOMAIN_FEATURE = "domain"  # the sparse feature encode_table appends: each row's domain index
FITTED = "fitted"
HASHED = "hashed"
VOCABULARY_FILE = "file"  # VocabularyPolicy.kind of a data.vocabulary that names a JSON file
DEFAULT_HASH_BUCKETS = 1 << 16
VOCABULARY_SETTING = "data.vocabulary"
HASH_BUCKETS_SETTING = "data.hash_buckets"
DENSE_PARAMS_SETTING = "data.dense_params"
SPEC_SETTINGS: tuple[str, ...] = ("vocabulary", "hash_buckets", "dense_params")  # data.* keys of the feature spec


@dataclass(frozen=True)
class VocabularyPolicy:
    """Where sparse ids come from: ``fitted`` on this table's train rows (ids differ between tables),
    ``hashed`` (a hash of each value's text into ``buckets``) or a vocabulary ``file`` the federation agreed on.

    The last two need no rows to know an id or a vocabulary size, which is what lets sites that never pool
    data, and a coordinator that holds none, agree on what each embedding row means.
    """

    kind: str = FITTED
    buckets: Mapping[str, int] = field(default_factory=dict)  # hashed: per feature (else default_buckets)
    default_buckets: int = DEFAULT_HASH_BUCKETS
    values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # file: per feature, values in id order
    source: str = ""  # file: its path (for messages)

    @property
    def shared(self) -> bool:
        """Whether ids are fixed by the specification alone (the same at every site)."""
        return self.kind != FITTED

    def encoder(self, feature: str, kind: str = "string") -> EncoderVocabulary:
        """The vocabulary the specification gives ``feature`` (a shared policy only)."""
        if self.kind == HASHED:
            return EncoderVocabulary(column=feature, values=(), kind=kind,
                                     buckets=int(self.buckets.get(feature, self.default_buckets)))
        if self.kind != VOCABULARY_FILE:
            raise ValueError(f"a {self.kind} vocabulary is fitted on rows, not given by the specification")
        if feature not in self.values:
            raise UserInputError(f"{self.source} ({VOCABULARY_SETTING}) has no entry for feature {feature!r}; "
                                 f"add \"{feature}\": [value, ...] to it (it lists {', '.join(self.values) or 'none'})")
        return EncoderVocabulary(column=feature, values=self.values[feature], kind=kind)

    def vocab_size(self, feature: str) -> int:
        return self.encoder(feature).size


def domain_vocabulary(num_domains: int) -> EncoderVocabulary:
    """The domain feature under a shared policy: every domain of the specification, id = domain index + 1
    (whether or not this table's train rows hold the domain)."""
    return EncoderVocabulary(column=DOMAIN_FEATURE, values=tuple(str(d) for d in range(num_domains)), kind="long")


def check_vocabulary(value: Any) -> str:
    """``data.vocabulary`` as given: ``fitted`` (also for null), ``hashed`` or a path (read later)."""
    if value is None:
        return FITTED
    if not isinstance(value, str) or not value.strip():
        raise UserInputError(f"{VOCABULARY_SETTING}={value!r}: use {FITTED} (ids fitted on this table's train "
                             f"rows), {HASHED} (ids from a hash of each value) or the path of a JSON vocabulary file")
    return value


def check_hash_buckets(value: Any, features: Sequence[str]) -> int | dict[str, int]:
    """``data.hash_buckets``: one integer ≥ 2 for every sparse feature, or ``{feature: integer ≥ 2}``
    (an unlisted feature gets :data:`DEFAULT_HASH_BUCKETS`)."""
    def count(setting: str, n: Any) -> int:
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise UserInputError(f"{setting}={n!r}: use an integer ≥ 2 (id 0 is kept for a missing value, "
                                 f"so a feature needs at least 2 buckets)")
        return n

    if isinstance(value, Mapping):
        unknown = [str(f) for f in value if str(f) not in features]
        if unknown:
            raise UserInputError(f"{HASH_BUCKETS_SETTING} names {unknown[0]!r}, which is not a sparse feature "
                                 f"(sparse features: {', '.join(features) or 'none'})")
        return {str(f): count(f"{HASH_BUCKETS_SETTING}.{f}", n) for f, n in value.items()}
    return count(HASH_BUCKETS_SETTING, value)


SCALING_PARAMS: dict[str, tuple[str, ...]] = {  # what fit_scaling returns for each kind, in order
    "minmax": ("min", "max"),
    "log1p": ("min of sign(x)*log1p(|x|)", "max of sign(x)*log1p(|x|)"),
    "standard": ("mean", "std"),
    "none": (),
}


def check_scaling_params(column: str, kind: str, params: Any, setting: str = DENSE_PARAMS_SETTING) -> list[float]:
    """Parameters given for ``column`` (scaled ``kind``), in :func:`fit_scaling`'s form: the right count of finite
    numbers, ``min <= max``, ``std >= 0``."""
    names = SCALING_PARAMS[check_dense_scaling(kind, column)]
    shape = f"a {kind} column takes [{', '.join(names)}]" if names else f"a {kind} column takes []"
    if isinstance(params, (str, bytes)) or not isinstance(params, Sequence) or len(params) != len(names) or any(
            isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) for p in params):
        raise UserInputError(f"{setting}.{column}={params!r}: {shape} (finite numbers, as fitting them would give)")
    values = [float(p) for p in params]
    if kind in ("minmax", "log1p") and values[0] > values[1]:
        raise UserInputError(f"{setting}.{column}={params!r}: min {values[0]:g} is above max {values[1]:g}")
    if kind == "standard" and values[1] < 0:
        raise UserInputError(f"{setting}.{column}={params!r}: std {values[1]:g} is negative")
    return values


def check_dense_params(value: Any, scalings: Mapping[str, str]) -> dict[str, list[float]]:
    """``data.dense_params`` ({dense column: params}); columns not listed are fitted on train rows as before."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UserInputError(f"{DENSE_PARAMS_SETTING}={value!r}: give {{dense column: [params...]}}, e.g. "
                             f"{{age: [0, 100]}} for a minmax column")
    out: dict[str, list[float]] = {}
    for column, params in value.items():
        if str(column) not in scalings:
            raise UserInputError(f"{DENSE_PARAMS_SETTING} names {str(column)!r}, which is not a dense feature "
                                 f"(dense features: {', '.join(scalings) or 'none'})")
        out[str(column)] = check_scaling_params(str(column), scalings[str(column)], params)
    return out


def feature_spec_settings(options: Mapping[str, Any], *, sparse: Sequence[str],
                          dense: Mapping[str, str]) -> dict[str, Any]:
    """The feature-specification settings (:data:`SPEC_SETTINGS`) checked, canonical, and only where they differ
    from fitting everything locally: a run without them keys its cache and hashes exactly as before."""
    vocabulary = check_vocabulary(options.get("vocabulary"))
    buckets = options.get("hash_buckets")
    if buckets is not None and vocabulary != HASHED:
        raise UserInputError(f"{HASH_BUCKETS_SETTING} is set but {VOCABULARY_SETTING}={vocabulary}; set "
                             f"+{VOCABULARY_SETTING}={HASHED} or drop {HASH_BUCKETS_SETTING}")
    out: dict[str, Any] = {}
    if vocabulary != FITTED:
        out["vocabulary"] = vocabulary
    if vocabulary == HASHED:
        out["hash_buckets"] = DEFAULT_HASH_BUCKETS if buckets is None else check_hash_buckets(buckets, sparse)
    params = check_dense_params(options.get("dense_params"), dense)
    if params:
        out["dense_params"] = params
    return out


def vocabulary_path(vocabulary: str, base: Path) -> Path | None:
    """The JSON file ``data.vocabulary`` names (relative to ``base``), or None for fitted/hashed; a file that
    is not there is one line (a typo of ``hashed`` reads as a path too)."""
    if vocabulary in (FITTED, HASHED):
        return None
    path = Path(vocabulary).expanduser()
    full = path if path.is_absolute() else Path(base) / path
    if not full.is_file():
        raise UserInputError(f"{VOCABULARY_SETTING}={vocabulary!r}: {full} is not a file; use {FITTED}, {HASHED} "
                             f"or the path of a JSON vocabulary file {{\"<feature>\": [\"value\", ...]}}")
    return full


def read_vocabulary_file(path: Path) -> dict[str, tuple[str, ...]]:
    """``{"<feature>": [value, ...]}``: each value (a string or an integer, matched by its text) gets id
    position + 1; any other value gets 0."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise UserInputError(f"{path} ({VOCABULARY_SETTING}) cannot be read: {error.strerror or error}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path} ({VOCABULARY_SETTING}) is not UTF-8 JSON ({error}); it must hold "
                             f"{{\"<feature>\": [\"value\", ...]}}") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path} ({VOCABULARY_SETTING}) must hold one JSON object "
                             f"{{\"<feature>\": [\"value\", ...]}}, not a {type(data).__name__}")
    out: dict[str, tuple[str, ...]] = {}
    for feature, values in data.items():
        if not isinstance(values, list):
            raise UserInputError(f"{path}: feature {feature!r} must map to a list of values, got "
                                 f"{type(values).__name__}")
        bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, (str, int))), None)
        if bad is not None or None in values:
            raise UserInputError(f"{path}: feature {feature!r} holds {bad!r}; values are strings or integers "
                                 f"(matched by their text: 7 and \"7\" are one value)")
        texts = tuple(str(v) for v in values)
        if len(set(texts)) != len(texts):
            twice = next(t for t in texts if texts.count(t) > 1)
            raise UserInputError(f"{path}: feature {feature!r} lists {twice!r} more than once (a value has one id)")
        out[str(feature)] = texts
    return out


def vocabulary_policy(settings: Mapping[str, Any], base: Path) -> VocabularyPolicy:
    """The :class:`VocabularyPolicy` of canonical settings (:func:`feature_spec_settings`); a file is read here."""
    vocabulary = settings.get("vocabulary", FITTED)
    if vocabulary == FITTED:
        return VocabularyPolicy()
    if vocabulary == HASHED:
        buckets = settings.get("hash_buckets", DEFAULT_HASH_BUCKETS)
        if isinstance(buckets, Mapping):
            return VocabularyPolicy(kind=HASHED, buckets=dict(buckets))
        return VocabularyPolicy(kind=HASHED, default_buckets=int(buckets))
    path = vocabulary_path(vocabulary, base)
    assert path is not None
    return VocabularyPolicy(kind=VOCABULARY_FILE, values=read_vocabulary_file(path), source=str(path))


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
    domain_feature: str | None = DOMAIN_FEATURE
    embed_dim: int = 16
    extras: Mapping[str, Any] = field(default_factory=dict)
    dense_scaling: Mapping[str, str] = field(default_factory=dict)
    region_column: str | None = None
    # (key, columns): tables that complete an interaction-only row when scoring (MovieLens: user_id -> gender,
    # occupation, zip, age; movie_id -> genre), taken from the frame's own rows
    lookups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # (raw column, text of its value -> domain index) when the reader computed ``domain_column`` itself
    # (data=tabular's domain assignment): what scoring a raw row starts from
    domain_source: tuple[str, Mapping[str, int]] | None = None
    # (task, column, op, threshold): how a task's label comes from a raw column when it is not the task's own
    # column (``click = rating >= 4``; op None: the column holds the 0/1 label). Scoring with --evaluate
    # applies them to a request that carries those columns.
    label_rules: tuple[tuple[str, str, str | None, float | None], ...] = ()
    # the feature specification: where sparse ids come from, and dense parameters given instead of fitted
    vocabulary: VocabularyPolicy = field(default_factory=VocabularyPolicy)
    dense_params: Mapping[str, Sequence[float]] = field(default_factory=dict)


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


def _span_scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    span = high - low
    return (values - low) / span if span > 0 else np.zeros_like(values, dtype=np.float64)


def _fitted(train: np.ndarray, fit: Callable[[np.ndarray], float]) -> float:
    return float(fit(train)) if np.isfinite(train).any() else 0.0


DENSE_SCALINGS: tuple[str, ...] = ("minmax", "standard", "log1p", "none")


def check_dense_scaling(kind: Any, column: str, setting: str = "dense scaling") -> str:
    """Fail with one line on a scaling name that is not one of :data:`DENSE_SCALINGS`."""
    if kind not in DENSE_SCALINGS:
        raise UserInputError(f"{setting} of dense column {column!r} is {kind!r}; "
                             f"use one of {', '.join(DENSE_SCALINGS)}")
    return str(kind)


def signed_log1p(values: np.ndarray) -> np.ndarray:
    """``sign(x) * log1p(|x|)``: ``log1p`` for the non-negative counts it is meant for, and still defined
    (odd-symmetric) for the occasional negative value."""
    return np.sign(values) * np.log1p(np.abs(values))


def fit_scaling(train: np.ndarray, kind: str) -> list[float]:
    """The parameters of scaling ``kind`` fitted on train values (``minmax``/``log1p``: min and max after the
    transform; ``standard``: mean and population std; ``none``: nothing). A column without a finite train
    value gets zeros (it then scales to all zeros, as a constant column does)."""
    check_dense_scaling(kind, "?")
    if kind == "none":
        return []
    if kind == "standard":
        return [_fitted(train, np.nanmean), _fitted(train, np.nanstd)]
    values = signed_log1p(train) if kind == "log1p" else train
    return [float(np.nanmin(values)), float(np.nanmax(values))]


def apply_scaling(values: np.ndarray, kind: str, params: Sequence[float]) -> np.ndarray:
    """Scale values with fitted parameters: the one transform of training and of scoring new rows. Not
    clipped (values outside the train range fall outside [0, 1]); a missing value becomes 0; a constant
    train column scales to all zeros (no division by zero)."""
    values = np.asarray(values, dtype=np.float64)
    if kind in ("minmax", "log1p"):
        scaled = _span_scale(signed_log1p(values) if kind == "log1p" else values, *params)
    elif kind == "standard":
        mean, std = params
        scaled = (values - mean) / std if std > 0 else np.zeros_like(values, dtype=np.float64)
    elif kind == "none":
        scaled = values
    else:
        check_dense_scaling(kind, "?")
    return np.nan_to_num(scaled, nan=0.0).astype(np.float32)


def scale_dense(values: np.ndarray, train_idx: np.ndarray, kind: str = "minmax") -> tuple[np.ndarray, list[float]]:
    """Scale one dense column with statistics of the train rows only; returns the values and the fitted
    parameters (:func:`fit_scaling`). ``log1p`` is :func:`signed_log1p` followed by min-max (heavy-tailed
    counts end up in about [0, 1]); ``none`` keeps the values as they are (missing -> 0)."""
    params = fit_scaling(np.asarray(values, dtype=np.float64)[train_idx], kind)
    return apply_scaling(values, kind, params), params


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
    vocabularies: list[EncoderVocabulary] = []
    for j, name in enumerate(sparse_names):
        is_domain = name == spec.domain_feature
        column = domain if is_domain else frame[name]
        kind = "long" if is_domain else column_type(frame[name])
        if spec.vocabulary.shared:  # the encoder scoring uses is the one that encodes: bit-identical ids
            vocabulary = domain_vocabulary(len(spec.domains)) if is_domain else spec.vocabulary.encoder(name, kind)
            sparse[:, j], _ = vocabulary.ids(pd.Series(column))
        else:
            fitted = fit_vocabulary(column, train_idx)
            sparse[:, j] = fitted.ids
            vocabulary = EncoderVocabulary(column=name, values=tuple(value_texts(fitted.values)), kind=kind)
        features.append(SparseFeature(name=name, vocab_size=vocabulary.size, embed_dim=spec.embed_dim))
        vocabularies.append(vocabulary)

    dense = np.empty((n, len(spec.dense)), dtype=np.float32)
    ranges: dict[str, list[float]] = {}
    scalings: dict[str, list[Any]] = {}  # only columns not scaled min-max (keeps old extras unchanged)
    scalers: list[Scaler] = []
    for j, name in enumerate(spec.dense):
        kind = check_dense_scaling(spec.dense_scaling.get(name, "minmax"), name)
        values = frame[name].to_numpy(np.float64)
        if name in spec.dense_params:  # given by the specification: the same scale at every site
            params = check_scaling_params(name, kind, spec.dense_params[name])
            dense[:, j] = apply_scaling(values, kind, params)
        else:
            dense[:, j], params = scale_dense(values, train_idx, kind)
        scalers.append(Scaler(column=name, scaling=kind, params=tuple(params), kind=column_type(frame[name])))
        if kind == "minmax":
            ranges[name] = params
        else:
            scalings[name] = [kind, *params]

    labels = frame[list(spec.tasks)].to_numpy(np.float32)
    extras = {"dataset": spec.name, "dense_range": ranges, **({"dense_scaling": scalings} if scalings else {}),
              **({"vocabulary": spec.vocabulary.kind} if spec.vocabulary.shared else {}),
              **({"dense_params_given": sorted(spec.dense_params)} if spec.dense_params else {}),
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
        encoders=fitted_encoders(frame, spec, schema, vocabularies, scalers),
        train=_split(sparse, dense, domain, labels, train_idx),
        val=_split(sparse, dense, domain, labels, val_idx),
        test=_split(sparse, dense, domain, labels, test_idx),
        regions=None if spec.region_column is None else row_keys(
            frame[spec.region_column], {"train": train_idx, "val": val_idx, "test": test_idx}, spec.name),
    )


def fitted_encoders(frame: pd.DataFrame, spec: TableSpec, schema: FeatureSchema,
                    vocabularies: list[EncoderVocabulary], scalers: list[Scaler]) -> Encoders:
    """What scoring a raw row of this table needs (:mod:`m3oe_lightning.data.encoders`): the vocabularies that
    encoded it (the domain feature's last, when there is one) and the scalers."""
    raw = vocabularies[:len(spec.sparse)]
    domain_feature = vocabularies[-1] if spec.domain_feature else None
    if spec.domain_source is not None:
        domain_column, of_value = spec.domain_source[0], dict(spec.domain_source[1])
        domain_kind = "string"
    else:
        keys = list(spec.domain_of_value)
        domain_column = spec.domain_column
        of_value = dict(zip(value_texts(keys), (int(spec.domain_of_value[k]) for k in keys)))
        domain_kind = column_type(frame[spec.domain_column])
    lookups = tuple(lookup_table(frame, key, columns, name=key) for key, columns in spec.lookups)
    return Encoders(dataset=spec.name, schema=schema, sparse=tuple(raw), dense=tuple(scalers),
                    domain_column=domain_column, domain_of_value=of_value, domain_kind=domain_kind,
                    domain_feature=domain_feature, lookups=lookups, label_rules=tuple(spec.label_rules))


def row_keys(column: pd.Series, splits: Mapping[str, np.ndarray], dataset: str) -> RowKeys:
    """Each split's rows of ``column`` as codes into its distinct values (as strings); none may be missing."""
    codes, uniques = _codes_and_uniques(column)
    if (codes < 0).any():
        raise ValueError(f"{dataset}: region column {column.name!r} has a missing value at row "
                         f"{int(np.flatnonzero(codes < 0)[0])}")
    return RowKeys(names=tuple(str(u) for u in uniques),
                   codes={name: torch.from_numpy(np.ascontiguousarray(codes[idx])) for name, idx in splits.items()})
