"""``data=tabular``: any CSV or Parquet table as a multi-domain multi-task dataset, driven by config only.

One row per example. The config names the files (``data.path``: a file, a glob, or a folder of part
files), the column whose values define the domains, the tasks (a 0/1 label column, or a threshold rule on
a numeric column), and the sparse and dense feature columns::

    path: data/ratings/*.parquet
    domain_column: region
    domains: {EU: europe, UK: europe, US: america}   # optional; unlisted values are dropped
    tasks: {click: "rating >= 4", like: "rating == 5", buy: purchased}
    sparse_features: [user_id, item_id, category]
    dense_features: {age: minmax, price: log1p}      # minmax | standard | log1p | none

Everything the reader needs is checked before anything is encoded, and every problem is one
:class:`UserInputError` naming the setting, the column, the file and the first bad line (CSV) or row
(Parquet): a missing column, a dense value that is not a number, a label outside {0, 1}, a rule on an
empty or non-numeric value, a listed domain without rows. With ``data.duplicate_key`` (columns, e.g.
``[user_id, item_id]``; default none) a row repeating an earlier row's key is handled by
``data.duplicates`` (drop | error | keep) before the split. ``data.vocabulary`` (fitted | hashed | a JSON
file), ``data.hash_buckets`` and ``data.dense_params`` are the federation's feature specification
(:mod:`m3oe_lightning.data.spec`): given, every site encodes a value alike without pooling rows.

The helpers here (:func:`read_checked`, :class:`RowOrigins`, :func:`encode_frame`) are shared by the
other file readers (KuaiRand, AliExpress, Open Bandit).
"""

from __future__ import annotations

import dataclasses
import glob
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from m3oe_lightning.data.duplicates import DEFAULT_POLICY, handle_duplicates
from m3oe_lightning.data.encode import (
    DENSE_SCALINGS,
    SPEC_SETTINGS,
    TableSpec,
    VocabularyPolicy,
    check_dense_scaling,
    encode_table,
    feature_spec_settings,
    vocabulary_path,
    vocabulary_policy,
)
from m3oe_lightning.data.encoders import LABEL_OPS
from m3oe_lightning.data.readers.frames import shown
from m3oe_lightning.data.schema import EncodedDataset
from m3oe_lightning.data.splits import TRAINING_SPLITS, check_fractions, check_split_kind, require_rows, split_indices
from m3oe_lightning.data.textio import (
    RowLocator,
    as_numbers,
    as_string_category,
    first_non_numeric,
    read_table,
    require_table_columns,
    table_format,
)
from m3oe_lightning.errors import UserInputError, check_int

DOMAIN_COLUMN = "__domain__"  # the encoded frame's domain index column (never a user column name)
RESERVED_NAMES = ("domain", DOMAIN_COLUMN)  # "domain" is the sparse feature encode_table appends
MAX_IMPLICIT_DOMAINS = 64  # more distinct values than this without data.domains is almost surely a mistake
_NAME_RE = re.compile(r"[A-Za-z0-9_.\- ]+")  # what a domain/task name may hold (it becomes a metric key)
_RULE_RE = re.compile(r"^\s*(?P<column>[^\s<>=!]+)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>\S+)\s*$")
_OPS = LABEL_OPS  # the rules' operators (scoring applies the same ones to raw rows)
_GLOB_CHARS = set("*?[")


# --- names and rules ------------------------------------------------------------------------------------


def check_name(name: Any, setting: str) -> str:
    """Domain and task names become MLflow metric keys (``val/auc/<domain>/<task>``): keep them plain."""
    text = str(name)
    if not _NAME_RE.fullmatch(text):
        raise UserInputError(f"{setting}: name {text!r} may only hold letters, digits, '_', '-', '.' and spaces")
    return text


def safe_name(value: Any) -> str:
    """A domain name made from a raw value (``data.domains`` not given): odd characters become ``_``."""
    text = re.sub(r"[^A-Za-z0-9_.\- ]", "_", str(value)).strip()
    return text or "_"


