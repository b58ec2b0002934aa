"""The synthetic generator: deterministic, right shapes, both classes everywhere, and real structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m3oe_lightning.data.readers.synthetic import make_synthetic, synthetic_table
from m3oe_lightning.data.splits import split_indices
from m3oe_lightning.errors import UserInputError


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUC (scores are continuous, so ties do not matter)."""
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores)] = np.arange(1, len(scores) + 1)
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_regions_are_the_users_mod_ten_in_row_order():
    settings = {"rows": 500, "num_users": 37, "num_items": 10, "seed": 4}
    data, raw = make_synthetic(split="random", split_seed=1, **settings), synthetic_table(**settings).frame
    train, val, test = split_indices(len(raw), "random", 1)
    for name, rows in (("train", train), ("val", val), ("test", test)):
        assert data.regions.of(name).tolist() == (raw["user_id"].to_numpy()[rows] % 10).astype(str).tolist()


def test_same_seed_same_tensors_other_seed_differs():
    a, b, c = make_synthetic(seed=1), make_synthetic(seed=1), make_synthetic(seed=2)
    for name in ("train", "val", "test"):
        for key, tensor in a.split(name).to_dict().items():
            assert torch.equal(tensor, b.split(name).to_dict()[key])
    assert not torch.equal(a.train.labels, c.train.labels)


def test_shapes_names_and_dtypes():
    ds = make_synthetic(num_domains=4, num_tasks=3, rows=5000)
    schema = ds.schema
    assert schema.domains == ("d0", "d1", "d2", "d3") and schema.tasks == ("t0", "t1", "t2")
    assert [f.name for f in schema.sparse] == ["user_id", "item_id", "domain"]
    assert [f.name for f in schema.dense] == ["x0", "x1"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (4000, 500, 500)
    assert ds.train.sparse.shape == (4000, 3) and ds.train.sparse.dtype == torch.int64
    assert ds.train.dense.shape == (4000, 2) and ds.train.dense.dtype == torch.float32
    assert ds.train.labels.shape == (4000, 3) and ds.train.labels.dtype == torch.float32
    assert int(ds.train.domain.max()) == 3
    for split in (ds.train, ds.val, ds.test):
        for j, feature in enumerate(schema.sparse):
            assert int(split.sparse[:, j].min()) >= 0 and int(split.sparse[:, j].max()) < feature.vocab_size


def test_both_classes_in_every_domain_and_task():
    ds = make_synthetic()
    for split in (ds.train, ds.val, ds.test):
        for d in range(3):
            rows = split.labels[split.domain == d]
            for t in range(2):
                assert 0 < float(rows[:, t].mean()) < 1
    rates = ds.train.labels.mean(0)
    assert abs(float(rates[0]) - 0.5) < 0.02 and abs(float(rates[1]) - 0.35) < 0.02  # the funnel


def test_labels_follow_the_latent_structure_and_domain_signal_matters():
    full = synthetic_table(domain_signal=2.0, seed=3)
    blind = synthetic_table(domain_signal=0.0, seed=3)  # same rows and noise draws, no domain term
    for t in range(2):
        labels = full.frame[f"t{t}"].to_numpy()
        oracle = auc(full.clean_logits[:, t], labels)
        domain_blind = auc(blind.clean_logits[:, t], labels)
        assert oracle > 0.9
        assert oracle - domain_blind > 0.1


def test_split_options_and_bad_arguments():
    ordered = make_synthetic(rows=1000, split="ordered")
    assert len(ordered.train) == 800
    with pytest.raises(UserInputError, match="data.split"):
        make_synthetic(split="sideways")
    with pytest.raises(UserInputError, match="num_domains"):
        make_synthetic(num_domains=0)


def test_the_smallest_table_has_rows_in_every_split():
    """data.rows >= 10 (checked by the generator) is what keeps a val and a test row at 80/10/10."""
    ds = make_synthetic(rows=10, num_users=5, num_items=5)
    assert [len(ds.train), len(ds.val), len(ds.test)] == [8, 1, 1]
    with pytest.raises(UserInputError, match=r"^data\.rows=9: use an integer ≥ 10"):
        make_synthetic(rows=9, num_users=5, num_items=5)


def test_the_datamodule_checks_data_duplicates_up_front():
    from m3oe_lightning.data.datamodule import MDMTDataModule

    assert MDMTDataModule(name="synthetic").duplicates == "drop"
    with pytest.raises(UserInputError, match=r"^data\.duplicates='twice': use one of drop, error, keep"):
        MDMTDataModule(name="synthetic", duplicates="twice")
