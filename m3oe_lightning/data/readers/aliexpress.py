"""``data=aliexpress``: the AliExpress search logs, one domain per country, tasks click and conversion.

The official preprocessed layout (Tianchi dataset 74690, as distributed by MTReclib / torch-rechub), one
folder per country with the same columns::

    AliExpress_NL/train.csv  AliExpress_NL/test.csv   AliExpress_ES/...  AliExpress_FR/...  AliExpress_US/...
    columns: search_id, categorical_1..16, numerical_1..63, click, conversion

Domains are the countries in ``data.countries`` (default NL, ES, FR, US -- the four MTReclib ships; RU
is read too when listed), named by their code. Features: ``categorical_1..16`` sparse, ``numerical_1..63``
dense (scaling ``data.dense_scaling``, default minmax); ``search_id`` (a session id) is not a feature.

Splits: ``official`` (default) keeps each country's ``test.csv`` as the test split and holds out
``data.val_fraction`` of the ``train.csv`` rows (seeded by ``data.split_seed``) for validation; ``random``
and ``ordered`` pool all rows (file order: country by country, train before test) and split 80/10/10.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from m3oe_lightning.data.encode import check_dense_scaling
from m3oe_lightning.data.readers.tabular import (
    DomainAssignment,
    TaskRule,
    by_name,
    encode_frame,
    read_checked,
    reject_unknown,
)
from m3oe_lightning.data.schema import EncodedDataset
from m3oe_lightning.data.splits import check_split_kind
from m3oe_lightning.errors import UserInputError, check_number

COUNTRIES: tuple[str, ...] = ("NL", "ES", "FR", "US", "RU")
SPARSE: tuple[str, ...] = tuple(f"categorical_{i}" for i in range(1, 17))
DENSE: tuple[str, ...] = tuple(f"numerical_{i}" for i in range(1, 64))
TASKS: tuple[str, ...] = ("click", "conversion")
SPLITS: tuple[str, ...] = ("official", "random", "ordered")
HOWTO = ("put the preprocessed AliExpress data (https://tianchi.aliyun.com/dataset/74690, per-country folders "
         "AliExpress_<CC>/train.csv and test.csv as MTReclib distributes them) under <data.root>/aliexpress")
ALIEXPRESS_DEFAULTS: dict[str, Any] = {"countries": ["NL", "ES", "FR", "US"], "val_fraction": 0.1,
                                       "dense_scaling": "minmax"}


def aliexpress_settings(**options: Any) -> dict[str, Any]:
    """Check and complete the ``data.*`` settings of ``data=aliexpress``."""
    reject_unknown("aliexpress", options, ALIEXPRESS_DEFAULTS)
    s = {**ALIEXPRESS_DEFAULTS, **options}
    countries = [s["countries"]] if isinstance(s["countries"], str) else s["countries"]
    if (not isinstance(countries, list) or not countries or len(set(countries)) != len(countries)
            or not all(c in COUNTRIES for c in countries)):
        raise UserInputError(f"data.countries={s['countries']!r}: give distinct country codes from "
                             f"{', '.join(COUNTRIES)}")
    val = s["val_fraction"]
    check_number("data.val_fraction", val, low=0, low_open=True, high=1, high_open=True)  # no empty val split
    scaling = check_dense_scaling(s["dense_scaling"], "numerical_*", "data.dense_scaling")
    return {"countries": list(countries), "val_fraction": float(val), "dense_scaling": scaling}


def aliexpress_files(folder: Path, countries: list[str]) -> list[tuple[str, Path, Path]]:
    """``(country, train.csv, test.csv)`` for every listed country; a missing one is one clear error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"AliExpress data directory {folder} does not exist; {HOWTO}")
    out = []
    for country in countries:
        sub = folder / f"AliExpress_{country}"
        for name in ("train.csv", "test.csv"):
            if not (sub / name).is_file():
                present = sorted(p.name for p in folder.glob("AliExpress_*") if p.is_dir())
                raise UserInputError(f"missing {sub / name} (data.countries lists {country}; country folders "
                                     f"here: {', '.join(present) or 'none'}); {HOWTO}")
        out.append((country, sub / "train.csv", sub / "test.csv"))
    return out


def aliexpress_source_files(folder: Path, **settings: Any) -> list[Path]:
    s = aliexpress_settings(**settings)
    return [p for _, train, test in aliexpress_files(folder, s["countries"]) for p in (train, test)]


def load_aliexpress(folder: Path, *, split: str = "official", split_seed: int = 2022,
                    **settings: Any) -> EncodedDataset:
    """AliExpress as an encoded dataset: domains = countries, tasks click and conversion."""
    if split not in SPLITS:
        raise UserInputError(f"data.split={split!r} is not a split kind for aliexpress; use one of "
                             f"{', '.join(SPLITS)}")
    if split != "official":
        check_split_kind(split)
    s = aliexpress_settings(**settings)
    triples = aliexpress_files(Path(folder), s["countries"])
    files = [p for _, train, test in triples for p in (train, test)]
    needed = {c: "the AliExpress column layout" for c in ("search_id", *SPARSE, *DENSE, *TASKS)}
    table = read_checked(files, needed=needed, text=SPARSE, numbers={c: "a numerical feature" for c in DENSE},
                         rules=[TaskRule(task=t, column=t) for t in TASKS])
    counts = np.diff([*table.origins.starts, table.origins.total])
    domain = np.repeat(np.arange(len(files)) // 2, counts).astype(np.int64)  # files come as (train, test) pairs
    is_test = np.repeat(np.arange(len(files)) % 2 == 1, counts)
    assignment = DomainAssignment(domains=tuple(s["countries"]), index=domain, keep=np.arange(len(domain)),
                                  dropped=0, **by_name(s["countries"]))
    splits = None
    if split == "official":
        train_rows = np.flatnonzero(~is_test)
        n_val = int(math.floor(len(train_rows) * s["val_fraction"] + 1e-9))
        val = np.sort(np.random.default_rng(split_seed).permutation(train_rows)[:n_val])
        train = np.setdiff1d(train_rows, val, assume_unique=True)
        splits = (train.astype(np.int64), val.astype(np.int64), np.flatnonzero(is_test).astype(np.int64))
    return encode_frame(
        name="aliexpress", table=table, domains=assignment, sparse=SPARSE,
        dense={c: s["dense_scaling"] for c in DENSE}, tasks=TASKS, split=split, split_seed=split_seed,
        splits=splits, extras={"countries": s["countries"]},
    )