@dataclass(frozen=True)
class TaskRule:
    """How one task's 0/1 label comes from the table: a label column, or ``<column> <op> <number>``."""

    task: str
    column: str
    op: str | None = None
    threshold: float | None = None

    @property
    def text(self) -> str:
        return self.column if self.op is None else f"{self.column} {self.op} {self.threshold:g}"

    @classmethod
    def parse(cls, task: str, spec: Any) -> TaskRule:
        setting = f"data.tasks.{task}"
        if not isinstance(spec, str) or not spec.strip():
            raise UserInputError(f"{setting}={spec!r}: give a 0/1 label column (e.g. is_click) or a rule such "
                                 f"as 'rating >= 4'")
        match = _RULE_RE.match(spec)
        if match is None:
            if any(ch in spec for ch in "<>=!") or len(spec.split()) != 1:
                raise UserInputError(f"{setting}={spec!r} is neither a column name nor a rule "
                                     f"'<column> <op> <number>' with op one of {', '.join(_OPS)}")
            return cls(task=task, column=spec.strip())
        try:
            threshold = float(match["value"])
        except ValueError:
            threshold = math.nan
        if not math.isfinite(threshold):
            raise UserInputError(f"{setting}={spec!r}: the rule's right-hand side must be a number, "
                                 f"got {match['value']!r}")
        return cls(task=task, column=match["column"], op=match["op"], threshold=threshold)


# --- settings -------------------------------------------------------------------------------------------

TABULAR_DEFAULTS: dict[str, Any] = {
    "path": None,
    "domain_column": None,
    "tasks": None,
    "sparse_features": [],
    "dense_features": {},
    "domains": None,
    "strict": False,
    "delimiter": ",",
    "split_fractions": [0.8, 0.1, 0.1],
    "embed_dim": 16,
    "duplicate_key": None,  # optional (+data.duplicate_key=[...]): columns identifying one interaction
    # optional, the feature specification (+data.vocabulary=hashed, ...): absent = everything fitted locally
    "vocabulary": None,
    "hash_buckets": None,
    "dense_params": None,
}


def reject_unknown(dataset: str, options: Mapping[str, Any], known: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UserInputError(f"unknown data settings for {dataset}: {unknown}; known: {', '.join(sorted(known))}")


def _string_list(value: Any, setting: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) and v for v in value):
        raise UserInputError(f"{setting}={value!r}: give a list of column names")
    duplicated = sorted({v for v in value if list(value).count(v) > 1})
    if duplicated:
        raise UserInputError(f"{setting} lists {duplicated} more than once")
    return list(value)


