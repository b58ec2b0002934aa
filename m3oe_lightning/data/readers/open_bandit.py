"""``data=open_bandit``: ZOZOTOWN click logs of the Open Bandit Dataset, one domain per campaign, T = 1.

Layout (the full dataset and the sample in the ``obp`` package alike)::

    <policy>/<campaign>/<campaign>.csv       policy in {random, bts}; campaign in {all, men, women}
    <policy>/<campaign>/item_context.csv     item_id, item_feature_0 (number), item_feature_1..3 (hashed)

Domains are the campaigns in ``data.campaigns`` (default ``all, men, women``); the one task is ``click``.
``data.policies`` picks the logging policies read (default ``random``: uniformly random recommendations,
the unbiased logs; ``[random, bts]`` adds the Bernoulli-Thompson-sampling logs and a ``policy`` feature).

Features (fixed; item ids and the hashed item features are per campaign, so they are qualified by it):

* sparse: ``item`` (campaign/item_id), ``position`` (1-3), ``user_feature_0..3``, ``item_feature_1..3``,
  ``hour`` (UTC hour of ``timestamp``), and ``policy`` when more than one policy is read;
* dense: ``item_feature_0`` (minmax) and, when ``data.affinity`` is true, ``affinity``: the row's
  ``user-item_affinity_<item_id>`` (the user's past interactions with the shown item; log1p). The logs'
  ``propensity_score`` belongs to the logging policy and is not a feature.

Splits: ``random`` (seeded 80/10/10) or ``ordered``: chronological by ``timestamp`` over all files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from m3oe_lightning.data.readers.frames import lookup_rows, require_unique
from m3oe_lightning.data.readers.tabular import (
    DomainAssignment,
    RowOrigins,
    TableColumns,
    binary_labels,
    by_name,
    numeric_column,
    reject_unknown,
)
from m3oe_lightning.data.readers.tabular import encode_frame as _encode_frame
from m3oe_lightning.data.schema import EncodedDataset
from m3oe_lightning.data.splits import check_split_kind, split_indices
from m3oe_lightning.data.textio import as_string_category, read_table, require_table_columns
from m3oe_lightning.errors import UserInputError

POLICIES: tuple[str, ...] = ("random", "bts")
CAMPAIGNS: tuple[str, ...] = ("all", "men", "women")
USER_FEATURES: tuple[str, ...] = tuple(f"user_feature_{i}" for i in range(4))
ITEM_FEATURES: tuple[str, ...] = tuple(f"item_feature_{i}" for i in range(1, 4))
HOWTO = ("the Open Bandit Dataset (https://research.zozo.com/data.html, or the sample inside the obp wheel: "
         "obp/dataset/obd/) has <policy>/<campaign>/<campaign>.csv and item_context.csv; point data.root at it")
OPEN_BANDIT_DEFAULTS: dict[str, Any] = {"policies": ["random"], "campaigns": list(CAMPAIGNS), "affinity": True}


def _choice_list(value: Any, allowed: tuple[str, ...], setting: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if (not isinstance(values, list) or not values or len(set(values)) != len(values)
            or not all(v in allowed for v in values)):
        raise UserInputError(f"{setting}={value!r}: give distinct values from {', '.join(allowed)}")
    return list(values)


def open_bandit_settings(**options: Any) -> dict[str, Any]:
    """Check and complete the ``data.*`` settings of ``data=open_bandit``."""
    reject_unknown("open_bandit", options, OPEN_BANDIT_DEFAULTS)
    s = {**OPEN_BANDIT_DEFAULTS, **options}
    if not isinstance(s["affinity"], bool):
        raise UserInputError(f"data.affinity={s['affinity']!r}: give true or false")
    return {"policies": _choice_list(s["policies"], POLICIES, "data.policies"),
            "campaigns": _choice_list(s["campaigns"], CAMPAIGNS, "data.campaigns"), "affinity": s["affinity"]}


def open_bandit_files(folder: Path, policies: list[str], campaigns: list[str]) -> list[tuple[str, str, Path, Path]]:
    """``(policy, campaign, log, item_context)`` for each chosen pair, policy-major."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"Open Bandit data directory {folder} does not exist; {HOWTO}")
    out = []
    for policy in policies:
        for campaign in campaigns:
            log, items = folder / policy / campaign / f"{campaign}.csv", folder / policy / campaign / "item_context.csv"
            for path in (log, items):
                if not path.is_file():
                    raise UserInputError(f"missing {path} (data.policies / data.campaigns ask for it); {HOWTO}")
            out.append((policy, campaign, log, items))
    return out


def open_bandit_source_files(folder: Path, **settings: Any) -> list[Path]:
    s = open_bandit_settings(**settings)
    return [p for _, _, log, items in open_bandit_files(folder, s["policies"], s["campaigns"]) for p in (log, items)]


def _times(values: pd.Series, locator: Any) -> tuple[np.ndarray, np.ndarray]:
    """(UTC hour, nanoseconds since the epoch) of each ``timestamp``; an unparsable one names its line."""
    if values.dtype.kind == "M" or isinstance(values.dtype, pd.DatetimeTZDtype):
        parsed = pd.to_datetime(values, utc=True)  # pyarrow already parsed it (naive -> UTC)
    else:
        parsed = pd.to_datetime(values.astype(object), utc=True, errors="coerce", format="ISO8601")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if bad.size:
        pos = int(bad[0])
        raise UserInputError(f"{locator.where(pos)}: timestamp {values.iloc[pos]!r} is not a date and time")
    stamps = parsed.dt.tz_localize(None).to_numpy("datetime64[ns]").astype(np.int64)
    return parsed.dt.hour.to_numpy(np.int64), stamps


