"""Encoding: train-only vocabularies, unseen -> 0, min-max on train, domain and label layout."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from m3oe_lightning.data.encode import (
    HASHED,
    VOCABULARY_FILE,
    TableSpec,
    VocabularyPolicy,
    encode_table,
    fit_vocabulary,
)
from m3oe_lightning.data.encoders import hashed_ids
from m3oe_lightning.errors import UserInputError

SPEC = TableSpec(
    name="toy",
    sparse=("user", "color"),
    dense=("age",),
    tasks=("click", "like"),
    domains=("young", "old"),
    domain_column="group",
    domain_of_value={"a": 0, "b": 0, "c": 1},
)


def toy_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "user": [10, 20, 10, 30, 40, 20],
        "color": pd.Categorical(["red", "blue", "red", "green", "blue", None]),
        "age": [20.0, 40.0, 30.0, 60.0, 10.0, 40.0],
        "group": ["a", "c", "b", "c", "a", "c"],
        "click": [1, 0, 1, 1, 0, 0],
        "like": [0, 0, 1, 1, 0, 0],
    })


TRAIN, VAL, TEST = np.array([0, 1, 2]), np.array([3]), np.array([4, 5])


def test_vocabulary_is_fitted_on_train_only():
    ds = encode_table(toy_frame(), TRAIN, VAL, TEST, SPEC)
    user, color, domain = ds.schema.sparse
    assert (user.name, user.vocab_size) == ("user", 3)  # train users {10, 20} + reserved 0
    assert (color.name, color.vocab_size) == ("color", 3)  # train colors {blue, red} + 0
    assert (domain.name, domain.vocab_size) == ("domain", 3)
    # ids follow sorted value order: user 10 -> 1, 20 -> 2; blue -> 1, red -> 2
    assert ds.train.sparse[:, :2].tolist() == [[1, 2], [2, 1], [1, 2]]
    assert ds.val.sparse[:, :2].tolist() == [[0, 0]]  # user 30 and green never seen in train
    assert ds.test.sparse[:, :2].tolist() == [[0, 1], [2, 0]]  # user 40 unseen; missing color -> 0


def test_minmax_uses_train_range_without_clipping():
    ds = encode_table(toy_frame(), TRAIN, VAL, TEST, SPEC)
    assert ds.schema.extras["dense_range"] == {"age": [20.0, 40.0]}
    assert ds.train.dense[:, 0].tolist() == [0.0, 1.0, 0.5]
    assert ds.val.dense[:, 0].tolist() == [2.0]  # 60 lies beyond the train max
    assert ds.test.dense[:, 0].tolist() == [-0.5, 1.0]
    assert ds.train.dense.dtype == torch.float32


def test_domains_and_labels():
    ds = encode_table(toy_frame(), TRAIN, VAL, TEST, SPEC)
    assert ds.schema.domains == ("young", "old") and ds.schema.tasks == ("click", "like")
    assert ds.train.domain.tolist() == [0, 1, 0] and ds.test.domain.tolist() == [0, 1]
    assert ds.train.domain.dtype == torch.int64 and ds.train.sparse.dtype == torch.int64
    assert ds.train.sparse[:, 2].tolist() == [1, 2, 1]  # domain feature: index + 1 (0 stays reserved)
    assert ds.train.labels.dtype == torch.float32
    assert ds.train.labels.tolist() == [[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]
    assert ds.schema.input_dim == 3 * 16 + 1


def test_constant_dense_column_becomes_zero():
    frame = toy_frame().assign(age=5.0)
    ds = encode_table(frame, TRAIN, VAL, TEST, SPEC)
    assert torch.all(ds.train.dense == 0) and torch.all(ds.test.dense == 0)


def test_value_without_domain_is_reported():
    frame = toy_frame()
    frame.loc[4, "group"] = "z"
    with pytest.raises(UserInputError, match="group='z'.*no domain"):
        encode_table(frame, TRAIN, VAL, TEST, SPEC)


def test_empty_train_split_is_reported():
    with pytest.raises(UserInputError, match="train split is empty"):
        encode_table(toy_frame(), np.array([], dtype=np.int64), VAL, TEST, SPEC)


def test_spec_without_domain_feature():
    spec = TableSpec(name="toy", sparse=("user",), dense=(), tasks=("click",), domains=("all",),
                     domain_column="group", domain_of_value={"a": 0, "b": 0, "c": 0}, domain_feature=None,
                     embed_dim=8)
    ds = encode_table(toy_frame(), TRAIN, VAL, TEST, spec)
    assert [f.name for f in ds.schema.sparse] == ["user"] and ds.schema.sparse[0].embed_dim == 8
    assert ds.train.dense.shape == (3, 0) and ds.train.labels.shape == (3, 1)


def test_fit_vocabulary_on_strings_and_missing():
    column = pd.Series(["b", "a", None, "c", "a"])
    vocab = fit_vocabulary(column, np.array([0, 1, 2]))
    assert vocab.values == ["a", "b"] and vocab.size == 3
    assert vocab.ids.tolist() == [2, 1, 0, 0, 1]


def test_a_shared_vocabulary_ignores_which_values_the_train_rows_hold():
    """Under the feature specification a val/test value has its id too, and every domain keeps index + 1 even
    when the train rows hold none of it (here: no "old" row in train)."""
    train = np.array([0, 2, 4])  # groups a, b, a: only the "young" domain
    policy = VocabularyPolicy(kind=VOCABULARY_FILE, values={"user": ("30", "10"), "color": ("green",)}, source="v")
    ds = encode_table(toy_frame(), train, VAL, np.array([1, 5]), dataclasses.replace(SPEC, vocabulary=policy))
    assert [f.vocab_size for f in ds.schema.sparse] == [3, 2, 3]
    assert ds.train.sparse.tolist() == [[2, 0, 1], [2, 0, 1], [0, 0, 1]]
    assert ds.val.sparse.tolist() == [[1, 1, 2]]  # user 30 and green are in the file
    assert ds.test.sparse[:, 2].tolist() == [2, 2]  # "old" = domain 1 -> id 2, though train has no such row
    hashed = encode_table(toy_frame(), train, VAL, np.array([1, 5]),
                          dataclasses.replace(SPEC, vocabulary=VocabularyPolicy(kind=HASHED, default_buckets=50)))
    expected = hashed_ids(["10", "20", "10", "30", "40", "20"], 50)
    users = np.concatenate([hashed.train.sparse[:, 0], hashed.val.sparse[:, 0], hashed.test.sparse[:, 0]])
    assert users.tolist() == expected[[0, 2, 4, 3, 1, 5]].tolist()
    assert hashed.test.sparse[1, 1] == 0  # a missing value is 0 under every policy
    assert hashed.schema.extras["vocabulary"] == HASHED


def test_given_dense_params_replace_the_fitted_ones():
    spec = dataclasses.replace(SPEC, dense_params={"age": [0.0, 100.0]})
    ds = encode_table(toy_frame(), TRAIN, VAL, TEST, spec)
    assert ds.train.dense[:, 0].tolist() == pytest.approx([0.2, 0.4, 0.3])
    assert ds.encoders.dense[0].params == (0.0, 100.0)
    with pytest.raises(UserInputError, match=r"data\.dense_params\.age=\[0\.0\]: a minmax column takes"):
        encode_table(toy_frame(), TRAIN, VAL, TEST, dataclasses.replace(SPEC, dense_params={"age": [0.0]}))
