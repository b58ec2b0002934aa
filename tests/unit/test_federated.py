"""Federated package: aggregation, partitions, settings checks, faults, FedProx/FedAvg/Ditto/Local."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from m3oe_lightning.config import CONF_DIR
from m3oe_lightning.data.datamodule import MDMTDataModule
from m3oe_lightning.data.readers.synthetic import make_synthetic
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.federated.factory import build_federated, build_strategy, constructor_settings
from m3oe_lightning.federated.messages import FitRes, nbytes, overlay, weighted_average
from m3oe_lightning.federated.partition import partition, pool_of, region_keys
from m3oe_lightning.federated.simulation import ServerState
from m3oe_lightning.federated.strategies import PAGE, Ditto, FedAvg, FedProx, Local
from tests.helpers import compose_train, isolated, recommendation_models

SYNTH = {"rows": 1500, "num_users": 60, "num_items": 40, "seed": 0}
TINY_MODEL = ["model.star_dim=16", "model.bottom_dim=8", "model.expert_dims=[8]", "model.tower_dims=[8]"]


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic(split="random", split_seed=0, **SYNTH)


def setup_for(tmp_path, *overrides: str):
    """A ready simulation on tiny synthetic data with a tiny M3oE (built as the entry point builds it)."""
    cfg = compose_train(["data=synthetic", "data.rows=1500", "data.num_users=60", "data.num_items=40",
                         "data.batch_size=256", *TINY_MODEL, "federated.rounds=1", "seed=5",
                         *isolated(tmp_path)[:4], *overrides], config_name="federate")
    return build_federated(cfg)


# ----------------------------------------------------------------------------------------------- configs
def test_every_federated_option_and_preset_composes_and_builds_its_strategy():
    expected = {"fedavg": FedAvg, "fedprox": FedProx, "ditto": Ditto, "local": Local, "page": PAGE}
    presets = {"fedavg_m3oe": "fedavg", "page_m3oe": "page", "centralized": "fedavg",
               "page_synthetic": "fedavg"}  # preset -> strategy
    assert set(expected) == {p.stem for p in (Path(CONF_DIR) / "federated").glob("*.yaml")}
    assert set(presets) == {p.stem for p in (Path(CONF_DIR) / "experiment" / "federated").glob("*.yaml")}
    choices = [(f"federated={o}", o, o) for o in expected] + [(f"experiment=federated/{p}", p, s)
                                                             for p, s in presets.items()]
    for override, option, name in choices:
        cfg = compose_train([override], config_name="federate")
        strategy = build_strategy(cfg.federated, cfg.seed)
        assert type(strategy) is expected[name] and strategy.name == cfg.federated.name == name
        assert (cfg.federated.personal == "domain_experts") == option.endswith("_m3oe")
        assert cfg.federated.centralized == (option == "centralized")
        assert cfg.optimizer.lr == strategy.client_lr and cfg.logger.experiment_name == "m3oe-federated"
        assert set(cfg.federated.strategy) == {"_target_"}  # each setting is declared once, as federated.*
        assert set(constructor_settings(type(strategy))) - {"seed"} <= set(cfg.federated)


def test_strategy_settings_reach_the_constructor_and_the_round_config_under_one_name():
    prox = build_strategy(compose_train(["federated=fedprox", "federated.mu=0.25", "seed=3"],
                                        config_name="federate").federated, 3)
    assert prox.mu == 0.25 and prox.fit_config(1)["mu"] == 0.25 and prox.seed == 3
    ditto = build_strategy(compose_train(["federated=ditto", "federated.lam=0.5", "federated.personal_epochs=2"],
                                         config_name="federate").federated, 0)
    assert ditto.fit_config(1)["lam"] == 0.5 and ditto.fit_config(1)["personal_epochs"] == 2
    assert constructor_settings(Ditto) == ["lam", "personal_epochs", "local_epochs", "client_lr", "fraction_train",
                                           "min_clients", "seed"]


# ------------------------------------------------------------------------------------------ aggregation
def test_fedavg_of_identical_clients_leaves_weights_unchanged(tmp_path):
    setup = setup_for(tmp_path)
    arrays = setup.simulation.state.global_arrays
    replies = {f"c{k}": FitRes(arrays={n: t.clone() for n, t in arrays.items()}, num_examples=n)
               for k, n in enumerate((3, 17, 1000))}
    out, metrics = FedAvg().aggregate_train(1, replies)
    assert metrics == {} and out.keys() == arrays.keys()
    assert all(torch.equal(out[n], arrays[n]) and out[n].dtype == arrays[n].dtype for n in arrays)


def test_aggregation_weights_are_respected():
    a = {"w": torch.zeros(3), "steps": torch.tensor(1)}
    b = {"w": torch.ones(3), "steps": torch.tensor(9)}
    out, _ = FedAvg().aggregate_train(1, {"a": FitRes(a, 1), "b": FitRes(b, 3)})
    assert torch.allclose(out["w"], torch.full((3,), 0.75))
    assert int(out["steps"]) == 9  # a non-float entry comes from the heaviest reply
    assert torch.allclose(weighted_average([(a, 2.0), (b, 2.0)])["w"], torch.full((3,), 0.5))
    assert nbytes(a) == 3 * 4 + 8


# ------------------------------------------------------------------------------------------- partitions
def all_rows(federation) -> np.ndarray:
    return np.sort(np.concatenate([c.rows for c in federation.clients + federation.heldout]))


@pytest.mark.parametrize("kind", ["domain", "region", "dirichlet"])
def test_partitions_cover_every_row_exactly_once_and_are_seeded(synthetic, kind):
    n = len(pool_of(synthetic))
    keys = (np.arange(n) % 7).astype(str) if kind == "region" else None
    settings = {"partition": kind, "num_clients": 4, "alpha": 0.5, "heldout_clients": 1, "region_keys": keys}
    first = partition(synthetic, seed=3, **settings)
    assert np.array_equal(all_rows(first), np.arange(n))
    assert first.pool_size == n and len(first.heldout) == 1
    assert len(first.global_test) == sum(c.num_test for c in first.clients)
    assert len(first.heldout_test) == first.heldout[0].num_test
    again = partition(synthetic, seed=3, **settings)
    assert [c.client_id for c in again.clients] == [c.client_id for c in first.clients]
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(again.clients, first.clients))
    for client in first.clients + first.heldout:  # local splits partition the client's rows
        assert len(client.rows) == len(client.data.train) + len(client.data.val) + len(client.data.test)


def test_domain_clients_hold_one_domain_and_dirichlet_keeps_users_whole(synthetic):
    by_domain = partition(synthetic, partition="domain")
    for client in by_domain.clients:
        assert {client.client_id} == {synthetic.schema.domains[d] for d in client.data.train.domain.tolist()}
    dirichlet = partition(synthetic, partition="dirichlet", num_clients=5, alpha=0.3, seed=1)
    owners: dict[int, set[str]] = {}
    for client in dirichlet.clients:
        for split in (client.data.train, client.data.val, client.data.test):
            for user in split.sparse[:, 0].tolist():
                owners.setdefault(user, set()).add(client.client_id)
    assert all(len(o) == 1 for u, o in owners.items() if u > 0)
    other = partition(synthetic, partition="dirichlet", num_clients=5, alpha=0.3, seed=2)
    assert [len(c.rows) for c in other.clients] != [len(c.rows) for c in dirichlet.clients]


def test_synthetic_region_keys_line_up_with_the_encoded_rows(synthetic):
    dm = MDMTDataModule(name="synthetic", split="random", split_seed=0, **SYNTH)
    keys = region_keys(dm, dm.load())
    assert len(keys) == len(pool_of(synthetic)) and set(keys) <= {str(k) for k in range(10)}
    federation = partition(dm.load(), partition="region", region_keys=keys)
    assert len(federation.clients) == 10 and federation.clients[0].client_id == "region0"


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"partition": "domain", "heldout_clients": 3}, "heldout_clients=3 but partition=domain gives 3"),
        ({"partition": "dirichlet", "alpha": 0.0}, "federated.alpha=0.0"),
        ({"partition": "dirichlet", "alpha": -1.0}, "federated.alpha=-1.0"),
        ({"partition": "dirichlet", "num_clients": 200, "alpha": 0.05}, "leaves a client without rows"),
        ({"partition": "zipcode"}, "federated.partition='zipcode'"),
        ({"partition": "domain", "local_split": [0.5, 0.5, 0.0]}, "federated.local_split"),
    ],
    ids=["heldout", "alpha0", "alpha-neg", "empty-client", "kind", "split"],
)
def test_bad_partition_settings_fail_with_one_clear_error(synthetic, settings, message):
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace("[", r"\[")):
        partition(synthetic, **settings)


def test_bad_strategy_settings_fail_before_training(tmp_path):
    with pytest.raises(UserInputError, match="min_clients=3 but only 2"):
        setup_for(tmp_path, "federated.min_clients=3", "federated.heldout_clients=1")
    with pytest.raises(UserInputError, match="federated.rounds=0"):
        setup_for(tmp_path, "federated.rounds=0")
    with pytest.raises(UserInputError, match="federated.mu=-1"):
        setup_for(tmp_path, "federated=fedprox", "federated.mu=-1")
    with pytest.raises(UserInputError, match="federated.evaluate_every=0: use a positive integer"):
        setup_for(tmp_path, "federated.evaluate_every=0")


@pytest.mark.parametrize("algorithm", ["fedavg", "page"])
def test_evaluating_every_kth_round_skips_the_others_and_trains_the_same(tmp_path, algorithm):
    """Rounds 1 and 3 of 4 are not scored at all; the global model comes out as when every round is."""
    import lightning as L

    finals, histories = {}, {}
    for every in (1, 2):
        L.seed_everything(5, verbose=False)
        setup = setup_for(tmp_path / str(every), f"federated={algorithm}", f"federated.evaluate_every={every}")
        state = setup.simulation.run(4)
        finals[every], histories[every] = state.global_arrays, state.history
    assert [m["round/evaluated"] for m in histories[2]] == [0.0, 1.0, 0.0, 1.0]
    for m in histories[2][::2]:
        assert not any(k.startswith(("personal/", "global/", "global_val/", "client/")) for k in m)
        assert m["time/evaluate_s"] < 1e-3 and m["round/clients_ok"] == 3
    for m in histories[2][1::2]:
        assert {"personal/auc_mean", "global/auc_mean", "global_val/auc_mean", "client/d0/auc_mean"} <= set(m)
    assert histories[2][3]["global/auc_mean"] == histories[1][3]["global/auc_mean"]
    assert all(torch.equal(finals[1][n], finals[2][n]) for n in finals[1])


# ---------------------------------------------------------------------------------------------- rounds
def test_a_failing_client_is_dropped_and_the_round_completes(tmp_path, monkeypatch):
    setup = setup_for(tmp_path)
    sim = setup.simulation
    broken = sim.clients["d1"]
    monkeypatch.setattr(broken, "fit", lambda ins: (_ for _ in ()).throw(RuntimeError("disk full")))
    before = {n: t.clone() for n, t in sim.state.global_arrays.items()}
    metrics = sim.run_round()
    assert metrics["round/clients_failed"] == 1 and metrics["round/clients_ok"] == 2
    assert metrics["round/aggregated"] == 1 and "client/d1/auc_mean" not in metrics
    assert {"client/d0/auc_mean", "client/d2/auc_mean", "global/auc_mean"} <= set(metrics)
    assert sim.state.failures == [{"round": 1, "client": "d1", "phase": "fit", "error": "RuntimeError: disk full"}]
    assert any(not torch.equal(before[n], t) for n, t in sim.state.global_arrays.items())

    sim.strategy.min_clients = 3  # now too few replies: the global model must stay as it was
    kept = {n: t.clone() for n, t in sim.state.global_arrays.items()}
    metrics = sim.run_round()
    assert metrics["round/aggregated"] == 0 and sim.state.server_round == 2
    assert all(torch.equal(kept[n], t) for n, t in sim.state.global_arrays.items())

    sim.strategy.min_clients, sim.client_timeout = 1, 1e-9  # every reply is late: discarded, logged
    metrics = sim.run_round()
    assert metrics["round/clients_ok"] == 0 and metrics["round/clients_failed"] == 3
    assert metrics["round/aggregated"] == 0 and "late reply" in sim.state.failures[-1]["error"]


def test_fedprox_with_mu_zero_equals_fedavg_and_mu_pulls_towards_the_global_model(tmp_path):
    results = {}
    for name, overrides in {"fedavg": ["federated=fedavg"], "prox0": ["federated=fedprox", "federated.mu=0"],
                            "prox": ["federated=fedprox", "federated.mu=100"]}.items():
        setup = setup_for(tmp_path, *overrides, "federated.local_epochs=2")
        start = {n: t.clone() for n, t in setup.simulation.state.global_arrays.items()}
        setup.simulation.run_round()
        results[name] = (start, setup.simulation.state.global_arrays)
    assert FedProx(mu=0.0).fit_config(1)["mu"] == 0.0
    avg, prox0, prox = (results[k][1] for k in ("fedavg", "prox0", "prox"))
    assert all(torch.equal(avg[n], prox0[n]) for n in avg)

    def drift(name):
        start, end = results[name]
        return sum(float((end[n] - start[n]).pow(2).sum()) for n in start)
    assert drift("prox") < drift("fedavg")


def test_local_sends_nothing_and_ditto_keeps_personal_models(tmp_path):
    local = setup_for(tmp_path, "federated=local").simulation
    metrics = local.run_round()
    assert metrics["comm/bytes_sent"] == 0 and "global/auc_mean" not in metrics
    assert {"personal/auc_mean", "personal/auc_mean_weighted"} <= set(metrics)
    assert all(c.personal is not None for c in local.clients.values())

    ditto = setup_for(tmp_path, "federated=ditto", "federated.lam=0.5").simulation
    metrics = ditto.run_round()
    assert metrics["comm/bytes_down"] == metrics["comm/bytes_up"] > 0
    client = ditto.clients["d0"]
    assert any(not torch.equal(client.personal[n], t) for n, t in ditto.state.global_arrays.items())
    personal = {n: t.clone() for n, t in client.personal.items()}
    ditto.run_round()  # the personal model persists and keeps training from where it was
    assert any(not torch.equal(personal[n], t) for n, t in client.personal.items())


def test_server_state_saves_and_loads_with_weights_only(tmp_path):
    sim = setup_for(tmp_path, "federated=ditto").simulation
    sim.run_round()
    path = tmp_path / "server_state.pt"
    sim.state.save(path, sim.clients)
    for client in sim.clients.values():
        client.personal = None
    loaded = ServerState.load(path, sim.clients)
    assert loaded.server_round == 1 and loaded.history == sim.state.history
    assert all(torch.equal(loaded.global_arrays[n], t) for n, t in sim.state.global_arrays.items())
    assert all(c.personal is not None for c in sim.clients.values())


def test_client_sampling_is_seeded_by_round_and_respects_min_clients():
    ids = [f"c{k}" for k in range(10)]
    strategy = FedAvg(fraction_train=0.3, min_clients=2, seed=4)
    first = strategy.sample(1, ids)
    assert len(first) == 3 and first == FedAvg(fraction_train=0.3, min_clients=2, seed=4).sample(1, ids)
    assert any(strategy.sample(r, ids) != first for r in range(2, 6))
    assert len(FedAvg(fraction_train=0.05, min_clients=2).sample(1, ids)) == 2
    assert set(strategy.configure_train(1, {}, ids)) == set(first)


# --------------------------------------------------------------------------------------- federated M3oE
def test_m3oe_personal_slices_name_domain_experts_gates_and_towers(tmp_path):
    model = setup_for(tmp_path, "model.num_shared_experts=2").model  # N = 1 has no gate parameters
    slices = model.personal_slices("domain_experts")
    n, d = model.num_shared, model.num_domains
    assert slices["experts.linears.0.weight"] == slice(n, n + d)
    assert all(slices[k] is None for k in slices if k.startswith(("gates.", "towers.")))
    assert {k.split(".")[0] for k in slices} == {"experts", "gates", "towers"}
    assert not any(k.startswith(("embedding.", "star_", "fusion_logits.")) for k in slices)
    assert model.personal_slices("something_else") is None


def test_overlay_takes_own_values_only_in_the_personal_parts():
    received = {"a": torch.zeros(4, 2), "b": torch.zeros(3), "c": torch.zeros(2)}
    own = {"a": torch.ones(4, 2), "b": torch.ones(3), "c": torch.ones(2)}
    out = overlay(received, own, {"a": slice(1, 3), "b": None})
    assert out["a"].tolist() == [[0, 0], [1, 1], [1, 1], [0, 0]]
    assert torch.equal(out["b"], own["b"]) and torch.equal(out["c"], received["c"])
    assert received["a"].sum() == 0  # the received arrays are not modified


@pytest.mark.parametrize("strategy", ["fedavg", "page"])
def test_federated_m3oe_clients_keep_their_domain_experts_and_share_the_rest(tmp_path, strategy):
    setup = setup_for(tmp_path, f"federated={strategy}", "federated.personal=domain_experts",
                      *(["federated.warmup=1", "federated.epochs_max=1"] if strategy == "page" else []))
    sim, slices = setup.simulation, setup.model.personal_slices("domain_experts")
    sim.run_round()
    starts: dict[str, dict[str, torch.Tensor]] = {}
    for cid, client in sim.clients.items():  # record the weights each client starts round 2 from
        original = client.train_local

        def record(model, *args, _cid=cid, _original=original, **kwargs):
            starts[_cid] = {k: t.detach().clone() for k, t in model.state_dict().items()}
            return _original(model, *args, **kwargs)
        client.train_local = record
    own = {cid: {k: t.clone() for k, t in c.personal.items()} for cid, c in sim.clients.items()}
    global_before = {k: t.clone() for k, t in sim.state.global_arrays.items()}
    sim.run_round()
    rows = slices["experts.linears.0.weight"]
    for cid, start in starts.items():
        assert torch.equal(start["towers.final.weight"], own[cid]["towers.final.weight"])
        assert torch.equal(start["experts.linears.0.weight"][rows], own[cid]["experts.linears.0.weight"][rows])
        shared = slice(0, rows.start)
        assert torch.equal(start["experts.linears.0.weight"][shared], global_before["experts.linears.0.weight"][shared])
        assert torch.equal(start["star_shared_weight"], global_before["star_shared_weight"])
    towers = [s["towers.final.weight"] for s in starts.values()]
    assert not torch.equal(towers[0], towers[1])  # personal: the clients' towers differ


def test_personal_domain_experts_needs_a_model_that_has_them(tmp_path):
    cfg = compose_train(["data=synthetic", "data.rows=1500", "model=mmoe", "federated.personal=domain_experts",
                         *isolated(tmp_path)[:4]], config_name="federate")
    with pytest.raises(UserInputError, match="federated.personal='domain_experts': model MMoE has no such part"):
        build_federated(cfg)
    with pytest.raises(UserInputError, match="model M3oE has no such part"):
        setup_for(tmp_path, "model.use_domain_experts=false", "federated.personal=domain_experts")


def test_algorithm_labels_name_runs_and_report_rows():
    from omegaconf import OmegaConf

    from m3oe_lightning.federate import algorithm_label
    assert algorithm_label(OmegaConf.create({"name": "page", "personal": "none"})) == "page"
    assert algorithm_label(OmegaConf.create({"name": "page", "personal": "domain_experts"})) == "page+domain_experts"
    assert algorithm_label(OmegaConf.create({"name": "fedavg", "centralized": True})) == "centralized"
    assert algorithm_label(OmegaConf.create({"name": "page", "label": "page-random"})) == "page-random"
    assert algorithm_label(OmegaConf.create({"name": "page", "label": "page-random", "sparse_embeddings": True})) \
        == "page-random+sparse"
    assert algorithm_label(OmegaConf.create({"name": "fedavg", "personal": "user_embeddings",
                                             "sparse_embeddings": True})) == "fedavg+user_embeddings+sparse"
    assert algorithm_label(OmegaConf.create({"name": "page", "sparse_embeddings": False})) == "page"


# ----------------------------------------------------------------------- row-sparse and user embeddings
@pytest.mark.parametrize("model_name", recommendation_models())
def test_every_model_names_its_embedding_tables_and_the_column_they_index(synthetic, model_name):
    from m3oe_lightning.config import build

    cfg = compose_train([f"model={model_name}"])
    model = build(cfg.model, schema=synthetic.schema)
    tables, state = model.embedding_tables(), model.state_dict()
    columns = list(tables.values())  # a model of separate sub-models (split) has one table per column each
    assert set(columns) == set(range(len(synthetic.schema.sparse)))
    assert len({columns.count(c) for c in set(columns)}) == 1
    for name, column in tables.items():
        feature = synthetic.schema.sparse[column]
        assert state[name].shape == (feature.vocab_size, feature.embed_dim)
    user = model.federated_personal_slices("user_embeddings")
    assert user == {name: None for name, column in tables.items() if column == 0}  # user_id is column 0


def test_new_federated_settings_keep_old_hashes_at_their_defaults_and_bad_values_fail(tmp_path):
    from tests.unit.test_config_hashes_federate import federate_hash

    assert federate_hash([]) == federate_hash(["federated.sparse_embeddings=false"])
    assert federate_hash([]) != federate_hash(["federated.sparse_embeddings=true"])
    assert federate_hash([]) != federate_hash(["federated.personal=user_embeddings"])
    with pytest.raises(UserInputError, match="federated.sparse_embeddings='yes': use true or false"):
        setup_for(tmp_path, "federated.sparse_embeddings=yes")
    with pytest.raises(UserInputError, match="model M3oE has no such part \\(experts"):
        setup_for(tmp_path, "federated.personal=user_embeddings+experts")


def test_domain_experts_and_user_embeddings_combine_and_only_the_user_table_is_private(tmp_path):
    setup = setup_for(tmp_path, "federated.personal=domain_experts+user_embeddings")
    client = next(iter(setup.simulation.clients.values()))
    domain = setup.model.personal_slices("domain_experts")
    assert client.personal_slices == {**domain, "embedding.tables.0.weight": None}
    assert client.private == {"embedding.tables.0.weight"}
