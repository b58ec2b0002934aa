"""The fitted encoders: raw rows encode exactly as training encoded them, files round-trip, bad rows fail."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from m3oe_lightning.data.encoders import Encoders
from m3oe_lightning.data.readers.movielens import load_movielens1m
from m3oe_lightning.data.readers.tabular import load_tabular
from m3oe_lightning.data.splits import split_indices
from m3oe_lightning.errors import UserInputError
from tests.unit.test_movielens_readers import RATINGS, write_ml1m
from tests.unit.test_tabular import ROWS, SETTINGS, write_csv

KEPT = ROWS[ROWS["region"] != "XX"].reset_index(drop=True)  # the tabular reader drops the unlisted region


def where(row: int) -> str:
    return f"request row {row + 1}"


@pytest.fixture
def tabular(tmp_path: Path):
    write_csv(tmp_path / "rows.csv")
    return load_tabular(tmp_path, split="random", split_seed=3, **{**SETTINGS, "path": "rows.csv"})


def test_raw_rows_encode_like_training_in_every_split(tabular):
    parts = dict(zip(("train", "val", "test"), split_indices(len(KEPT), "random", 3, (0.8, 0.1, 0.1))))
    for name, rows in parts.items():
        batch, _ = tabular.encoders.encode(KEPT.iloc[rows].drop(columns=["rating", "bought"]), where)
        split = tabular.split(name)
        assert torch.equal(batch["sparse"], split.sparse), name
        assert torch.equal(batch["domain"], split.domain), name
        torch.testing.assert_close(batch["dense"], split.dense, rtol=0, atol=0)
        assert batch["labels"].isnan().all()  # no label columns in the request


@pytest.fixture(params=["fitted", "hashed", "hashed-per-feature", "file"])
def any_policy(request, tmp_path: Path):
    """The tabular rows encoded under each vocabulary policy of the feature specification."""
    write_csv(tmp_path / "rows.csv")
    (tmp_path / "vocab.json").write_text(json.dumps({"user_id": [3, 1, 5], "item": ["b", "a"]}))
    spec = {"fitted": {}, "hashed": {"vocabulary": "hashed"},
            "hashed-per-feature": {"vocabulary": "hashed", "hash_buckets": {"user_id": 3}},
            "file": {"vocabulary": "vocab.json", "dense_params": {"age": [0, 100]}}}[request.param]
    return load_tabular(tmp_path, split="random", split_seed=3, **{**SETTINGS, "path": "rows.csv", **spec})


def test_saved_encoders_encode_raw_rows_like_training_under_every_policy(any_policy, tmp_path):
    loaded = Encoders.load(any_policy.encoders.save(tmp_path / "encoders"))
    assert loaded.to_dict() == any_policy.encoders.to_dict()
    parts = dict(zip(("train", "val", "test"), split_indices(len(KEPT), "random", 3, (0.8, 0.1, 0.1))))
    for name, rows in parts.items():
        batch, _ = loaded.encode(KEPT.iloc[rows].drop(columns=["rating", "bought"]), where)
        split = any_policy.split(name)
        assert torch.equal(batch["sparse"], split.sparse), name
        assert torch.equal(batch["domain"], split.domain), name
        torch.testing.assert_close(batch["dense"], split.dense, rtol=0, atol=0)
    if any_policy.encoders.sparse[0].buckets is None:  # files a format-1 reader reads as before
        assert json.loads((tmp_path / "encoders" / "encoders.json").read_text())["format"] == 1
    else:
        assert json.loads((tmp_path / "encoders" / "encoders.json").read_text())["format"] == 2


def test_labels_come_from_the_rules_on_raw_columns(tabular):
    batch, _ = tabular.encoders.encode(KEPT, where)
    expected = np.stack([KEPT["rating"] >= 4, KEPT["rating"] == 5, KEPT["bought"] == 1], axis=1)
    np.testing.assert_array_equal(batch["labels"].numpy(), expected.astype(np.float32))


def test_save_load_round_trip_writes_json_and_parquet_only(tabular, tmp_path):
    folder = tabular.encoders.save(tmp_path / "encoders")
    suffixes = {p.suffix for p in folder.rglob("*") if p.is_file()}
    assert suffixes == {".json", ".parquet"}
    loaded = Encoders.load(folder)
    assert loaded.to_dict() == tabular.encoders.to_dict()
    assert json.loads((folder / "encoders.json").read_text())["domain"]["values"] == {"EU": 0, "UK": 0, "US": 1}
    # saving again replaces the folder whole (no stale file survives)
    (folder / "vocabulary" / "stale.parquet").write_bytes(b"x")
    tabular.encoders.save(folder)
    assert not (folder / "vocabulary" / "stale.parquet").exists()


def test_unseen_and_missing_values_get_id_zero_and_are_counted(tabular):
    request = pd.DataFrame({"user_id": ["1", "999", None], "item": ["a", "zzz", "b"], "region": ["EU", "US", "UK"],
                            "age": [20.0, None, 30.0], "price": [1.0, 2.0, 3.0]})
    batch, unseen = tabular.encoders.encode(request, where)
    assert unseen == {"user_id": 2, "item": 1}
    assert batch["sparse"][1, 0] == 0 and batch["sparse"][2, 0] == 0 and batch["sparse"][1, 1] == 0
    assert batch["sparse"][0, 0] > 0
    assert batch["dense"][1, 0] == 0.0  # a missing dense value scales to 0, as in training


def test_a_value_matches_by_its_text_whatever_its_type(tabular):
    as_int = pd.DataFrame({"user_id": [1, 2], "item": ["a", "b"], "region": ["EU", "US"], "age": [20, 30],
                           "price": [1, 10]})
    as_text = as_int.astype(str)
    a, _ = tabular.encoders.encode(as_int, where)
    b, _ = tabular.encoders.encode(as_text, where)
    assert torch.equal(a["sparse"], b["sparse"]) and torch.equal(a["dense"], b["dense"])


@pytest.mark.parametrize(("change", "message"), [
    ({"region": ["EU", "MARS"]}, "request row 2: region='MARS' belongs to no domain"),
    ({"age": [20.0, "old"]}, "request row 2: age='old' is not a number"),
])
def test_a_bad_value_names_its_row_and_column(tabular, change, message):
    request = pd.DataFrame({"user_id": [1, 2], "item": ["a", "b"], "region": ["EU", "US"], "age": [20.0, 30.0],
                            "price": [1.0, 2.0], **change})
    with pytest.raises(UserInputError, match=message):
        tabular.encoders.encode(request, where)


def test_missing_and_extra_columns_are_refused_with_what_is_accepted(tabular):
    with pytest.raises(UserInputError, match="rows.csv: no column 'item'.*needs user_id, item, age, price, region"):
        tabular.encoders.check_columns(["user_id", "age", "price", "region"], "rows.csv")
    with pytest.raises(UserInputError, match="column 'comment' is not read by this tabular model"):
        tabular.encoders.check_columns(["user_id", "item", "age", "price", "region", "comment"], "rows.csv")
    tabular.encoders.check_columns(["user_id", "item", "age", "price", "region", "rating", "bought", "buy"], "x")


@pytest.mark.parametrize("vocabulary", ["fitted", "hashed"])
def test_movielens_interaction_columns_alone_get_the_users_and_movies_attributes(tmp_path, vocabulary):
    dataset = load_movielens1m(write_ml1m(tmp_path / "ml"), split="ordered", vocabulary=vocabulary)
    dataset = dataclasses.replace(dataset, encoders=Encoders.load(dataset.encoders.save(tmp_path / "encoders")))
    request = pd.DataFrame({"user_id": [u for u, _, _ in RATINGS], "movie_id": [m for _, m, _ in RATINGS]})
    batch, unseen = dataset.encoders.encode(request, where)
    full = {k: torch.cat([getattr(dataset.split(s), k) for s in ("train", "val", "test")])
            for k in ("sparse", "dense", "domain")}
    assert torch.equal(batch["sparse"], full["sparse"]) and torch.equal(batch["domain"], full["domain"])
    torch.testing.assert_close(batch["dense"], full["dense"], rtol=0, atol=0)
    # an unknown user has no age: the domain cannot be known without one
    with pytest.raises(UserInputError, match=r"request row 1: age=an empty field \(and its user_id is unknown\)"):
        dataset.encoders.encode(pd.DataFrame({"user_id": [77], "movie_id": [1]}), where)
    # ... but with the user's attributes given, the row scores (unseen ids counted)
    batch, unseen = dataset.encoders.encode(pd.DataFrame({"user_id": [77], "movie_id": [1], "age": [25],
                                                          "gender": ["F"], "occupation": [3], "zip": ["1"]}), where)
    assert unseen["user_id"] == (1 if vocabulary == "fitted" else 0) and int(batch["domain"][0]) == 1
