"""Sites holding their own data (federated/sites.py) without a deployment: settings, a site's client, the
coordinator's model, scoring at the sites and a site's state on disk. The live deployment is
tests/integration/test_flower_sites.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from m3oe_lightning.data.spec import spec_schema
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.federated import sites
from m3oe_lightning.federated.factory import build_federated
from m3oe_lightning.federated.flower.run_config import compose_federate
from m3oe_lightning.federated.messages import EvaluateIns, EvaluateRes, FitIns, get_arrays
from m3oe_lightning.federated.sites import (
    SiteConfig,
    SiteEvaluator,
    SiteSplitScore,
    SiteStateStore,
    build_coordinator,
    build_site,
    data_override,
    site_lists,
    site_means,
)
from tests.helpers import isolated, run_module

SPEC = ["data=tabular", "data.domain_column=region", "data.domains={EU: eu, US: us}", "data.tasks={click: click}",
        "data.sparse_features=[user_id,item_id]", "data.dense_features={age: minmax}", "+data.vocabulary=hashed",
        "+data.hash_buckets=128", "model.star_dim=8", "model.bottom_dim=8", "model.expert_dims=[8]",
        "model.tower_dims=[8]", "seed=4", "threads=1", "federated.partition=sites", "federated.sites=[a,b]",
        "federated.heldout_sites=[h]"]


def site_file(folder, seed: int, rows: int = 300):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"user_id": rng.integers(0, 40, rows), "item_id": rng.integers(0, 30, rows),
                          "region": rng.choice(["EU", "US"], rows), "age": rng.integers(18, 70, rows),
                          "click": rng.integers(0, 2, rows)})
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "events.csv", index=False)
    return folder / "events.csv"


def site_cfg(tmp_path, path, *extra):
    base = [*SPEC, *isolated(tmp_path)[:4], *extra]
    return compose_federate([*base, data_override(compose_federate(base).data, str(path))])


def test_node_configs_and_site_lists_are_read_and_checked():
    assert SiteConfig.from_node_config({"partition-id": 0}) is None  # an emulated node
    site = SiteConfig.from_node_config({"data-path": "/x.csv", "client-id": " a ", "heldout": "true",
                                        "state-dir": "/s"})
    assert site == SiteConfig("a", "/x.csv", heldout=True, state_dir="/s")
    with pytest.raises(UserInputError, match="client-id is not"):
        SiteConfig.from_node_config({"data-path": "/x.csv"})
    assert site_lists({"sites": ["a", "b"], "heldout_sites": ["h"]}) == (["a", "b"], ["h"])
    with pytest.raises(UserInputError, match="needs federated.sites"):
        site_lists({"sites": None})
    with pytest.raises(UserInputError, match=r"repeated: \['a'\]"):
        site_lists({"sites": ["a", "b"], "heldout_sites": ["a"]})
    assert data_override({"path": None}, "/d/x.csv") == "data.path=/d/x.csv"
    assert data_override({"root": None}, "/d/ml") == "data.root=/d/ml"


def test_a_site_reads_its_file_and_the_coordinator_builds_the_same_model_without_data(tmp_path):
    path = site_file(tmp_path / "a", seed=1)
    setup = build_site(site_cfg(tmp_path, path), SiteConfig("a", str(path)))
    data = setup.client.data
    assert len(data.train) + len(data.val) + len(data.test) == 300  # all its rows are its client's
    coordinator = build_coordinator(compose_federate([*SPEC, *isolated(tmp_path)[:4]]))  # data.path unset
    assert coordinator.schema == data.schema and (coordinator.training, coordinator.heldout) == (["a", "b"], ["h"])
    site_weights = setup.client.model.state_dict()
    for name, tensor in coordinator.initial_arrays.items():  # same seed, same spec: the same initial weights
        torch.testing.assert_close(site_weights[name], tensor)


def test_sites_refuse_what_they_are_not(tmp_path, monkeypatch):
    path = site_file(tmp_path / "a", seed=1)
    with pytest.raises(UserInputError, match="'z' is not among federated.sites"):
        build_site(site_cfg(tmp_path, path), SiteConfig("z", str(path)))
    with pytest.raises(UserInputError, match="heldout_sites says otherwise"):
        build_site(site_cfg(tmp_path, path), SiteConfig("h", str(path), heldout=False))
    with pytest.raises(UserInputError, match="needs a Flower deployment"):
        build_federated(site_cfg(tmp_path, path))  # m3oe-federate in one process has no sites to reach
    # a specification other than what the site's data gives (here: other bucket counts) is refused
    other = spec_schema(site_cfg(tmp_path, path, "data.hash_buckets=64").data)
    monkeypatch.setattr(sites, "spec_schema", lambda _data: other)
    with pytest.raises(UserInputError, match="use the same data.\\* settings at every site"):
        build_site(site_cfg(tmp_path, path), SiteConfig("a", str(path)))


def test_scores_at_the_sites_combine_like_the_pooled_rows_where_they_can():
    replies = {"a": EvaluateRes(num_examples=100, metrics={"auc_mean": 0.6, "logloss_mean": 0.5}),
               "b": EvaluateRes(num_examples=300, metrics={"auc_mean": 0.8, "logloss_mean": 0.3}),
               "h": EvaluateRes(num_examples=50, metrics={"auc_mean": 0.7, "logloss_mean": 0.4})}
    assert site_means({k: replies[k] for k in "ab"}) == pytest.approx({"auc_client_mean": 0.7,
                                                                       "logloss_client_mean": 0.35})
    sent = []

    def evaluate_at(instructions):
        sent.append({cid: dict(ins.config) for cid, ins in instructions.items()})
        return {cid: replies[cid] for cid in instructions if cid != "b" or len(sent) > 1}  # b misses the first

    metrics = SiteEvaluator(evaluate_at, ["a", "b"], ["h"])(1, {"w": torch.zeros(1)})
    assert sent[0] == {c: {"model": "global", "split": "test"} for c in ("a", "b", "h")}
    assert metrics["global/auc_client_mean"] == pytest.approx(0.6)  # over the sites that answered
    assert metrics["heldout/auc_client_mean"] == pytest.approx(0.7) and "global/site/b/auc_mean" not in metrics
    score = SiteSplitScore(evaluate_at, ["a", "b"], "val")({"w": torch.zeros(1)})
    assert sent[1] == {c: {"model": "global", "split": "val"} for c in ("a", "b")}
    assert score == pytest.approx({"auc_mean": (0.6 * 100 + 0.8 * 300) / 400, "logloss_mean": 0.35})


def test_a_site_keeps_its_state_per_round_and_starts_a_round_from_the_one_before(tmp_path):
    store = SiteStateStore(tmp_path / "a" / "run")
    assert store.load() == {}
    for server_round in (1, 2, 3):
        store.save(server_round, {"personal": {"w": torch.full((2,), float(server_round))}})
    assert store.rounds() == [2, 3]  # the newest two
    assert store.load()["personal"]["w"].tolist() == [3.0, 3.0]
    assert store.load(before_round=3)["personal"]["w"].tolist() == [2.0, 2.0]  # resuming round 3
    assert store.load(before_round=2) == {}
    store.clear()
    assert store.rounds() == []


def test_the_site_command_refuses_a_connection_without_tls_or_insecure_in_one_line(tmp_path):
    for args, message in ((["--superlink", "127.0.0.1:1"], "give --root-certificates <ca.pem> (TLS) or --insecure"),
                          (["--superlink", "127.0.0.1:1", "--root-certificates", str(tmp_path / "no.pem")],
                           "no.pem: no such file")):
        done = run_module("m3oe_lightning.site_node", args, cwd=tmp_path, timeout=60)
        assert done.returncode == 2 and message in done.stderr
        assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr


def test_a_site_holding_only_some_of_the_federations_domains_trains_and_scores(tmp_path, capsys):
    path = site_file(tmp_path / "eu", seed=2)
    frame = pd.read_csv(path)
    frame[frame.region == "EU"].to_csv(path, index=False)  # this site has no US rows at all
    setup = build_site(site_cfg(tmp_path, path), SiteConfig("a", str(path)))
    assert "domain 'us' (region = US) has no rows" in capsys.readouterr().out
    assert setup.client.data.schema.domains == ("eu", "us")  # the federation's domains, ids unchanged
    reply = setup.client.fit(FitIns(get_arrays(setup.client.model), {"server_round": 1, "local_epochs": 1,
                                                                     "lr": 0.01}))
    assert reply.num_examples == len(setup.client.data.train)
    scored = setup.client.evaluate(EvaluateIns(reply.arrays, {"model": "global"}))
    assert 0.0 <= scored.metrics["auc_mean"] <= 1.0 and "auc/us/click" not in scored.metrics
