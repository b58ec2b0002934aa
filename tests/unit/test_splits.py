"""Row splits: sizes, determinism, coverage and the error for an unknown kind."""

from __future__ import annotations

import numpy as np
import pytest

from m3oe_lightning.data.splits import TRAINING_SPLITS, check_fractions, require_rows, split_indices
from m3oe_lightning.errors import UserInputError

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