def _read_items(path: Path) -> tuple[pd.DataFrame, Any]:
    needed = {"item_id": "item_context.csv", "item_feature_0": "item_context.csv",
              **{c: "item_context.csv" for c in ITEM_FEATURES}}
    require_table_columns(path, needed)
    frame, locator = read_table(path, list(needed), category_columns=ITEM_FEATURES)
    ids = numeric_column(frame, "item_id", locator, "item id", allow_missing=False)
    price = numeric_column(frame, "item_feature_0", locator, "an item feature")
    require_unique(ids, locator.where, "item_id")
    return pd.DataFrame({"item_id": ids.astype(np.int64), "item_feature_0": price,
                         **{c: frame[c] for c in ITEM_FEATURES}}), locator


def load_open_bandit(folder: Path, *, split: str = "random", split_seed: int = 2022,
                     **settings: Any) -> EncodedDataset:
    """Open Bandit click logs as an encoded dataset: domains = campaigns, one task (click)."""
    check_split_kind(split)
    s = open_bandit_settings(**settings)
    files = open_bandit_files(Path(folder), s["policies"], s["campaigns"])
    origins = RowOrigins()
    text: dict[str, list[pd.Categorical]] = {c: [] for c in ("item", "position", *USER_FEATURES, *ITEM_FEATURES,
                                                             "hour", "policy")}
    numbers: dict[str, list[np.ndarray]] = {"item_feature_0": [], "affinity": []}
    clicks, domain, times = [], [], []
    for policy, campaign, log_path, items_path in files:
        items, _ = _read_items(items_path)
        affinity_columns = [f"user-item_affinity_{k}" for k in items["item_id"]] if s["affinity"] else []
        needed = {c: "the Open Bandit log layout" for c in ("timestamp", "item_id", "position", "click",
                                                              *USER_FEATURES, *affinity_columns)}
        require_table_columns(log_path, needed)
        frame, locator = read_table(log_path, list(needed), category_columns=["position", *USER_FEATURES])
        n = len(frame)
        item_ids = numeric_column(frame, "item_id", locator, "item id", allow_missing=False)
        rows = lookup_rows(item_ids, items["item_id"].to_numpy(), locator.where, column="item_id", table=items_path,
                           rows_are="log")
        clicks.append(binary_labels(numeric_column(frame, "click", locator, "the label"), locator, "click",
                                    "the click label"))
        hour, stamp = _times(frame["timestamp"], locator)
        times.append(stamp)
        text["hour"].append(pd.Categorical.from_codes(hour, categories=[f"{h:02d}" for h in range(24)]))
        text["item"].append(pd.Categorical.from_codes(rows, categories=[f"{campaign}/{k}" for k in items["item_id"]]))
        text["position"].append(as_string_category(frame["position"]))
        for c in USER_FEATURES:
            text[c].append(as_string_category(frame[c]))
        for c in ITEM_FEATURES:  # hashed per campaign: qualify the values by it
            categories = [f"{campaign}/{v}" for v in items[c].cat.categories]
            text[c].append(pd.Categorical.from_codes(items[c].cat.codes.to_numpy()[rows], categories=categories))
        text["policy"].append(pd.Categorical.from_codes(np.zeros(n, np.int64), categories=[policy]))
        numbers["item_feature_0"].append(items["item_feature_0"].to_numpy()[rows])
        if s["affinity"]:
            matrix = np.column_stack([numeric_column(frame, c, locator, "a user-item affinity")
                                      for c in affinity_columns])
            numbers["affinity"].append(matrix[np.arange(n), rows])
        domain.append(np.full(n, s["campaigns"].index(campaign), dtype=np.int64))
        origins.add(locator, n)
    table = TableColumns(
        text={c: pd.api.types.union_categoricals(parts) for c, parts in text.items()},
        numbers={c: np.concatenate(parts) for c, parts in numbers.items() if parts},
        labels={"click": np.concatenate(clicks)}, origins=origins,
    )
    index = np.concatenate(domain)
    assignment = DomainAssignment(domains=tuple(s["campaigns"]), index=index, keep=np.arange(len(index)), dropped=0,
                                  **by_name(s["campaigns"]))
    sparse = ["item", "position", *USER_FEATURES, *ITEM_FEATURES, "hour"]
    if len(s["policies"]) > 1:
        sparse.append("policy")
    dense = {"item_feature_0": "minmax", **({"affinity": "log1p"} if s["affinity"] else {})}
    splits = None
    if split == "ordered":  # chronological over all files, ties in file order
        order = np.argsort(np.concatenate(times), kind="stable")
        splits = tuple(np.sort(order[part]) for part in split_indices(len(order), "ordered"))
    return _encode_frame(name="open_bandit", table=table, domains=assignment, sparse=sparse, dense=dense,
                         tasks=["click"], split=split, split_seed=split_seed, splits=splits,
                         extras={"policies": s["policies"]})
