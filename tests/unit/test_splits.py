"""Row splits: sizes, determinism, coverage, the error for an unknown kind, and MovieLens's released order."""

from __future__ import annotations

import numpy as np
import pytest

from m3oe_lightning.data.paths import resolve_data_root
from m3oe_lightning.data.readers.movielens import load_movielens1m, read_movielens1m, released_order
from m3oe_lightning.data.splits import (
    TRAINING_SPLITS,
    check_fractions,
    first_appearance_order,
    merge_grouped_order,
    require_rows,
    split_in_order,
    split_indices,
)
from m3oe_lightning.errors import UserInputError
from tests.unit.test_movielens_readers import write_ml1m

ML1M_ROWS = 1_000_209


def test_ordered_ml1m_sizes_are_the_documented_ones():
    train, val, test = split_indices(ML1M_ROWS, "ordered", seed=0)
    assert (len(train), len(val), len(test)) == (800_167, 100_021, 100_021)
    assert train[0] == 0 and train[-1] == 800_166 and val[0] == 800_167 and test[-1] == ML1M_ROWS - 1
    assert np.all(np.diff(np.concatenate([train, val, test])) == 1)


@pytest.mark.parametrize("kind", ["random", "ordered"])
@pytest.mark.parametrize("n", [0, 1, 7, 10, 1001])
def test_splits_partition_all_rows(kind, n):
    parts = split_indices(n, kind, seed=3)
    joined = np.concatenate(parts)
    assert joined.dtype == np.int64
    assert np.array_equal(np.sort(joined), np.arange(n))
    assert [len(p) for p in parts] == [len(p) for p in split_indices(n, "ordered", seed=0)]


def test_random_split_is_seeded():
    a = split_indices(1000, "random", seed=2022)
    b = split_indices(1000, "random", seed=2022)
    c = split_indices(1000, "random", seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])
    assert not np.array_equal(a[0], np.arange(800))  # actually shuffled, not file order
    assert all(np.all(np.diff(p) > 0) for p in a)  # each part sorted


def test_custom_fractions():
    train, val, test = split_indices(100, "ordered", seed=0, fractions=(0.5, 0.25, 0.25))
    assert (len(train), len(val), len(test)) == (50, 25, 25)
    with pytest.raises(UserInputError, match="sum"):
        split_indices(100, "ordered", seed=0, fractions=(0.5, 0.5, 0.5))


def test_unknown_kind_names_the_setting():
    with pytest.raises(UserInputError, match=r"data\.split='sideways'.*random, ordered"):
        split_indices(10, "sideways", seed=0)


@pytest.mark.parametrize("value", [[0.5, 0.5], [0.5, 0.6, -0.1], [0.5, "x", 0.5], [True, 0.0, 0.0], 3, [0.5, 0.5, 0.1]])
def test_bad_fractions_name_the_setting(value):
    with pytest.raises(UserInputError, match=r"^data\.split_fractions=.*: give three non-negative numbers"):
        check_fractions("data.split_fractions", value)


def test_fractions_that_must_not_be_empty():
    assert check_fractions("f", (0.7, 0.0, 0.3), nonempty=("train", "test")) == [0.7, 0.0, 0.3]
    with pytest.raises(UserInputError, match=r"f=\[0\.5, 0\.5, 0\.0\]: .* with train and test > 0"):
        check_fractions("f", [0.5, 0.5, 0.0], nonempty=("train", "test"))


@pytest.mark.parametrize("kind", ["random", "ordered"])
def test_a_split_that_rounds_to_no_rows_is_refused_with_the_counts(kind):
    """5 rows at 80/10/10 give 4/0/1: training would stop after epoch 1 without a validation row."""
    assert [len(p) for p in split_indices(5, kind, seed=0)] == [4, 0, 1]  # allowed unless asked (federated)
    with pytest.raises(UserInputError) as err:
        split_indices(5, kind, seed=0, nonempty=TRAINING_SPLITS, advice="raise data.rows")
    assert str(err.value) == "5 rows split into 4 train, 0 val, 1 test rows: the val split is empty; raise data.rows"
    assert [len(p) for p in split_indices(10, kind, seed=0, nonempty=TRAINING_SPLITS)] == [8, 1, 1]


