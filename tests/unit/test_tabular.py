"""data=tabular: CSV/Parquet by config only, label rules, domains, scalings, strict errors, cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from m3oe_lightning.data.encode import TableSpec, encode_table, scale_dense
from m3oe_lightning.data.readers.tabular import TaskRule, load_tabular, resolve_table_files, tabular_settings
from m3oe_lightning.data.registry import load_dataset
from m3oe_lightning.data.textio import as_string_category, read_table
from m3oe_lightning.errors import UserInputError

# 12 rows; region XX belongs to no listed domain. Lines in the CSV: header = 1, row k = line k + 2.
ROWS = pd.DataFrame({
    "user_id": [1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6],
    "item": ["a", "b", "a", "c", "b", "a", "c", "c", "a", "b", "b", "a"],
    "region": ["EU", "UK", "US", "EU", "XX", "US", "UK", "US", "EU", "US", "EU", "UK"],
    "age": [20.0, 30.0, 40.0, 20.0, 30.0, 40.0, 50.0, 60.0, 25.0, 50.0, 60.0, 25.0],
    "price": [1.0, 10.0, 100.0, 1000.0, 0.0, 5.0, 50.0, 500.0, 2.0, 20.0, 200.0, 3.0],
    "rating": [5, 4, 3, 1, 2, 5, 4, 4, 5, 1, 3, 5],
    "bought": [1, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 1],
})
SETTINGS = {
    "domain_column": "region",
    "domains": {"EU": "europe", "UK": "europe", "US": "america"},
    "tasks": {"click": "rating >= 4", "like": "rating == 5", "buy": "bought"},
    "sparse_features": ["user_id", "item"],
    "dense_features": {"age": "minmax", "price": "log1p"},
}


def write_csv(path: Path, frame: pd.DataFrame = ROWS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def write_parquet(path: Path, frame: pd.DataFrame = ROWS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


def load(folder: Path, path: str, **overrides):
    return load_tabular(folder, split="ordered", **{**SETTINGS, "path": path, **overrides})


def all_rows(ds):
    return {k: torch.cat([getattr(ds.split(s), k) for s in ("train", "val", "test")]) for k in
            ("sparse", "dense", "domain", "labels")}


# --- reading and encoding --------------------------------------------------------------------------------


def test_csv_rules_domains_and_scalings(tmp_path, capsys):
    write_csv(tmp_path / "ratings.csv")
    ds = load(tmp_path, "ratings.csv")
    assert "dropped 1 of 12 rows whose region is not in data.domains (XX)" in capsys.readouterr().out
    schema = ds.schema
    assert schema.domains == ("europe", "america") and schema.tasks == ("click", "like", "buy")
    assert [f.name for f in schema.sparse] == ["user_id", "item", "domain"]
    assert [f.name for f in schema.dense] == ["age", "price"]
    kept = ROWS[ROWS.region != "XX"].reset_index(drop=True)
    rows = all_rows(ds)  # ordered split: file order is kept
    assert len(rows["domain"]) == 11
    assert rows["domain"].tolist() == [0 if r in ("EU", "UK") else 1 for r in kept.region]
    expected = np.stack([kept.rating >= 4, kept.rating == 5, kept.bought], 1).astype(np.float32)
    assert np.array_equal(rows["labels"].numpy(), expected)
    assert schema.extras["dense_range"] == {"age": [20.0, 60.0]}  # train rows = first 8 kept rows
    kind, low, high = schema.extras["dense_scaling"]["price"]
    assert kind == "log1p" and low == pytest.approx(np.log1p(1.0)) and high == pytest.approx(np.log1p(1000.0))
    assert rows["dense"][3, 1].item() == pytest.approx(1.0)  # price 1000 = train max after log1p


def test_parquet_and_csv_parts_in_a_folder_read_as_one_table(tmp_path):
    folder = tmp_path / "parts"
    write_csv(folder / "part-0.csv", ROWS.iloc[:6])
    write_parquet(folder / "part-1.parquet", ROWS.iloc[6:])
    (folder / "_SUCCESS").write_text("")
    write_csv(tmp_path / "all.csv")
    single = load(tmp_path, str(tmp_path / "all.csv"))
    parts = load(tmp_path, "parts")
    assert parts.schema == single.schema
    for split in ("train", "val", "test"):
        a, b = parts.split(split), single.split(split)
        for key in ("sparse", "dense", "domain", "labels"):
            assert torch.equal(getattr(a, key), getattr(b, key)), (split, key)


def test_glob_and_relative_path(tmp_path):
    write_csv(tmp_path / "d" / "a.csv", ROWS.iloc[:6])
    write_csv(tmp_path / "d" / "b.csv", ROWS.iloc[6:])
    write_csv(tmp_path / "d" / "other.txt.bak", ROWS)  # not a table file: ignored
    files = resolve_table_files("d/*.csv", tmp_path)
    assert [p.name for p in files] == ["a.csv", "b.csv"]
    assert len(all_rows(load(tmp_path, "d/*.csv"))["domain"]) == 11
    with pytest.raises(UserInputError, match="no CSV or Parquet file matches"):
        resolve_table_files("d/*.parquet", tmp_path)
    with pytest.raises(UserInputError, match="does not exist"):
        resolve_table_files("nowhere.csv", tmp_path)


def test_without_domain_mapping_every_value_is_a_domain(tmp_path):
    frame = ROWS.assign(region=[3, 10, 2, 3, 10, 2, 3, 10, 2, 3, 10, 2])
    write_parquet(tmp_path / "t.parquet", frame)
    ds = load(tmp_path, "t.parquet", domains=None)
    assert ds.schema.domains == ("2", "3", "10")  # numeric order, not text order


def test_strict_makes_an_unlisted_domain_an_error_at_its_line(tmp_path):
    write_csv(tmp_path / "r.csv")
    with pytest.raises(UserInputError, match=r"r\.csv, line 6: region='XX' is not one of the domains"):
        load(tmp_path, "r.csv", strict=True)


def test_ids_are_the_same_text_in_csv_and_parquet(tmp_path):
    frame = pd.DataFrame({"id": [7.0, None, 12.0]})  # a Parquet id column with a gap is float
    write_parquet(tmp_path / "f.parquet", frame)
    write_csv(tmp_path / "f.csv", pd.DataFrame({"id": ["7", "", "12"]}))
    parquet, _ = read_table(tmp_path / "f.parquet", ["id"], category_columns=["id"])
    csv, _ = read_table(tmp_path / "f.csv", ["id"], category_columns=["id"])
    assert list(parquet["id"].astype(object)) == ["7", np.nan, "12"]
    assert list(csv["id"].astype(object)) == ["7", np.nan, "12"]
    assert list(as_string_category(pd.Series([True, False]))) == ["true", "false"]


# --- one-line errors naming setting, column, file and line ----------------------------------------------


def broken_csv(tmp_path: Path, column: str, row: int, value) -> Path:
    frame = ROWS.astype(object)
    frame.loc[row, column] = value
    return write_csv(tmp_path / "bad.csv", frame)


@pytest.mark.parametrize("column, row, value, expected", [
    ("age", 4, "old", r"bad\.csv, line 6: age \(data\.dense_features\) must be a number, got 'old'"),
    ("bought", 7, 2, r"bad\.csv, line 9: label bought \(data\.tasks\.buy\) must be 0 or 1, got 2"),
    ("bought", 2, "", r"bad\.csv, line 4: label bought \(data\.tasks\.buy\) must be 0 or 1, got an empty field"),
    ("rating", 9, "five", r"bad\.csv, line 11: rating \(data\.tasks\.click\) must be a number, got 'five'"),
    ("rating", 0, "", r"bad\.csv, line 2: rating \(data\.tasks\.click\) is empty"),
], ids=["dense", "label-value", "label-empty", "rule-text", "rule-empty"])
def test_bad_values_name_column_file_and_line(tmp_path, column, row, value, expected):
    broken_csv(tmp_path, column, row, value)
    with pytest.raises(UserInputError, match=expected):
        load(tmp_path, "bad.csv")


def test_missing_column_names_the_setting_and_the_file(tmp_path):
    write_csv(tmp_path / "r.csv", ROWS.drop(columns=["price"]))
    with pytest.raises(UserInputError, match=r"r\.csv, line 1: no column 'price' \(needed by data\.dense_features\)"):
        load(tmp_path, "r.csv")
    write_parquet(tmp_path / "r.parquet", ROWS.drop(columns=["region"]))
    with pytest.raises(UserInputError, match=r"r\.parquet: no column 'region' \(needed by data\.domain_column\)"):
        load(tmp_path, "r.parquet")


def test_parquet_errors_name_the_row(tmp_path):
    write_parquet(tmp_path / "p.parquet", ROWS.assign(bought=[1, 0, 0, 0, 0, 1, 0, 3, 1, 0, 0, 1]))
    with pytest.raises(UserInputError, match=r"p\.parquet, row 8: label bought .* got 3"):
        load(tmp_path, "p.parquet")


def test_line_numbers_count_blank_lines_and_quoted_line_breaks(tmp_path):
    text = ROWS.to_csv(index=False).splitlines()
    text[1] = text[1].replace(",a,", ',"a\nstill a",')  # row 0 spans lines 2-3
    text.insert(3, "")  # a blank line (line 5) after row 1 (line 4)
    assert text[8].startswith("4,c,UK,50.0,")  # row 6, now on line 10
    text[8] = text[8].replace(",50.0,", ",fifty,", 1)
    (tmp_path / "q.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(UserInputError, match=r"q\.csv, line 10: age \(data\.dense_features\) .* got 'fifty'"):
        load(tmp_path, "q.csv")


def test_short_and_long_lines_are_errors_at_their_line(tmp_path):
    lines = ROWS.to_csv(index=False).splitlines()
    lines[5] = ",".join(lines[5].split(",")[:-1])
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserInputError, match=r"s\.csv, line 6: expected 7 fields separated by ',', found 6"):
        load(tmp_path, "s.csv")
    lines[5] += ",1,2"
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserInputError, match=r"s\.csv, line 6: expected 7 fields .* found 8"):
        load(tmp_path, "s.csv")


def test_a_listed_domain_without_rows_is_an_error(tmp_path):
    write_csv(tmp_path / "r.csv")
    with pytest.raises(UserInputError, match=r"data\.domains: domain 'asia' \(region = JP\) has no rows in .*r\.csv"):
        load(tmp_path, "r.csv", domains={"EU": "europe", "JP": "asia"})


@pytest.mark.parametrize("overrides, expected", [
    ({"tasks": {"click": "rating >>= 4"}}, r"data\.tasks\.click='rating >>= 4' is neither a column"),
    ({"tasks": {"click": "rating >= four"}}, "right-hand side must be a number"),
    ({"tasks": {}}, "needs data.tasks"),
    ({"path": None}, "needs data.path"),
    ({"domain_column": None}, "needs data.domain_column"),
    ({"dense_features": {"age": "zscore"}}, "'zscore'; use one of minmax, standard, log1p, none"),
    ({"sparse_features": ["user_id", "rating"]}, "reads column 'rating', which is also a feature"),
    ({"sparse_features": ["item"], "dense_features": ["item"]}, "in both data.sparse_features and"),
    ({"domains": {"EU": "eu/west"}}, "may only hold letters"),
    ({"colour": "blue"}, r"unknown data settings for tabular: \['colour'\]"),
], ids=["rule", "rule-value", "no-tasks", "no-path", "no-domain", "scaling", "leak", "both", "name", "unknown"])
def test_settings_are_checked_before_reading(overrides, expected):
    with pytest.raises(UserInputError, match=expected):
        tabular_settings(**{**SETTINGS, "path": "x.csv", **overrides})


def test_task_rules_parse():
    assert TaskRule.parse("click", "rating >= 4") == TaskRule("click", "rating", ">=", 4.0)
    assert TaskRule.parse("like", "rating==5") == TaskRule("like", "rating", "==", 5.0)
    assert TaskRule.parse("buy", "bought") == TaskRule("buy", "bought")
    assert TaskRule.parse("x", "score < -0.5").threshold == -0.5


# --- scaling options in encode.py (existing behaviour unchanged) ----------------------------------------


def test_scalings_are_fitted_on_train_rows():
    values = np.array([0.0, 10.0, 20.0, 1000.0, np.nan])
    train = np.array([0, 1, 2])
    standard, params = scale_dense(values, train, "standard")
    assert params == pytest.approx([10.0, np.std([0.0, 10.0, 20.0])])
    assert standard[:3] == pytest.approx([-1.2247449, 0.0, 1.2247449], abs=1e-6) and standard[4] == 0.0
    log, params = scale_dense(values, train, "log1p")
    assert params == pytest.approx([0.0, np.log1p(20.0)]) and log[2] == pytest.approx(1.0)
    assert log[3] > 1.0  # not clipped, like minmax
    raw, params = scale_dense(values, train, "none")
    assert params == [] and raw.tolist() == [0.0, 10.0, 20.0, 1000.0, 0.0]
    with pytest.raises(UserInputError, match="use one of"):
        scale_dense(values, train, "zscore")


def test_default_scaling_keeps_the_old_extras():
    frame = pd.DataFrame({"u": [1, 2], "x": [0.0, 2.0], "g": ["a", "a"], "click": [0, 1]})
    spec = TableSpec(name="t", sparse=("u",), dense=("x",), tasks=("click",), domains=("a",), domain_column="g",
                     domain_of_value={"a": 0})
    ds = encode_table(frame, np.array([0, 1]), np.array([], np.int64), np.array([], np.int64), spec)
    assert ds.schema.extras == {"dataset": "t", "dense_range": {"x": [0.0, 2.0]}}


# --- through the registry: options pass through, cache keyed by every setting ---------------------------


def test_registry_passes_settings_and_caches_on_them(tmp_path):
    write_csv(tmp_path / "r.csv")
    cache = tmp_path / "cache"
    kwargs = dict(root=str(tmp_path), split="random", split_seed=1, download=False, cache_dir=cache)
    first = load_dataset("tabular", **kwargs, **SETTINGS, path="r.csv")
    assert len(list(cache.glob("tabular-*.pt"))) == 1
    again = load_dataset("tabular", **kwargs, **SETTINGS, path="r.csv")
    assert torch.equal(first.train.sparse, again.train.sparse)
    assert len(list(cache.glob("tabular-*.pt"))) == 1  # a hit
    other = load_dataset("tabular", **kwargs, **{**SETTINGS, "dense_features": {"age": "standard"}}, path="r.csv")
    assert len(list(cache.glob("tabular-*.pt"))) == 2 and [f.name for f in other.schema.dense] == ["age"]
    with pytest.raises(UserInputError, match="unknown data settings for movielens100k"):
        load_dataset("movielens100k", **kwargs, path="r.csv")


def test_a_late_value_of_another_type_is_read_or_named(tmp_path):
    """pyarrow infers CSV types from the first block (1 MB): a later 4.5 among integers must still parse,
    and a later non-number must still be reported at its line."""
    n = 80_000  # ~1.8 MB: several blocks
    frame = pd.DataFrame({"region": ["EU", "US"] * (n // 2), "age": np.arange(n) % 90, "rating": np.arange(n) % 5 + 1,
                          "bought": np.arange(n) % 2 == 0})
    frame = frame.astype({"age": object, "rating": object})
    frame.loc[n - 10, "rating"] = 4.5
    frame.loc[n - 5, "age"] = 33.25
    write_csv(tmp_path / "big.csv", frame)
    settings = dict(SETTINGS, sparse_features=[], dense_features={"age": "none"}, domains=None,
                    tasks={"click": "rating >= 4", "buy": "bought"})
    ds = load(tmp_path, "big.csv", **settings)
    rows = all_rows(ds)
    assert rows["labels"][n - 10].tolist() == [1.0, 1.0] and rows["dense"][n - 5, 0].item() == 33.25
    assert rows["labels"][:, 1].sum().item() == n // 2  # true/false labels
    frame.loc[n - 3, "age"] = "abc"
    write_csv(tmp_path / "big.csv", frame)
    with pytest.raises(UserInputError, match=rf"big\.csv, line {n - 3 + 2}: age .* got 'abc'"):
        load(tmp_path, "big.csv", **settings)


# --- issue #16: repeated keys, a byte-order mark, empty splits, the cache keyed by data.duplicates ---------


def test_duplicate_key_drops_repeats_before_the_split(tmp_path, capsys):
    """(user_id, item) repeats at rows 4, 5 and 11; row 4 is outside the domains anyway: 9 of 12 rows stay."""
    path = write_csv(tmp_path / "r.csv")
    ds = load(tmp_path, "r.csv", duplicate_key=["user_id", "item"])
    assert len(ds.train) + len(ds.val) + len(ds.test) == 9
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"warning: {path}: 2 duplicate (user_id, item) rows dropped (data.duplicates=drop; "
                     f"error|keep to choose)"]
    with pytest.raises(UserInputError, match=r"r\.csv, line 7: \(user_id, item\) \(3, a\) repeats .*r\.csv, line 4 "
                                             r"\(2 duplicate"):
        load(tmp_path, "r.csv", duplicate_key=["user_id", "item"], duplicates="error")
    kept = load(tmp_path, "r.csv", duplicate_key=["user_id", "item"], duplicates="keep")
    assert len(kept.train) + len(kept.val) + len(kept.test) == 11
    plain = load(tmp_path, "r.csv")  # no data.duplicate_key: nothing is checked
    assert len(plain.train) + len(plain.val) + len(plain.test) == 11 and capsys.readouterr().err == ""


def test_duplicate_key_column_must_exist(tmp_path):
    write_csv(tmp_path / "r.csv")
    with pytest.raises(UserInputError, match=r"line 1: no column 'session' \(needed by data\.duplicate_key\)"):
        load(tmp_path, "r.csv", duplicate_key=["session"])


def test_registry_keys_the_cache_on_the_duplicates_policy(tmp_path, capsys):
    write_csv(tmp_path / "r.csv")
    cache = tmp_path / "cache"
    kwargs = dict(root=str(tmp_path), split="random", split_seed=1, download=False, cache_dir=cache, path="r.csv",
                  duplicate_key=["user_id", "item"], **SETTINGS)
    dropped = load_dataset("tabular", **kwargs)
    kept = load_dataset("tabular", **kwargs, duplicates="keep")
    assert len(list(cache.glob("tabular-*.pt"))) == 2  # a table built with keep is never served for drop
    assert len(dropped.train) + len(dropped.val) + len(dropped.test) == 9
    assert len(kept.train) + len(kept.val) + len(kept.test) == 11
    with pytest.raises(UserInputError, match=r"^data\.duplicates='twice': use one of drop, error, keep"):
        load_dataset("tabular", **kwargs, duplicates="twice")
    no_key = {k: v for k, v in kwargs.items() if k != "duplicate_key"}
    with pytest.raises(UserInputError, match=r"^data\.duplicates=error: data=tabular checks no duplicate rows; "
                                             r"name the columns .*\+data\.duplicate_key="):
        load_dataset("tabular", **no_key, duplicates="error")
    with pytest.raises(UserInputError, match=r"^data\.duplicates=keep: data=synthetic checks no duplicate rows"):
        load_dataset("synthetic", root=None, split="random", split_seed=0, download=False, cache_dir=None,
                     duplicates="keep", rows=300)


def test_a_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    path = write_csv(tmp_path / "r.csv")  # user_id is the first column: the one a BOM would stick to
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    ds = load(tmp_path, "r.csv")
    assert len(ds.train) + len(ds.val) + len(ds.test) == 11
    with pytest.raises(UserInputError, match=r"r\.csv, line 4: label bought"):  # lines still count from 1
        broken = ROWS.astype({"bought": object})
        broken.loc[2, "bought"] = 7
        write_csv(path, broken)
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
        load(tmp_path, "r.csv")


@pytest.mark.parametrize("fractions, empty", [([0.9, 0.0, 0.1], "val"), ([0.0, 0.5, 0.5], "train"),
                                              ([0.9, 0.1, 0.0], "test")])
def test_an_empty_split_fraction_is_refused_before_reading(fractions, empty):
    with pytest.raises(UserInputError, match=r"^data\.split_fractions=.*with train and val and test > 0"):
        tabular_settings(**{**SETTINGS, "path": "x.csv", "split_fractions": fractions})


def test_a_split_rounding_to_no_rows_is_refused_with_the_counts(tmp_path):
    write_csv(tmp_path / "r.csv", ROWS.iloc[:6])  # 5 rows in the domains: 4 train, 0 val, 1 test
    with pytest.raises(UserInputError) as err:
        load(tmp_path, "r.csv")
    assert str(err.value) == ("5 rows split into 4 train, 0 val, 1 test rows: the val split is empty; use more rows "
                              "or change data.split_fractions")
