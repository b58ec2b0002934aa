"""The fitted encoders of a dataset, kept so a trained model can score raw rows it has never seen.

:func:`~m3oe_lightning.data.encode.encode_table` fits, on the train rows only, one vocabulary per sparse
column, one scaler per dense column and the map from the domain column's values to domains. Training needs
only the ids they produce; scoring new rows needs the encoders themselves, so they are recorded here, as
plain files (``encoders.json`` + one Parquet file per vocabulary and lookup table, never a pickle):

* a sparse value is matched by its **text** (``as_string_category``: the integer 7 and the text ``"7"`` are the
  same value, in CSV and Parquet alike); a value outside the vocabulary, or a missing one, gets the reserved
  id 0 exactly as an unseen validation value did in training, and is counted;
* a *hashed* vocabulary (``data.vocabulary=hashed``) holds no values, only its bucket count: a value's id is
  :func:`hashed_ids` of its text, the same function training used, so sites and scoring agree without sharing
  a list of values;
* dense values are scaled with the train statistics (a missing value becomes 0, as in training);
* a domain value the model does not know is an error: there is no tower to score it with;
* a *lookup* completes interaction-only rows: MovieLens rows need only ``user_id, movie_id``, the user's and
  the movie's attributes are joined from the tables the reader joined them from.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from m3oe_lightning.data.schema import Batch, FeatureSchema
from m3oe_lightning.data.textio import as_numbers, as_string_category, first_non_numeric
from m3oe_lightning.errors import UserInputError

FORMAT = 2  # 2: a vocabulary may be hashed (written only then, so older files and readers keep format 1)
READABLE_FORMATS = (1, 2)
ENCODERS_FILE = "encoders.json"
Where = Callable[[int], str]  # row position -> "<file>, line N" (what a user can open)

LABEL_OPS = {">=": np.greater_equal, ">": np.greater, "<=": np.less_equal, "<": np.less, "==": np.equal,
             "!=": np.not_equal}
# a column's type in a scoring request (MLflow signature types): how the raw column was held in training
COLUMN_TYPES = ("long", "double", "string")


def column_type(values: Any) -> str:
    """``long`` / ``double`` / ``string`` for a raw training column (categoricals and objects are text)."""
    kind = getattr(getattr(values, "dtype", None), "kind", "O")
    return {"i": "long", "u": "long", "b": "long", "f": "double"}.get(kind, "string")


def value_texts(values: Sequence[Any] | np.ndarray) -> list[str]:
    """Values as the text :func:`as_string_category` gives them (one rule for training and scoring)."""
    if len(values) == 0:
        return []
    category = as_string_category(pd.Series(np.asarray(values, dtype=object if _mixed(values) else None)))
    return [str(category.categories[c]) for c in category.codes]


def _mixed(values: Sequence[Any] | np.ndarray) -> bool:
    return isinstance(values, list) and len({type(v) for v in values}) > 1


HASH_DIGEST_BYTES = 8  # blake2b digest read as one little-endian uint64


def hashed_ids(texts: Sequence[str] | np.ndarray, buckets: int) -> np.ndarray:
    """``1 + blake2b-64(UTF-8 text) mod (buckets - 1)`` for each text: ids in ``[1, buckets)``, 0 left for missing.

    A keyed cryptographic hash of the bytes, not Python's ``hash`` (salted per process) nor pandas' (may change
    between versions): the same text gets the same id in every process, on every machine, in every release.
    Callers hash distinct values only (a categorical's categories), so the Python loop runs once per value.
    """
    if buckets < 2:
        raise ValueError(f"hashed_ids needs at least 2 buckets, got {buckets}")
    digest = hashlib.blake2b
    joined = b"".join([digest(str(t).encode("utf-8"), digest_size=HASH_DIGEST_BYTES).digest() for t in texts])
    hashes = np.frombuffer(joined, dtype="<u8")
    return (hashes % np.uint64(buckets - 1)).astype(np.int64) + 1


@dataclass(frozen=True)
class Vocabulary:
    """One sparse column: the train values (as text) in id order; id ``k`` is ``values[k - 1]``, 0 = unseen.

    With ``buckets`` set the vocabulary is hashed: ``values`` is empty and a value's id is :func:`hashed_ids`
    of its text (only a missing value gets 0).
    """

    column: str
    values: tuple[str, ...]
    kind: str = "string"  # the raw column's type (for a request's signature)
    buckets: int | None = None

    @property
    def size(self) -> int:
        """The embedding rows this vocabulary addresses (ids ``0 .. size - 1``)."""
        return self.buckets if self.buckets is not None else len(self.values) + 1

    def ids(self, column: pd.Series) -> tuple[np.ndarray, int]:
        """Ids of a raw column and how many of its rows were not in the vocabulary (or missing)."""
        category = as_string_category(column)
        if self.buckets is not None:
            lookup = hashed_ids(np.asarray(category.categories, dtype=object), self.buckets)
        else:
            lookup = pd.Index(self.values).get_indexer(pd.Index(category.categories, dtype=object)) + 1
        codes = category.codes.astype(np.int64)
        ids = np.where(codes >= 0, np.append(lookup, 0)[codes], 0).astype(np.int64)
        return ids, int((ids == 0).sum())


@dataclass(frozen=True)
class Scaler:
    """One dense column's train-fitted scaling (``encode.scale_dense``'s kinds and parameters)."""

    column: str
    scaling: str
    params: tuple[float, ...]
    kind: str = "double"

    def scale(self, values: np.ndarray) -> np.ndarray:
        from m3oe_lightning.data.encode import apply_scaling

        return apply_scaling(values, self.scaling, self.params)


@dataclass(frozen=True)
class Lookup:
    """Columns joined by a key (``user_id`` -> its gender, age, …) when a request lacks them."""

    key: str
    table: pd.DataFrame  # the key column (as text) and the columns it provides, one row per key
    name: str = "lookup"

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c for c in self.table.columns if c != self.key)


@dataclass(frozen=True)
class Encoders:
    """Everything that turns a raw row of one dataset into the network's inputs, fitted on train rows.

    ``sparse`` follows the schema's sparse order except the appended domain feature (``domain_feature``,
    whose vocabulary is over the domain indices); ``domain_of_value`` maps the text of ``domain_column``'s
    value to a domain index.
    """

    dataset: str
    schema: FeatureSchema
    sparse: tuple[Vocabulary, ...]
    dense: tuple[Scaler, ...]
    domain_column: str
    domain_of_value: Mapping[str, int]
    domain_kind: str = "string"
    domain_feature: Vocabulary | None = None
    lookups: tuple[Lookup, ...] = ()
    # (task, column, op, threshold): a task's label from another raw column (``click = rating >= 4``)
    label_rules: tuple[tuple[str, str, str | None, float | None], ...] = ()
    extras: Mapping[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ what a request holds
    @property
    def tasks(self) -> tuple[str, ...]:
        return self.schema.tasks

    def input_columns(self) -> dict[str, tuple[str, bool]]:
        """Each column a request may hold -> (type, required). A column a lookup provides is optional when
        the lookup's key is required; the labels (task columns) are optional and ignored unless evaluated."""
        provided = {c: lookup.key for lookup in self.lookups for c in lookup.columns}
        columns: dict[str, tuple[str, bool]] = {}
        for encoder in (*self.sparse, *self.dense):
            columns.setdefault(encoder.column, (encoder.kind, encoder.column not in provided))
        columns.setdefault(self.domain_column, (self.domain_kind, self.domain_column not in provided))
        for task in self.tasks:
            columns.setdefault(task, ("double", False))
        for _, column, _, _ in self.label_rules:
            columns.setdefault(column, ("double", False))
        return columns

    def check_columns(self, present: Sequence[str], source: str) -> None:
        """Refuse a request missing a required column or holding one the model does not read."""
        accepted = self.input_columns()
        required = [c for c, (_, needed) in accepted.items() if needed]
        missing = [c for c in required if c not in present]
        if missing:
            raise UserInputError(f"{source}: no column {missing[0]!r}; a {self.dataset} model needs "
                                 f"{', '.join(required)} (optional: "
                                 f"{', '.join(c for c in accepted if c not in required) or 'none'})")
        extra = [c for c in present if c not in accepted]
        if extra:
            raise UserInputError(f"{source}: column {extra[0]!r} is not read by this {self.dataset} model; drop it "
                                 f"(accepted: {', '.join(accepted)})")

    # ------------------------------------------------------------------ encoding
    def complete(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with the columns each lookup provides that it lacks, joined on the lookup's key (a key the
        table does not hold gives missing values: unseen ids, dense 0)."""
        for lookup in self.lookups:
            wanted = [c for c in lookup.columns if c not in frame.columns]
            if not wanted or lookup.key not in frame.columns:
                continue
            keys = as_string_category(frame[lookup.key])
            rows = pd.Index(lookup.table[lookup.key]).get_indexer(pd.Index(keys.categories, dtype=object))
            codes = keys.codes.astype(np.int64)
            at = np.where(codes >= 0, np.append(rows, -1)[codes], -1)
            found = at >= 0
            joined = {}
            for column in wanted:
                source = lookup.table[column].to_numpy()
                values = np.full(len(frame), None, dtype=object)
                values[found] = source[at[found]]
                joined[column] = values
            frame = frame.assign(**joined)
        return frame

    def domains_of(self, frame: pd.DataFrame, where: Where) -> np.ndarray:
        """The domain index of every row; a value the model has no domain for is an error at its row."""
        category = as_string_category(frame[self.domain_column])
        known = pd.Index(list(self.domain_of_value))
        lookup = known.get_indexer(pd.Index(category.categories, dtype=object))
        index = np.asarray([self.domain_of_value[known[p]] if p >= 0 else -1 for p in lookup] + [-1], np.int64)
        domain = index[category.codes.astype(np.int64)]
        bad = np.flatnonzero(domain < 0)
        if bad.size:
            row = int(bad[0])
            code = int(category.codes[row])
            value = "an empty field" if code < 0 else repr(str(category.categories[code]))
            hint = f" (and its {self._key_of(self.domain_column)} is unknown)" if code < 0 and \
                self._key_of(self.domain_column) else ""
            raise UserInputError(f"{where(row)}: {self.domain_column}={value}{hint} belongs to no domain the model "
                                 f"knows ({', '.join(self.domain_of_value)} -> {', '.join(self.schema.domains)})")
        return domain

    def _key_of(self, column: str) -> str | None:
        return next((lookup.key for lookup in self.lookups if column in lookup.columns), None)

    def encode(self, frame: pd.DataFrame, where: Where) -> tuple[Batch, dict[str, int]]:
        """Raw rows -> a :class:`Batch` (labels from the task columns when present, else NaN) and, per sparse
        column, how many rows got the unseen id."""
        import torch

        frame = self.complete(frame)
        domain = self.domains_of(frame, where)
        sparse = np.zeros((len(frame), len(self.schema.sparse)), dtype=np.int64)
        unseen: dict[str, int] = {}
        for j, vocabulary in enumerate(self.sparse):
            sparse[:, j], unseen[vocabulary.column] = vocabulary.ids(frame[vocabulary.column])
        if self.domain_feature is not None:
            sparse[:, len(self.sparse)], _ = self.domain_feature.ids(pd.Series(domain))
        dense = np.zeros((len(frame), len(self.dense)), dtype=np.float32)
        for j, scaler in enumerate(self.dense):
            values = frame[scaler.column]
            bad = first_non_numeric(values)
            if bad is not None:
                raise UserInputError(f"{where(bad)}: {scaler.column}={values.iloc[bad]!r} is not a number "
                                     f"(a dense feature)")
            dense[:, j] = scaler.scale(as_numbers(values))
        labels = np.full((len(frame), len(self.tasks)), np.nan, dtype=np.float32)
        for t, task in enumerate(self.tasks):
            labels[:, t] = self._labels(frame, task, where)
        batch = Batch(sparse=torch.from_numpy(sparse), dense=torch.from_numpy(dense),
                      domain=torch.from_numpy(domain), labels=torch.from_numpy(labels))
        return batch, unseen

    def label_sources(self, task: str) -> list[str]:
        """The columns a request can give ``task``'s label in: its own, else the one its rule reads."""
        return [task, *(column for name, column, _, _ in self.label_rules if name == task and column != task)]

    def _labels(self, frame: pd.DataFrame, task: str, where: Where) -> np.ndarray:
        """``task``'s labels (NaN where the request gives none): its column, else its rule on the rule's column."""
        rule = next(((column, op, x) for name, column, op, x in self.label_rules if name == task), None)
        column = task if task in frame.columns else rule[0] if rule is not None else None
        if column is None or column not in frame.columns:
            return np.full(len(frame), np.nan, dtype=np.float32)
        values = frame[column]
        bad = first_non_numeric(values)
        if bad is not None:
            raise UserInputError(f"{where(bad)}: {column}={values.iloc[bad]!r} is not a number (the label of {task})")
        numbers = as_numbers(values)
        if column != task and rule is not None and rule[1] is not None:
            numbers = np.where(np.isnan(numbers), np.nan, LABEL_OPS[rule[1]](numbers, rule[2]).astype(np.float64))
        return numbers.astype(np.float32)

    # ------------------------------------------------------------------ plain data and files
    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers only (what the dataset cache stores; :meth:`save` moves the long lists into
        Parquet files)."""
        hashed = any(v.buckets is not None for v in self.sparse)
        return {
            "format": FORMAT if hashed else 1,  # format 1 unless a reader of format 1 would misread the file
            "dataset": self.dataset,
            "schema": self.schema.to_dict(),
            "sparse": [_vocabulary_entry(v) for v in self.sparse],
            "domain_feature": None if self.domain_feature is None else _vocabulary_entry(self.domain_feature),
            "dense": [{"column": s.column, "kind": s.kind, "scaling": s.scaling, "params": list(s.params)}
                      for s in self.dense],
            "domain": {"column": self.domain_column, "kind": self.domain_kind, "values": dict(self.domain_of_value)},
            "lookups": [{"name": lookup.name, "key": lookup.key,
                         "table": {c: lookup.table[c].tolist() for c in lookup.table.columns}}
                        for lookup in self.lookups],
            "label_rules": [list(rule) for rule in self.label_rules],
            "extras": dict(self.extras),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Encoders:
        if d.get("format") not in READABLE_FORMATS:
            raise ValueError(f"encoders format {d.get('format')!r}, expected one of {READABLE_FORMATS}")

        def vocabulary(entry: Mapping[str, Any]) -> Vocabulary:
            buckets = entry.get("buckets")
            return Vocabulary(column=entry["column"], values=tuple(str(v) for v in entry["values"]),
                              kind=entry.get("kind", "string"), buckets=None if buckets is None else int(buckets))

        return cls(
            dataset=d["dataset"],
            schema=FeatureSchema.from_dict(d["schema"]),
            sparse=tuple(vocabulary(entry) for entry in d["sparse"]),
            dense=tuple(Scaler(column=e["column"], scaling=e["scaling"], params=tuple(float(p) for p in e["params"]),
                               kind=e.get("kind", "double")) for e in d["dense"]),
            domain_column=d["domain"]["column"],
            domain_of_value={str(k): int(v) for k, v in d["domain"]["values"].items()},
            domain_kind=d["domain"].get("kind", "string"),
            domain_feature=None if d["domain_feature"] is None else vocabulary(d["domain_feature"]),
            lookups=tuple(Lookup(key=e["key"], name=e.get("name", "lookup"), table=pd.DataFrame(e["table"]))
                          for e in d["lookups"]),
            label_rules=tuple((str(t), str(c), op, None if x is None else float(x))
                              for t, c, op, x in d.get("label_rules", ())),
            extras=dict(d.get("extras", {})),
        )

    def save(self, folder: Path) -> Path:
        """Write the encoders into ``folder`` as ``encoders.json`` + Parquet files (replaced whole: a reader
        never sees half of them)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        manifest = self.to_dict()
        vocabularies = [*manifest["sparse"], *([manifest["domain_feature"]] if manifest["domain_feature"] else [])]
        for j, entry in enumerate(vocabularies):
            entry["file"] = _write_parquet(staging, f"vocabulary/{j}.parquet",
                                           pd.DataFrame({"value": pd.Series(entry.pop("values"), dtype=object)}))
        for j, (entry, lookup) in enumerate(zip(manifest["lookups"], self.lookups)):
            entry.pop("table")
            entry["file"] = _write_parquet(staging, f"lookup/{j}.parquet", lookup.table)
        (staging / ENCODERS_FILE).write_text(json.dumps(manifest, indent=1, default=str))
        if folder.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{folder.name}-old-", dir=folder.parent))
            os.replace(folder, retired / folder.name)
            os.replace(staging, folder)
            _remove_tree(retired)
        else:
            os.replace(staging, folder)
        return folder

    @classmethod
    def load(cls, folder: Path) -> Encoders:
        """Read what :meth:`save` wrote; a missing or damaged file is one line naming it."""
        folder = Path(folder)
        manifest_path = folder / ENCODERS_FILE
        if not manifest_path.is_file():
            raise UserInputError(f"{manifest_path} is missing: the model's encoders were not saved with it "
                                 f"(a run trained before encoders were saved, or on data.storage=memmap, cannot "
                                 f"score raw rows; retrain it)")
        try:
            manifest = json.loads(manifest_path.read_text())
            vocabularies = [*manifest["sparse"], *([manifest["domain_feature"]] if manifest["domain_feature"] else [])]
            for entry in vocabularies:
                entry["values"] = pd.read_parquet(folder / entry.pop("file"))["value"].astype(str).tolist()
            for entry in manifest["lookups"]:
                table = pd.read_parquet(folder / entry.pop("file"))
                entry["table"] = {c: table[c].tolist() for c in table.columns}
            return cls.from_dict(manifest)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserInputError(f"{folder}: the encoders cannot be read ({error}); retrain the model or restore "
                                 f"its encoders/ folder") from None


def _vocabulary_entry(vocabulary: Vocabulary) -> dict[str, Any]:
    """A vocabulary as plain data; ``buckets`` only when hashed (a fitted one's entry is as it always was)."""
    entry: dict[str, Any] = {"column": vocabulary.column, "kind": vocabulary.kind, "values": list(vocabulary.values)}
    if vocabulary.buckets is not None:
        entry["buckets"] = vocabulary.buckets
    return entry


def _write_parquet(folder: Path, name: str, frame: pd.DataFrame) -> str:
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / name, index=False)
    return name


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def lookup_table(frame: pd.DataFrame, key: str, columns: Sequence[str], name: str) -> Lookup:
    """One row per distinct ``key`` of ``frame`` (its first), the key as text and ``columns`` as they are."""
    first = ~pd.Series(np.asarray(frame[key])).duplicated().to_numpy()
    table = {key: value_texts(np.asarray(frame[key])[first])}
    for column in columns:
        values = frame[column]
        if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype.kind == "O":
            table[column] = pd.Series(np.asarray(values.astype(str))[first], dtype=object)
        else:
            table[column] = values.to_numpy()[first]
    return Lookup(key=key, table=pd.DataFrame(table), name=name)