def dense_scalings(value: Any, setting: str = "data.dense_features") -> dict[str, str]:
    """``{column: scaling}`` from a mapping, or from a list of columns (all ``minmax``)."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        out: dict[str, str] = {}
        for column, kind in value.items():
            out[str(column)] = check_dense_scaling("minmax" if kind is None else kind, str(column), setting)
        return out
    return {column: "minmax" for column in _string_list(value, setting)}


def tabular_settings(**options: Any) -> dict[str, Any]:
    """Check ``data.*`` settings of ``data=tabular`` and return them complete and canonical (this dict also
    keys the cache). Fails before any file is opened."""
    reject_unknown("tabular", options, TABULAR_DEFAULTS)
    s = {**TABULAR_DEFAULTS, **options}
    if not s["path"] or not isinstance(s["path"], str):
        raise UserInputError("data=tabular needs data.path: a CSV/Parquet file, a glob such as "
                             "'events/*.parquet', or a folder of part files")
    if not s["domain_column"] or not isinstance(s["domain_column"], str):
        raise UserInputError("data=tabular needs data.domain_column: the column whose values define the domains")
    if not isinstance(s["tasks"], Mapping) or not s["tasks"]:
        raise UserInputError("data=tabular needs data.tasks: a mapping task name -> 0/1 label column or rule, "
                             "e.g. {click: is_click} or {click: 'rating >= 4'}")
    rules = [TaskRule.parse(check_name(task, "data.tasks"), spec) for task, spec in s["tasks"].items()]
    sparse = _string_list(s["sparse_features"], "data.sparse_features")
    dense = dense_scalings(s["dense_features"])
    both = sorted(set(sparse) & set(dense))
    if both:
        raise UserInputError(f"{both} are in both data.sparse_features and data.dense_features; pick one")
    features = [*sparse, *dense]
    for name in features:
        if name in RESERVED_NAMES:
            raise UserInputError(f"feature column {name!r} clashes with the domain feature the encoder adds; "
                                 f"rename the column")
    for rule in rules:
        if rule.column in features:
            raise UserInputError(f"data.tasks.{rule.task} reads column {rule.column!r}, which is also a feature: "
                                 f"a feature must not contain the label")
        if rule.task in features or rule.task in RESERVED_NAMES:
            raise UserInputError(f"task name {rule.task!r} is also a feature column name; rename the task")
    domains = s["domains"]
    if domains is not None:
        if not isinstance(domains, Mapping) or not domains:
            raise UserInputError(f"data.domains={domains!r}: give a mapping value -> domain name (several values "
                                 f"may share a name), or null for one domain per distinct value")
        domains = {str(value): check_name(name, "data.domains") for value, name in domains.items()}
    delimiter = s["delimiter"]
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise UserInputError(f"data.delimiter={delimiter!r}: give one character, e.g. ',' or '\\t'")
    embed_dim = s["embed_dim"]
    check_int("data.embed_dim", embed_dim)
    duplicate_key = _string_list(s["duplicate_key"], "data.duplicate_key")
    return {
        "path": s["path"],
        "domain_column": s["domain_column"],
        "tasks": {rule.task: rule.text for rule in rules},
        "sparse_features": sparse,
        "dense_features": dense,
        "domains": domains,
        "strict": bool(s["strict"]),
        "delimiter": delimiter,
        "split_fractions": check_fractions("data.split_fractions", s["split_fractions"], nonempty=TRAINING_SPLITS),
        "embed_dim": embed_dim,
        **({"duplicate_key": duplicate_key} if duplicate_key else {}),  # absent by default: cache keys kept
        **feature_spec_settings({k: s[k] for k in SPEC_SETTINGS}, sparse=sparse, dense=dense),  # likewise
    }


def tabular_duplicate_key(settings: Mapping[str, Any]) -> str | None:
    """How ``data.duplicate_key`` is named in messages (``(user_id, item_id)``), or None when it is not set."""
    key = settings.get("duplicate_key") or []
    return f"({', '.join(key)})" if key else None


# --- files ----------------------------------------------------------------------------------------------


def _is_table_file(path: Path) -> bool:
    if not path.is_file() or path.name.startswith(("_", ".")):  # _SUCCESS, .crc files of Spark outputs
        return False
    try:
        table_format(path)
    except UserInputError:
        return False
    return True


def resolve_table_files(path_text: str, base: Path, setting: str = "data.path") -> list[Path]:
    """The files ``data.path`` names, sorted: one file, a glob's matches, or a folder's table files.

    A relative path starts at ``base`` (``data.root`` when given, else the working directory).
    """
    path = Path(path_text).expanduser()
    full = path if path.is_absolute() else base / path
    if _GLOB_CHARS & set(path_text):
        files = sorted(p for p in map(Path, glob.glob(str(full))) if _is_table_file(p))
        if not files:
            raise UserInputError(f"{setting}={path_text!r}: no CSV or Parquet file matches {full}")
        return files
    if full.is_dir():
        files = sorted(p for p in full.iterdir() if _is_table_file(p))
        if not files:
            raise UserInputError(f"{setting}={path_text!r}: folder {full} holds no *.csv or *.parquet files")
        return files
    if full.is_file():
        table_format(full)  # a clear error for an unknown extension
        return [full]
    raise UserInputError(f"{setting}={path_text!r}: {full} does not exist")


@dataclass
class RowOrigins:
    """Where each row of a concatenation of files came from, to name ``<file>, line N`` in errors."""

    locators: list[RowLocator] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    total: int = 0

    def add(self, locator: RowLocator, n_rows: int) -> None:
        self.locators.append(locator)
        self.starts.append(self.total)
        self.total += n_rows

    def where(self, row: int) -> str:
        k = int(np.searchsorted(np.asarray(self.starts), row, side="right")) - 1
        return self.locators[k].where(row - self.starts[k])

    def files(self) -> str:
        paths = [str(loc.path) for loc in self.locators]
        return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _shown(value: Any) -> str:
    return "an empty field" if value is None or (isinstance(value, float) and math.isnan(value)) or pd.isna(value) \
        else repr(value.item() if isinstance(value, np.generic) else value)


def numeric_column(frame: pd.DataFrame, column: str, locator: RowLocator, why: str, *,
                   allow_missing: bool = True) -> np.ndarray:
    """``frame[column]`` as float64; a non-number (or, unless allowed, an empty field) is an error."""
    series = frame[column]
    pos = first_non_numeric(series)
    if pos is not None:
        raise UserInputError(f"{locator.where(pos)}: {column} ({why}) must be a number, got {_shown(series.iloc[pos])}")
    values = as_numbers(series)
    if not allow_missing:
        missing = np.flatnonzero(np.isnan(values))
        if missing.size:
            raise UserInputError(f"{locator.where(int(missing[0]))}: {column} ({why}) is empty")
    return values


def binary_labels(values: np.ndarray, locator: RowLocator, column: str, why: str) -> np.ndarray:
    """0/1 labels as int8; any other value (including an empty field) names its line."""
    bad = np.flatnonzero(~np.isin(values, (0.0, 1.0)))
    if bad.size:
        pos = int(bad[0])
        raise UserInputError(f"{locator.where(pos)}: label {column} ({why}) must be 0 or 1, got {shown(values[pos])}")
    return values.astype(np.int8)


def rule_labels(frame: pd.DataFrame, rule: TaskRule, locator: RowLocator) -> np.ndarray:
    """The task's 0/1 labels: the label column checked, or the rule applied to a numeric column."""
    why = f"data.tasks.{rule.task}"
    values = numeric_column(frame, rule.column, locator, why, allow_missing=rule.op is None)
    if rule.op is None:
        return binary_labels(values, locator, rule.column, why)
    return _OPS[rule.op](values, rule.threshold).astype(np.int8)