def test_require_rows_names_every_empty_split():
    with pytest.raises(UserInputError, match=r"^1 rows split into 0 train, 0 val, 1 test rows: the train and val "
                                             r"splits are empty; use more rows$"):
        require_rows((np.arange(0), np.arange(0), np.arange(1)))
    require_rows((np.arange(1), np.arange(0), np.arange(1)), nonempty=("train", "test"))


def test_every_split_kind_can_require_rows():
    with pytest.raises(UserInputError, match=r"with train and val and test > 0"):
        check_fractions("data.split_fractions", [0.9, 0.0, 0.1], nonempty=TRAINING_SPLITS)


# --- the released code's row order (data.split=released, MovieLens) -----------------------------------


def test_first_appearance_order_groups_keys_in_order_of_first_sight():
    keys = np.array([7, 3, 7, 9, 3, 7])
    assert first_appearance_order(keys).tolist() == [0, 2, 5, 1, 4, 3]  # 7s, then 3s, then the 9; stable
    assert first_appearance_order(np.array([], dtype=np.int64)).tolist() == []


def test_merge_grouped_order_groups_by_the_first_key_then_the_second():
    movies = np.array([1, 2, 3, 3, 1, 2, 3, 1, 2, 1])
    users = np.array([1, 1, 3, 1, 2, 2, 4, 5, 5, 4])
    # by movie: rows 0 4 7 9 | 1 5 8 | 2 3 6 (users 1 2 5 4 1 2 5 3 1 4); then by user in that order: 1, 2, 5, 4, 3
    assert merge_grouped_order(movies, users).tolist() == [0, 1, 3, 4, 5, 7, 8, 9, 6, 2]


def test_split_in_order_cuts_blocks_of_the_order_and_sorts_each_part():
    order = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    train, val, test = split_in_order(order)
    assert train.tolist() == [2, 3, 4, 5, 6, 7, 8, 9] and val.tolist() == [1] and test.tolist() == [0]
    identity = split_in_order(np.arange(ML1M_ROWS))
    assert all(np.array_equal(a, b) for a, b in zip(identity, split_indices(ML1M_ROWS, "ordered")))
    with pytest.raises(UserInputError, match="val split is empty"):
        split_in_order(np.arange(5), nonempty=TRAINING_SPLITS)


def test_released_split_of_a_tiny_movielens_file(tmp_path):
    folder = write_ml1m(tmp_path / "ml")
    assert released_order(read_movielens1m(folder)).tolist() == [0, 1, 3, 4, 5, 7, 8, 9, 6, 2]
    released = load_movielens1m(folder, split="released")
    ordered = load_movielens1m(folder, split="ordered")
    # val/test: line 6 (user 4, age 45) and line 2 (user 3, age 25) instead of the file's last lines 8 and 9
    assert (released.val.domain.tolist(), released.test.domain.tolist()) == ([2], [1])
    assert (ordered.val.domain.tolist(), ordered.test.domain.tolist()) == ([0], [2])
    with pytest.raises(UserInputError, match=r"data\.split='sideways'.*random, ordered, released"):
        load_movielens1m(folder, split="sideways")


def test_released_order_of_ml1m_is_the_released_files_order():
    """The released repository's ml-1m-sample.csv (its file's first 500 rows) holds users 1, 2, 12, 15 and
    17 in blocks of 53, 129, 23, 201 and 94 rows, user 2's block starting with the movies below (not in
    ratings.dat's order, which starts with 1357): what the rebuilt order gives."""
    frame = read_movielens1m(resolve_data_root(None) / "movielens-1m")
    order = released_order(frame)
    users, movies = frame["user_id"].to_numpy()[order], frame["movie_id"].to_numpy()[order]
    blocks = [(int(u), int((users[:500] == u).sum())) for u in dict.fromkeys(users[:500].tolist())]
    assert blocks == [(1, 53), (2, 129), (12, 23), (15, 201), (17, 94)]
    assert movies[53:61].tolist() == [1193, 3105, 2321, 1962, 1207, 2028, 1246, 1357]
    train, val, test = split_in_order(order)
    assert (len(train), len(val), len(test)) == (800_167, 100_021, 100_021)
    user_ids = frame["user_id"].to_numpy()
    assert not np.isin(user_ids[test], user_ids[train]).any()  # user-disjoint, as the released protocol


def test_released_on_a_dataset_without_that_order_says_what_to_use():
    with pytest.raises(UserInputError, match=r"data\.split='released' .* random, ordered .*data\.split=ordered"):
        split_indices(10, "released")
