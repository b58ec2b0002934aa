"""The feature specification: sites that never pool rows still give a value one id and a number one scale.

Hashed ids are fixed values of the text (checked against numbers computed by hand from blake2b), identical
in another process; two disjoint site files agree on a shared value under ``hashed`` and a vocabulary file
while fitted vocabularies disagree; :func:`spec_schema` equals the schema loading a file gives; bad settings
are one line naming the setting; a run trains through the public entry point with ``+data.vocabulary=hashed``.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from m3oe_lightning.data.datamodule import MDMTDataModule
from m3oe_lightning.data.encode import DEFAULT_HASH_BUCKETS, apply_scaling
from m3oe_lightning.data.encoders import Vocabulary, hashed_ids
from m3oe_lightning.data.readers.movielens import load_movielens1m
from m3oe_lightning.data.readers.tabular import load_tabular, tabular_settings
from m3oe_lightning.data.registry import load_dataset
from m3oe_lightning.data.spec import DATAMODULE_SETTINGS, spec_schema
from m3oe_lightning.errors import UserInputError
from tests.helpers import REPO_ROOT, isolated, run_module, seeded_store
from tests.unit.test_movielens_readers import write_ml1m
from tests.unit.test_tabular import SETTINGS, write_csv

TEXTS = ["7", "a", "", "user_42", "été"]
# 1 + int.from_bytes(blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") % (buckets - 1)
KNOWN_65536 = [5726, 51069, 11437, 59255, 12641]
KNOWN_1000 = [47, 78, 520, 611, 818]

# two sites' rows: users 1-6 at site A, 4-9 at site B (4, 5, 6 at both); both hold both domains
SITE_A = pd.DataFrame({
    "user_id": [1, 2, 3, 4, 5, 6, 1, 2, 3, 4],
    "item": ["a", "b", "c", "d", "a", "b", "c", "d", "a", "b"],
    "region": ["EU", "US", "EU", "US", "UK", "US", "EU", "US", "EU", "US"],
    "age": [20.0, 30.0, 40.0, 50.0, 60.0, 25.0, 35.0, 45.0, 55.0, 65.0],
    "price": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0],
    "rating": [5, 4, 3, 1, 2, 5, 4, 4, 5, 1],
    "bought": [1, 0, 0, 0, 0, 1, 0, 1, 1, 0],
})
SITE_B = SITE_A.assign(user_id=[4, 5, 6, 7, 8, 9, 7, 8, 9, 4], item=["x", "y", "d", "z", "x", "y", "z", "x", "y", "z"],
                       age=SITE_A["age"] * 2, price=SITE_A["price"] * 100)


def write_sites(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", SITE_A)
    write_csv(tmp_path / "b.csv", SITE_B)


def load_site(tmp_path: Path, site: str, **spec):
    return load_tabular(tmp_path, split="ordered", **{**SETTINGS, "path": f"{site}.csv", **spec})


def id_of(dataset, frame: pd.DataFrame, column: str, value) -> int:
    """The training id (ordered split: rows in file order) of ``value`` in ``column`` (all its rows agree)."""
    sparse = torch.cat([dataset.split(s).sparse for s in ("train", "val", "test")])
    j = [f.name for f in dataset.schema.sparse].index(column)
    ids = {int(i) for i in sparse[np.flatnonzero(frame[column].to_numpy() == value), j]}
    assert len(ids) == 1, ids
    return ids.pop()


# --- the hash -------------------------------------------------------------------------------------------


def test_hashed_ids_are_the_known_values_of_the_text():
    assert hashed_ids(TEXTS, 65536).tolist() == KNOWN_65536
    assert hashed_ids(TEXTS, 1000).tolist() == KNOWN_1000
    assert hashed_ids(TEXTS, 2).tolist() == [1] * len(TEXTS)  # one bucket besides the missing id
    vocabulary = Vocabulary(column="user_id", values=(), kind="long", buckets=1000)
    as_int, _ = vocabulary.ids(pd.Series([7, None, 7]))
    as_text, missing = vocabulary.ids(pd.Series(["7", None, "7"]))
    assert as_int.tolist() == as_text.tolist() == [47, 0, 47] and missing == 1  # 7 and "7" are one value


def test_hashed_ids_are_the_same_in_another_process():
    script = ("import json, sys; from m3oe_lightning.data.encoders import hashed_ids; "
              "print(json.dumps(hashed_ids(json.loads(sys.argv[1]), 65536).tolist()))")
    for seed in ("0", "12345"):  # Python's own str hash is salted per process; ours must not be
        result = subprocess.run([sys.executable, "-c", script, json.dumps(TEXTS)], capture_output=True, text=True,
                                cwd=REPO_ROOT, env={"PYTHONHASHSEED": seed, "PATH": ""}, timeout=120, check=True)
        assert json.loads(result.stdout) == KNOWN_65536


def test_hashing_a_million_distinct_values_takes_about_a_second():
    texts = np.asarray([str(k) for k in range(1_000_000)], dtype=object)
    start = time.perf_counter()
    ids = hashed_ids(texts, DEFAULT_HASH_BUCKETS)
    elapsed = time.perf_counter() - start
    assert ids.min() >= 1 and ids.max() < DEFAULT_HASH_BUCKETS
    assert elapsed < 5.0, f"{elapsed:.2f} s"  # ~0.75 s measured on the 2-core runner; 5 s leaves room for load


# --- sites agree without pooling ------------------------------------------------------------------------


def test_disjoint_sites_agree_on_a_shared_value_under_hashed_and_a_file_but_not_fitted(tmp_path):
    write_sites(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"user_id": [str(u) for u in range(1, 10)],
                                                     "item": ["a", "b", "c", "d", "x", "y", "z"]}))
    fitted = [id_of(load_site(tmp_path, s), f, "user_id", 4) for s, f in (("a", SITE_A), ("b", SITE_B))]
    assert fitted[0] != fitted[1]  # 4 is the fourth smallest user at site A, the smallest at site B
    for spec in ({"vocabulary": "hashed"}, {"vocabulary": "hashed", "hash_buckets": {"user_id": 97}},
                 {"vocabulary": "vocab.json"}):
        a, b = load_site(tmp_path, "a", **spec), load_site(tmp_path, "b", **spec)
        assert a.schema == b.schema, spec
        for column, value in (("user_id", 4), ("user_id", 6), ("item", "d")):
            assert id_of(a, SITE_A, column, value) == id_of(b, SITE_B, column, value), (spec, column, value)
        # the domain feature is domain index + 1 everywhere
        assert torch.equal(a.train.sparse[:, -1], a.train.domain + 1)
    by_file = load_site(tmp_path, "a", vocabulary="vocab.json")
    assert id_of(by_file, SITE_A, "user_id", 4) == 4 and id_of(by_file, SITE_A, "item", "d") == 4
    hashed = load_site(tmp_path, "a", vocabulary="hashed", hash_buckets=1000)
    assert id_of(hashed, SITE_A, "user_id", 4) == int(hashed_ids(["4"], 1000)[0])
    assert [f.vocab_size for f in hashed.schema.sparse] == [1000, 1000, 3]


def test_a_value_outside_the_vocabulary_file_gets_id_zero(tmp_path):
    write_sites(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"user_id": [4, 5, 6], "item": ["d"]}))
    site = load_site(tmp_path, "b", vocabulary="vocab.json")
    assert [f.vocab_size for f in site.schema.sparse] == [4, 2, 3]
    assert id_of(site, SITE_B, "user_id", 7) == 0 and id_of(site, SITE_B, "user_id", 6) == 3


def test_given_dense_params_scale_every_site_alike(tmp_path):
    write_sites(tmp_path)
    params = {"age": [0, 200], "price": [0.0, 7.0]}  # price is log1p: min and max of sign(x)*log1p(|x|)
    for site, frame in (("a", SITE_A), ("b", SITE_B)):
        dataset = load_site(tmp_path, site, dense_params=params)
        dense = torch.cat([dataset.split(s).dense for s in ("train", "val", "test")]).numpy()
        kept = frame[frame.region != "XX"]
        np.testing.assert_array_equal(dense[:, 0], apply_scaling(kept["age"].to_numpy(), "minmax", [0, 200]))
        np.testing.assert_array_equal(dense[:, 1], apply_scaling(kept["price"].to_numpy(), "log1p", [0.0, 7.0]))
        saved = {s.column: list(s.params) for s in dataset.encoders.dense}
        assert saved == {"age": [0.0, 200.0], "price": [0.0, 7.0]}
    fitted = load_site(tmp_path, "b")
    assert fitted.encoders.dense[0].params != (0.0, 200.0)  # without the setting the scale is fitted locally


def test_without_the_settings_nothing_changes_in_the_canonical_settings():
    settings = tabular_settings(**SETTINGS, path="x.csv")
    assert not {"vocabulary", "hash_buckets", "dense_params"} & set(settings)  # cache keys as before
    hashed = tabular_settings(**SETTINGS, path="x.csv", vocabulary="hashed")
    assert hashed["vocabulary"] == "hashed" and hashed["hash_buckets"] == DEFAULT_HASH_BUCKETS


def test_the_cache_is_keyed_on_the_vocabulary_file_contents(tmp_path):
    write_sites(tmp_path)
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({"user_id": ["4"], "item": ["d"]}))
    kwargs = dict(root=str(tmp_path), split="ordered", split_seed=1, download=False, cache_dir=tmp_path / "cache",
                  **SETTINGS, path="a.csv", vocabulary="vocab.json")
    first = load_dataset("tabular", **kwargs)
    vocab.write_text(json.dumps({"user_id": ["1", "4"], "item": ["d"]}))
    second = load_dataset("tabular", **kwargs)
    assert first.schema.sparse[0].vocab_size == 2 and second.schema.sparse[0].vocab_size == 3


# --- the schema without data ----------------------------------------------------------------------------


def data_cfg(**settings) -> dict:
    return {"_target_": "m3oe_lightning.data.datamodule.MDMTDataModule", "name": "tabular", "root": None,
            "cache_dir": "${paths.cache_dir}", "batch_size": 4096, **SETTINGS, "path": "a.csv", **settings}


@pytest.mark.parametrize("spec", [{"vocabulary": "hashed"}, {"vocabulary": "hashed", "hash_buckets": 33},
                                  {"vocabulary": "hashed", "hash_buckets": {"item": 5}, "embed_dim": 4},
                                  {"vocabulary": "vocab.json"}])
def test_spec_schema_equals_the_schema_a_site_loads(tmp_path, spec):
    write_sites(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"user_id": [1, 2, 3], "item": ["a"], "other": ["z"]}))
    built = spec_schema({**data_cfg(**spec), "root": str(tmp_path), "path": None})  # no file is named or opened
    for site in ("a", "b"):
        assert load_site(tmp_path, site, **spec).schema == built
    assert built.domains == ("europe", "america") and built.tasks == ("click", "like", "buy")


def test_spec_schema_equals_the_movielens_schema(tmp_path):
    folder = write_ml1m(tmp_path / "ml")
    built = spec_schema({"name": "movielens1m", "root": str(folder), "vocabulary": "hashed",
                         "hash_buckets": {"user_id": 4096}})
    loaded = load_movielens1m(folder, split="ordered", vocabulary="hashed", hash_buckets={"user_id": 4096})
    assert built == loaded.schema and built.sparse[0].vocab_size == 4096


def test_the_datamodule_settings_spec_schema_skips_are_the_datamodules_own():
    own = set(inspect.signature(MDMTDataModule.__init__).parameters) - {"self", "options"}
    assert DATAMODULE_SETTINGS == own | {"_target_"}


@pytest.mark.parametrize(("settings", "expected"), [
    ({}, r"^data\.vocabulary=fitted: .*set \+data\.vocabulary=hashed"),
    ({"vocabulary": "hashed", "domains": None}, r"^data\.domains=null: .*set data\.domains="),
    ({"name": "synthetic", "vocabulary": "hashed"}, r"^data=synthetic: a schema without data is built for"),
    ({"vocabulary": "vocab.json"}, r"vocab\.json \(data\.vocabulary\) has no entry for feature 'item'"),
])
def test_spec_schema_refuses_settings_that_make_it_data_dependent(tmp_path, settings, expected):
    (tmp_path / "vocab.json").write_text(json.dumps({"user_id": ["1"]}))
    with pytest.raises(UserInputError, match=expected):
        spec_schema({**data_cfg(**settings), "root": str(tmp_path)})


# --- bad settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "expected"), [
    ({"vocabulary": "hashed", "hash_buckets": 1}, r"^data\.hash_buckets=1: use an integer ≥ 2"),
    ({"vocabulary": "hashed", "hash_buckets": "many"}, r"^data\.hash_buckets='many': use an integer ≥ 2"),
    ({"vocabulary": "hashed", "hash_buckets": {"item": 0}}, r"^data\.hash_buckets\.item=0: use an integer ≥ 2"),
    ({"vocabulary": "hashed", "hash_buckets": {"zip": 8}}, r"^data\.hash_buckets names 'zip', which is not a sparse"),
    ({"hash_buckets": 8}, r"^data\.hash_buckets is set but data\.vocabulary=fitted"),
    ({"vocabulary": 3}, r"^data\.vocabulary=3: use fitted"),
    ({"vocabulary": "hashd"}, r"^data\.vocabulary='hashd': .* is not a file; use fitted, hashed"),
    ({"dense_params": {"age": [1]}}, r"^data\.dense_params\.age=\[1\]: a minmax column takes \[min, max\]"),
    ({"dense_params": {"age": [5, 1]}}, r"^data\.dense_params\.age=\[5, 1\]: min 5 is above max 1"),
    ({"dense_params": {"age": [0, float("nan")]}}, r"^data\.dense_params\.age=.*finite numbers"),
    ({"dense_params": {"zip": [0, 1]}}, r"^data\.dense_params names 'zip', which is not a dense feature"),
    ({"dense_params": [0, 1]}, r"^data\.dense_params=\[0, 1\]: give \{dense column"),
])
def test_bad_settings_are_one_line_naming_the_setting(tmp_path, settings, expected):
    write_sites(tmp_path)
    with pytest.raises(UserInputError, match=expected):
        load_site(tmp_path, "a", **settings)


@pytest.mark.parametrize(("content", "expected"), [
    ({"user_id": ["1"]}, r"vocab\.json \(data\.vocabulary\) has no entry for feature 'item'; add"),
    ({"user_id": ["1", 1], "item": []}, r"vocab\.json: feature 'user_id' lists '1' more than once"),
    ({"user_id": [1.5], "item": []}, r"vocab\.json: feature 'user_id' holds 1\.5; values are strings or integers"),
    ({"user_id": "1", "item": []}, r"vocab\.json: feature 'user_id' must map to a list"),
    (["1"], r"vocab\.json \(data\.vocabulary\) must hold one JSON object"),
])
def test_a_bad_vocabulary_file_names_the_file_and_the_feature(tmp_path, content, expected):
    write_sites(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps(content))
    with pytest.raises(UserInputError, match=expected):
        load_site(tmp_path, "a", vocabulary="vocab.json")


def test_movielens_takes_only_the_feature_specification_settings(tmp_path):
    folder = write_ml1m(tmp_path / "ml")
    with pytest.raises(UserInputError, match=r"unknown data settings for movielens1m: \['path'\]"):
        load_movielens1m(folder, path="x")
    hashed = load_movielens1m(folder, split="ordered", vocabulary="hashed", hash_buckets=64)
    assert [f.vocab_size for f in hashed.schema.sparse] == [64] * 6 + [4]


# --- through the public entry point ---------------------------------------------------------------------


def test_a_hashed_vocabulary_run_trains_through_the_entry_point(tmp_path):
    rows = pd.concat([SITE_A, SITE_B] * 4, ignore_index=True)
    write_csv(tmp_path / "rows.csv", rows)
    seeded_store(tmp_path)  # isolated() points the run at tmp_path/mlflow.db
    result = run_module("m3oe_lightning.train", [
        *isolated(tmp_path), "data=tabular", f"data.path={tmp_path / 'rows.csv'}", "data.domain_column=region",
        "data.domains={EU: europe, UK: europe, US: america}", "data.tasks={click: 'rating >= 4'}",
        "data.sparse_features=[user_id,item]", "data.dense_features={age: minmax}", "+data.vocabulary=hashed",
        "+data.hash_buckets={user_id: 128}", "+data.dense_params={age: [0, 150]}", "model=mlp",
        "trainer.max_epochs=1", "data.batch_size=16"], cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("m3oe-lightning").experiment_id])
    assert run.data.params["data.vocabulary"] == "hashed" and run.info.status == "FINISHED"
    assert "test/auc_mean" in run.data.metrics