def concat_columns(parts: list[pd.Categorical]) -> pd.Categorical:
    """Stack per-file categoricals (categories stay strings, codes stay small)."""
    return parts[0] if len(parts) == 1 else pd.api.types.union_categoricals(parts)


@dataclass
class TableColumns:
    """Columns read from one or more files: ``text`` (string categoricals), ``numbers`` (float64), ``labels``
    (int8 per task), and where each row came from."""

    text: dict[str, pd.Categorical]
    numbers: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    origins: RowOrigins

    def __len__(self) -> int:
        return self.origins.total


def read_checked(
    files: Sequence[Path],
    *,
    needed: Mapping[str, str],
    text: Sequence[str] = (),
    numbers: Mapping[str, str] | None = None,
    rules: Sequence[TaskRule] = (),
    delimiter: str = ",",
) -> TableColumns:
    """Read ``needed`` columns (column -> the setting asking for it) of every file, checked file by file.

    ``text`` columns come back as string categoricals, ``numbers`` columns (column -> why) as float64 (a
    non-number is an error at its line), and each rule's labels as int8 (0/1 checked). A column may be
    both text and numbers (e.g. a numeric domain column that is also a dense feature).
    """
    numbers = dict(numbers or {})
    origins = RowOrigins()
    text_parts: dict[str, list[pd.Categorical]] = {c: [] for c in text}
    number_parts: dict[str, list[np.ndarray]] = {c: [] for c in numbers}
    label_parts: dict[str, list[np.ndarray]] = {rule.task: [] for rule in rules}
    # columns read only as text come as dictionaries (cheap); the others with their inferred type
    as_dictionary = [c for c in text if c not in numbers and c not in {r.column for r in rules}]
    for path in files:
        require_table_columns(path, dict(needed), delimiter=delimiter)
        frame, locator = read_table(path, list(needed), category_columns=as_dictionary,
                                    float_columns=[c for c in numbers if c not in text], delimiter=delimiter)
        for rule in rules:
            label_parts[rule.task].append(rule_labels(frame, rule, locator))
        for column, why in numbers.items():
            number_parts[column].append(numeric_column(frame, column, locator, why))
        for column in text:
            text_parts[column].append(as_string_category(frame[column]))
        origins.add(locator, len(frame))
    return TableColumns(
        text={c: concat_columns(parts) for c, parts in text_parts.items()},
        numbers={c: np.concatenate(parts) for c, parts in number_parts.items()},
        labels={t: np.concatenate(parts) for t, parts in label_parts.items()},
        origins=origins,
    )


