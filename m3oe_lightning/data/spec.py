"""The model's :class:`FeatureSchema` from the feature specification alone, without opening a data file.

In a federation every site encodes its own rows; the coordinator (the Flower server) holds none, yet it must
build the global model, and the model's shape is the schema: each sparse feature's vocabulary size, the dense
columns, the domains and the tasks. Those are known without rows only when the settings fix them:
``data.vocabulary`` hashed or an agreed file (sizes from ``data.hash_buckets`` or the file), ``data.domains``
given (its names' order is the domain order). :func:`spec_schema` builds that schema; it equals (``==``) the
schema each site gets by loading its file with the same settings, which ``tests/unit/test_feature_spec.py``
checks. A setting that makes the schema depend on the rows is refused with one line naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from m3oe_lightning.data.encode import (
    DOMAIN_FEATURE,
    FITTED,
    HASHED,
    VOCABULARY_SETTING,
    VocabularyPolicy,
    domain_vocabulary,
    vocabulary_policy,
)
from m3oe_lightning.data.readers import movielens, tabular
from m3oe_lightning.data.registry import plain
from m3oe_lightning.data.schema import DenseFeature, FeatureSchema, SparseFeature
from m3oe_lightning.errors import UserInputError

# the data.* keys MDMTDataModule takes itself (everything else is the reader's); kept equal to its signature
# by tests/unit/test_feature_spec.py, so that this module need not import Lightning
DATAMODULE_SETTINGS: frozenset[str] = frozenset({
    "_target_", "name", "root", "split", "split_seed", "download", "batch_size", "eval_batch_size", "cache_dir",
    "seed", "storage", "chunk_rows", "block_rows", "memmap_dir", "duplicates",
})
MOVIELENS = ("movielens1m", "movielens100k")
PLACEHOLDER_PATH = "<not read by spec_schema>"  # data.path is required by the settings, never opened here


def _reader_options(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The reader's settings of a ``data`` config (a DictConfig or a dict): keys the datamodule takes are
    skipped before their values are read, so interpolations such as ``${paths.cache_dir}`` need not resolve."""
    return {str(key): plain(data_cfg[key]) for key in data_cfg if str(key) not in DATAMODULE_SETTINGS}


def _require_shared(policy: VocabularyPolicy, dataset: str) -> None:
    if not policy.shared:
        raise UserInputError(f"{VOCABULARY_SETTING}={FITTED}: data={dataset} ids are fitted on each table's train "
                             f"rows, so the schema depends on the data; set +{VOCABULARY_SETTING}={HASHED} or "
                             f"+{VOCABULARY_SETTING}=<the federation's JSON vocabulary file>")


def _sparse_features(policy: VocabularyPolicy, features: list[str] | tuple[str, ...], num_domains: int,
                     embed_dim: int) -> tuple[SparseFeature, ...]:
    sizes = [(name, policy.vocab_size(name)) for name in features]
    sizes.append((DOMAIN_FEATURE, domain_vocabulary(num_domains).size))
    return tuple(SparseFeature(name=name, vocab_size=size, embed_dim=embed_dim) for name, size in sizes)


def _tabular_schema(options: dict[str, Any], base: Path) -> FeatureSchema:
    if options.get("path") in (None, ""):
        options = {**options, "path": PLACEHOLDER_PATH}
    s = tabular.tabular_settings(**options)
    policy = vocabulary_policy(s, base)
    _require_shared(policy, "tabular")
    if s["domains"] is None:
        raise UserInputError("data.domains=null: data=tabular then makes one domain per distinct value found in the "
                             "rows, so the schema depends on the data; set data.domains={value: domain_name, ...}")
    domains = tuple(dict.fromkeys(s["domains"].values()))
    return FeatureSchema(
        sparse=_sparse_features(policy, s["sparse_features"], len(domains), s["embed_dim"]),
        dense=tuple(DenseFeature(name) for name in s["dense_features"]),
        domains=domains,
        tasks=tuple(s["tasks"]),
        extras={"dataset": "tabular", "vocabulary": policy.kind, "source": "spec_schema"},
    )


def _movielens_schema(dataset: str, options: dict[str, Any]) -> FeatureSchema:
    spec = movielens.table_spec(dataset, movielens.movielens_settings(dataset, **options))
    _require_shared(spec.vocabulary, dataset)
    return FeatureSchema(
        sparse=_sparse_features(spec.vocabulary, spec.sparse, len(spec.domains), spec.embed_dim),
        dense=tuple(DenseFeature(name) for name in spec.dense),
        domains=spec.domains,
        tasks=spec.tasks,
        extras={"dataset": dataset, "vocabulary": spec.vocabulary.kind, "source": "spec_schema"},
    )


def spec_schema(data_cfg: Mapping[str, Any]) -> FeatureSchema:
    """The schema a site loading its rows with ``data_cfg`` gets, built from the settings alone.

    ``data_cfg`` is the run's ``data`` config (``cfg.data``, or a plain dict with ``name`` and the reader's
    settings). A relative vocabulary file is found as the reader finds it: under ``data.root`` (else the working
    directory) for ``data=tabular``, in the working directory for MovieLens.
    """
    name = data_cfg.get("name")
    options = _reader_options(data_cfg)
    if name == "tabular":
        root = data_cfg.get("root")
        return _tabular_schema(options, Path(root).expanduser() if root not in (None, "") else Path.cwd())
    if name in MOVIELENS:
        return _movielens_schema(str(name), options)
    raise UserInputError(f"data={name}: a schema without data is built for data=tabular and "
                         f"{', '.join(f'data={m}' for m in MOVIELENS)} only")


__all__ = ["DATAMODULE_SETTINGS", "spec_schema"]