# --- domains --------------------------------------------------------------------------------------------


def _natural_order(values: list[str]) -> list[str]:
    """Numbers in numeric order when every value is a number, otherwise text order."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


@dataclass(frozen=True)
class DomainAssignment:
    domains: tuple[str, ...]
    index: np.ndarray  # domain index per kept row
    keep: np.ndarray  # row numbers (into the unfiltered table) that are kept
    dropped: int
    column: str = ""  # the raw column the domains come from
    value_to_domain: Mapping[str, int] = field(default_factory=dict)  # its value (text) -> domain index


def by_name(domains: Sequence[str]) -> dict[str, Any]:
    """A :class:`DomainAssignment`'s raw side for a reader whose domains come from its files (a country's
    folder, a campaign's): a scoring request names each row's domain in a ``domain`` column."""
    return {"column": "domain", "value_to_domain": {str(name): d for d, name in enumerate(domains)}}


def assign_domains(
    values: pd.Categorical,
    mapping: Mapping[str, str] | None,
    *,
    column: str,
    origins: RowOrigins,
    strict: bool,
    label: str,
    setting: str = "data.domains",
    allow_empty: bool = False,
) -> DomainAssignment:
    """Domain index of every row from its ``column`` value (text).

    With ``mapping`` (value -> name; order of first appearance gives the domain order) rows whose value is
    not listed are dropped with a printed count, or are an error at their line when ``strict``; every
    listed domain must keep rows, unless ``allow_empty`` (a shared feature specification: the domains are the
    federation's, and a site may hold rows of only some of them; each such domain is named on one line).
    Without it each distinct value is a domain (natural order).
    """
    values = pd.Categorical(values)
    codes = values.codes.astype(np.int64)
    categories = [str(c) for c in values.categories]
    if mapping is None:
        if len(categories) > MAX_IMPLICIT_DOMAINS:
            raise UserInputError(f"{column} has {len(categories)} distinct values in {origins.files()}; that many "
                                 f"domains is surely not meant: list the values to use in {setting}")
        ordered = _natural_order(categories)
        names = [safe_name(v) for v in ordered]
        if len(set(names)) != len(names):
            raise UserInputError(f"{column} values {ordered} give clashing domain names; name them in {setting}")
        value_to_domain = {v: i for i, v in enumerate(ordered)}
        domains = tuple(names)
    else:
        domains = tuple(dict.fromkeys(mapping.values()))
        value_to_domain = {v: domains.index(name) for v, name in mapping.items()}
    lookup = np.asarray([value_to_domain.get(c, -1) for c in categories] + [-1], dtype=np.int64)
    index = lookup[codes]  # code -1 (missing value) reads the last slot
    unlisted = np.flatnonzero(index < 0)
    if unlisted.size and strict:
        row = int(unlisted[0])
        got = "an empty field" if codes[row] < 0 else repr(categories[codes[row]])
        raise UserInputError(f"{origins.where(row)}: {column}={got} is not one of the domains in {setting} "
                             f"(data.strict=true; set it false to drop such rows)")
    if unlisted.size:
        shown = sorted({categories[c] if c >= 0 else "<empty>" for c in codes[unlisted[:100_000]]})
        more = "" if len(shown) <= 8 else f", ... ({len(shown)} values)"
        print(f"{label}: dropped {unlisted.size:,} of {len(codes):,} rows whose {column} is not in {setting} "
              f"({', '.join(shown[:8])}{more})")
    keep = np.flatnonzero(index >= 0)
    counts = np.bincount(index[keep], minlength=len(domains))
    for d, name in enumerate(domains):
        if counts[d] == 0:
            values_of = [v for v, i in value_to_domain.items() if i == d]
            present = ", ".join(categories[:12]) + (" ..." if len(categories) > 12 else "")
            if allow_empty:
                print(f"{label}: domain {name!r} ({column} = {', '.join(values_of)}) has no rows in "
                      f"{origins.files()} (kept: the shared specification lists it)")
                continue
            raise UserInputError(f"{setting}: domain {name!r} ({column} = {', '.join(values_of)}) has no rows in "
                                 f"{origins.files()}; the {column} values there are {present}")
    return DomainAssignment(domains=domains, index=index[keep], keep=keep, dropped=int(unlisted.size), column=column,
                            value_to_domain={str(v): int(i) for v, i in value_to_domain.items()})


# --- encoding -------------------------------------------------------------------------------------------


def take(values: Any, rows: np.ndarray) -> Any:
    """Rows of a column (categorical codes are gathered, never expanded to strings)."""
    if isinstance(values, pd.Categorical):
        return pd.Categorical.from_codes(values.codes[rows], dtype=values.dtype)
    return np.asarray(values)[rows]


def encode_frame(
    *,
    name: str,
    table: TableColumns,
    domains: DomainAssignment,
    sparse: Sequence[str],
    dense: Mapping[str, str],
    tasks: Sequence[str],
    split: str,
    split_seed: int,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    embed_dim: int = 16,
    splits: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    extras: Mapping[str, Any] | None = None,
    split_advice: str = "",
    label_rules: Sequence[TaskRule] = (),
    vocabulary: VocabularyPolicy | None = None,
    dense_params: Mapping[str, Sequence[float]] | None = None,
) -> EncodedDataset:
    """Kept rows -> :class:`EncodedDataset` via :func:`encode_table` (train-only vocabularies and scaling, unless
    the feature specification ``vocabulary`` / ``dense_params`` fixes them).

    ``splits`` (row numbers into the kept rows) overrides the ``split``/``split_seed`` split. Every split
    must hold a row (else one line with the counts; ``split_advice`` says which setting to change).
    ``label_rules`` say how each label came from the raw table (kept so that scoring can evaluate on raw rows).
    """
    keep = domains.keep
    frame = pd.DataFrame({
        **{c: take(table.text[c], keep) for c in sparse},
        **{c: take(table.numbers[c], keep) for c in dense},
        **{t: take(table.labels[t], keep) for t in tasks},
        DOMAIN_COLUMN: domains.index,
    })
    if splits is None:
        splits = split_indices(len(frame), split, split_seed, fractions)
    require_rows(splits, advice=f"use more rows{split_advice}")
    spec = TableSpec(
        name=name, sparse=tuple(sparse), dense=tuple(dense), tasks=tuple(tasks), domains=domains.domains,
        domain_column=DOMAIN_COLUMN, domain_of_value={i: i for i in range(len(domains.domains))},
        embed_dim=embed_dim, dense_scaling=dict(dense),
        domain_source=(domains.column, domains.value_to_domain) if domains.column else None,
        label_rules=tuple((r.task, r.column, r.op, r.threshold) for r in label_rules),
        vocabulary=vocabulary or VocabularyPolicy(), dense_params=dict(dense_params or {}),
        extras={"split": split, "split_seed": split_seed, "rows": len(frame), "dropped_rows": domains.dropped,
                **dict(extras or {})},
    )
    return encode_table(frame, *splits, spec)


# --- the tabular dataset --------------------------------------------------------------------------------


def tabular_source_files(folder: Path, **settings: Any) -> list[Path]:
    """The files that key the cache: what ``data.path`` matches (relative to ``folder``), and the vocabulary
    file ``data.vocabulary`` names (its contents decide the ids)."""
    s = tabular_settings(**settings)
    vocabulary = vocabulary_path(s.get("vocabulary", "fitted"), Path(folder))
    return [*resolve_table_files(s["path"], Path(folder)), *([vocabulary] if vocabulary else [])]


def without_duplicates(table: TableColumns, assignment: DomainAssignment, key: Sequence[str],
                       policy: str) -> DomainAssignment:
    """``assignment`` less the rows repeating an earlier kept row's ``key`` columns (``data.duplicates``);
    rows already dropped (outside the domains) are not counted."""
    rows = assignment.keep
    kept = handle_duplicates([take(table.text[c], rows) for c in key], policy=policy,
                             where=lambda row: table.origins.where(int(rows[row])), source=table.origins.files(),
                             key_name=f"({', '.join(key)})")
    if kept is None:
        return assignment
    return dataclasses.replace(assignment, index=assignment.index[kept], keep=assignment.keep[kept],
                               dropped=assignment.dropped + int((~kept).sum()))


def load_tabular(folder: Path, *, split: str = "random", split_seed: int = 2022, duplicates: str = DEFAULT_POLICY,
                 **settings: Any) -> EncodedDataset:
    """Read, check and encode the table ``data.path`` names (see the module docstring)."""
    check_split_kind(split)
    s = tabular_settings(**settings)
    files = resolve_table_files(s["path"], Path(folder))
    policy = vocabulary_policy(s, Path(folder))  # a vocabulary file is read (and checked) before the table
    if policy.shared:
        for feature in s["sparse_features"]:
            policy.vocab_size(feature)  # a feature the file lacks fails here, not after reading the table
    rules = [TaskRule.parse(task, text) for task, text in s["tasks"].items()]
    domain_column = s["domain_column"]
    needed: dict[str, str] = {domain_column: "data.domain_column"}
    for rule in rules:
        needed.setdefault(rule.column, f"data.tasks.{rule.task}")
    needed.update({c: "data.sparse_features" for c in s["sparse_features"] if c not in needed})
    needed.update({c: "data.dense_features" for c in s["dense_features"] if c not in needed})
    key = s.get("duplicate_key", [])
    needed.update({c: "data.duplicate_key" for c in key if c not in needed})
    table = read_checked(
        files, needed=needed, text=list(dict.fromkeys([domain_column, *s["sparse_features"], *key])),
        numbers={c: "data.dense_features" for c in s["dense_features"]}, rules=rules, delimiter=s["delimiter"],
    )
    assignment = assign_domains(table.text[domain_column], s["domains"], column=domain_column,
                                origins=table.origins, strict=s["strict"], label="tabular",
                                allow_empty=policy.shared and s["domains"] is not None)
    if key:
        assignment = without_duplicates(table, assignment, key, duplicates)
    return encode_frame(
        name="tabular", table=table, domains=assignment, sparse=s["sparse_features"],
        dense=s["dense_features"], tasks=[r.task for r in rules], split=split, split_seed=split_seed,
        fractions=s["split_fractions"], embed_dim=s["embed_dim"], split_advice=" or change data.split_fractions",
        extras={"files": len(files), "tasks": s["tasks"]},
        label_rules=rules, vocabulary=policy, dense_params=s.get("dense_params"),
    )


__all__ = [
    "DENSE_SCALINGS", "TableColumns", "TaskRule", "tabular_settings", "resolve_table_files", "read_checked",
    "assign_domains", "encode_frame", "load_tabular", "tabular_source_files", "tabular_duplicate_key",
]
