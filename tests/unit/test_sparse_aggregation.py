"""Row-sparse embedding aggregation, user embeddings kept on the client, and ``global/auc_client_mean``."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.data.schema import EncodedSplit, FeatureSchema
from m3oe_lightning.federated.aggregation import aggregate, expand
from m3oe_lightning.federated.factory import ServerEvaluator
from m3oe_lightning.federated.flower.records import content_to_fit_res, fit_res_to_content
from m3oe_lightning.federated.messages import FitRes, nbytes, weighted_average
from m3oe_lightning.federated.strategies import Ditto, FedAvg, FedProx
from m3oe_lightning.models.base import MDMTModel
from tests.unit.test_federated import setup_for
from tests.unit.test_page import CLIENTS, make_page

TABLE = "embedding.tables.0.weight"


def previous_model() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {TABLE: torch.randn(6, 3, generator=generator), "w": torch.randn(2, generator=generator)}


def sparse_reply(rows: list[int], values: torch.Tensor, w: torch.Tensor, n: int) -> FitRes:
    return FitRes(arrays={TABLE: values, "w": w}, num_examples=n,
                  embedding_rows={TABLE: torch.tensor(rows, dtype=torch.int64)})


# ------------------------------------------------------------------------------------------ aggregation
@pytest.mark.parametrize("strategy", [FedAvg(), FedProx(mu=0.1), Ditto(lam=0.1)], ids=["fedavg", "fedprox", "ditto"])
def test_rows_average_over_the_clients_that_updated_them_weighted_by_examples(strategy):
    previous = previous_model()
    a_rows, b_rows = torch.randn(2, 3), torch.randn(2, 3)
    replies = {"a": sparse_reply([0, 2], a_rows, torch.zeros(2), n=1),
               "b": sparse_reply([2, 4], b_rows, torch.ones(2), n=3)}
    strategy.configure_train(1, previous, ["a", "b"])
    new, _ = strategy.aggregate_train(1, replies)
    assert torch.equal(new[TABLE][0], a_rows[0]) and torch.equal(new[TABLE][4], b_rows[1])  # one client: as sent
    assert torch.allclose(new[TABLE][2], 0.25 * a_rows[1] + 0.75 * b_rows[0])               # both: by examples
    for untouched in (1, 3, 5):
        assert torch.equal(new[TABLE][untouched], previous[TABLE][untouched])
    assert torch.allclose(new["w"], torch.full((2,), 0.75))  # dense entries: the classic weighted mean


def test_whole_replies_take_the_classic_path_bit_for_bit():
    previous = previous_model()
    replies = {cid: FitRes(arrays={k: v + torch.randn_like(v) for k, v in previous.items()}, num_examples=n)
               for cid, n in (("b", 7), ("a", 2), ("c", 5))}
    weights = {cid: float(r.num_examples) for cid, r in replies.items()}
    classic = weighted_average((replies[cid].arrays, weights[cid]) for cid in sorted(replies))
    for given in (previous, None):
        out = aggregate(replies, weights, given)
        assert all(torch.equal(out[k], classic[k]) for k in classic)


def test_an_entry_no_client_sends_keeps_the_previous_global_value():
    previous = previous_model()
    replies = {"a": FitRes(arrays={"w": torch.ones(2)}, num_examples=4)}  # the table stays on the client
    out = aggregate(replies, {"a": 4.0}, previous)
    assert torch.equal(out[TABLE], previous[TABLE]) and torch.equal(out["w"], torch.ones(2))
    with pytest.raises(ValueError, match="previous global model"):
        aggregate({"a": sparse_reply([1], torch.ones(1, 3), torch.ones(2), n=1)}, {"a": 1.0}, None)


def test_expand_rebuilds_a_clients_model_from_the_global_one_and_its_rows():
    previous = previous_model()
    reply = sparse_reply([1, 5], torch.ones(2, 3), torch.zeros(2), n=1)
    full = expand(previous, reply)
    assert torch.equal(full[TABLE][[1, 5]], torch.ones(2, 3)) and torch.equal(full[TABLE][0], previous[TABLE][0])
    assert torch.equal(full["w"], torch.zeros(2)) and full[TABLE].shape == previous[TABLE].shape


def test_page_rows_are_weighted_by_its_server_agents_weights_renormalised_over_the_updaters():
    page = make_page()
    arrays = {"w": torch.zeros(4), TABLE: torch.randn(6, 3)}
    for server_round in (1, 2, 3):  # warm-up round, then the actor's weights
        instructions = page.configure_train(server_round, arrays, CLIENTS)
        sent = {cid: torch.randn(2, 3) for cid in sorted(instructions)}
        rows = {cid: [k % 6, 5] for k, cid in enumerate(sorted(instructions))}  # row 5: every client
        replies = {cid: FitRes(arrays={"w": ins.arrays["w"] + k, TABLE: sent[cid]}, num_examples=10,
                               metrics={"score/received_auc": 0.6, "score/trained_logloss": 0.5},
                               embedding_rows={TABLE: torch.tensor(rows[cid])})
                   for k, (cid, ins) in enumerate(sorted(instructions.items()))}
        new, metrics = page.aggregate_train(server_round, replies)
        weights = {cid: metrics[f"page/weight/{cid}"] for cid in replies}
        assert len(set(weights.values())) > 1  # not uniform: the test tells the agent's weights from others
        mean_row5 = sum(weights[cid] * sent[cid][1] for cid in replies) / sum(weights.values())
        assert torch.allclose(new[TABLE][5], mean_row5.to(torch.float32), atol=1e-6)
        first = sorted(replies)[0]  # row 0: only the first client
        assert torch.equal(new[TABLE][0], sent[first][0])
        updated = {r for cid in replies for r in rows[cid]}
        for row in set(range(6)) - updated:
            assert torch.equal(new[TABLE][row], arrays[TABLE][row])
        arrays = new


def test_flower_records_carry_the_updated_rows_exactly():
    reply = sparse_reply([0, 3], torch.randn(2, 3), torch.randn(2), n=9)
    back = content_to_fit_res(fit_res_to_content(reply))
    assert torch.equal(back.embedding_rows[TABLE], reply.embedding_rows[TABLE])
    assert back.embedding_rows[TABLE].dtype == torch.int64
    assert all(torch.equal(back.arrays[k], reply.arrays[k]) for k in reply.arrays)
    whole = content_to_fit_res(fit_res_to_content(FitRes(arrays={"w": torch.ones(1)}, num_examples=1)))
    assert whole.embedding_rows is None


# ------------------------------------------------------------------------------------------ simulation
def capture_replies(sim):
    """Wrap the transport so each round's fit replies are kept (what left the clients)."""
    captured: list[dict[str, FitRes]] = []
    deliver = sim.transport.fit

    def fit(*args, **kwargs):
        replies = deliver(*args, **kwargs)
        captured.append(replies)
        return replies
    sim.transport.fit = fit
    return captured


def test_the_switch_off_sends_whole_models_and_averages_them_as_before(tmp_path):
    sim = setup_for(tmp_path).simulation
    captured = capture_replies(sim)
    sim.run_round()
    replies = captured[0]
    assert all(r.embedding_rows is None and r.arrays.keys() == sim.state.global_arrays.keys()
               for r in replies.values())
    classic = weighted_average((replies[cid].arrays, float(replies[cid].num_examples)) for cid in sorted(replies))
    assert all(torch.equal(sim.state.global_arrays[k], classic[k]) for k in classic)


@pytest.mark.parametrize("strategy", ["fedavg", "page"])
def test_sparse_clients_send_their_training_ids_rows_and_the_server_keeps_the_rest(tmp_path, strategy):
    setup = setup_for(tmp_path, f"federated={strategy}", "federated.sparse_embeddings=true",
                      "federated.partition=dirichlet", "federated.num_clients=3",  # each user on one client
                      *(["federated.warmup=1", "federated.epochs_max=1"] if strategy == "page" else []))
    sim, tables = setup.simulation, setup.model.embedding_tables()
    assert set(tables) == {f"embedding.tables.{i}.weight" for i in range(len(setup.model.schema.sparse))}
    captured = capture_replies(sim)
    before = {k: v.clone() for k, v in sim.state.global_arrays.items()}
    metrics = sim.run_round()
    replies, after = captured[0], sim.state.global_arrays
    for cid, reply in replies.items():
        train = sim.clients[cid].data.train.sparse
        for name, column in tables.items():
            ids = reply.embedding_rows[name]
            assert torch.equal(ids, torch.unique(train[:, column]))
            assert reply.arrays[name].shape == (len(ids), before[name].shape[1])
    assert metrics["comm/bytes_up"] == sum(nbytes(r.arrays) + nbytes(r.embedding_rows) for r in replies.values())
    whole = sum(nbytes(before) for _ in replies)  # the same replies with the switch off
    cut = sum((before[name].shape[0] - len(r.embedding_rows[name])) * before[name][0].numel() * 4
              - 8 * len(r.embedding_rows[name]) for r in replies.values() for name in tables)
    assert metrics["comm/bytes_up"] == whole - cut and metrics["comm/bytes_down"] == whole
    user = "embedding.tables.0.weight"
    owners: dict[int, list[str]] = {}
    for cid, reply in replies.items():
        for row in reply.embedding_rows[user].tolist():
            owners.setdefault(row, []).append(cid)
    alone = [(row, cids[0]) for row, cids in owners.items() if len(cids) == 1]
    untouched = sorted(set(range(before[user].shape[0])) - set(owners))
    assert alone and untouched  # the assertions below are about some rows
    for row, cid in alone:
        sent = replies[cid].arrays[user][replies[cid].embedding_rows[user].tolist().index(row)]
        assert torch.equal(after[user][row], sent)
    assert torch.equal(after[user][untouched], before[user][untouched])


def test_user_embeddings_never_leave_a_client(tmp_path):
    setup = setup_for(tmp_path, "federated.personal=user_embeddings", "federated.sparse_embeddings=true")
    sim, user = setup.simulation, "embedding.tables.0.weight"
    assert setup.model.schema.sparse[0].name == "user_id"
    initial = sim.state.global_arrays[user].clone()
    captured = capture_replies(sim)
    sim.run_round()
    starts: dict[str, torch.Tensor] = {}
    for cid, client in sim.clients.items():  # the table each client starts round 2 from
        original = client.train_local

        def record(model, *args, _cid=cid, _original=original, **kwargs):
            starts[_cid] = model.state_dict()[user].detach().clone()
            return _original(model, *args, **kwargs)
        client.train_local = record
    own = {cid: c.personal[user].clone() for cid, c in sim.clients.items()}
    sim.run_round()
    for replies in captured:
        for reply in replies.values():
            assert user not in reply.arrays and user not in (reply.embedding_rows or {})
            assert "embedding.tables.1.weight" in reply.arrays  # the item table is still shared
    assert torch.equal(sim.state.global_arrays[user], initial)  # the server never learns a user row
    for cid, start in starts.items():
        assert torch.equal(start, own[cid]) and not torch.equal(start, initial)


# --------------------------------------------------------------------------------------------- metrics
class ScoreIsTheFirstDense(MDMTModel):
    """A hand-made model: the logit of every row is its first dense value (times a weight of 1)."""

    def __init__(self, schema: FeatureSchema) -> None:
        super().__init__(schema)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, batch):
        return batch["dense"][:, :1] * self.scale


def split_of(scores: list[float], labels: list[int]) -> EncodedSplit:
    n = len(scores)
    return EncodedSplit(sparse=torch.zeros(n, 0, dtype=torch.int64), dense=torch.tensor(scores).view(n, 1),
                        domain=torch.zeros(n, dtype=torch.int64),
                        labels=torch.tensor(labels, dtype=torch.float32).view(n, 1))


def test_global_auc_client_mean_is_the_plain_mean_of_per_client_aucs():
    from m3oe_lightning.data.schema import DenseFeature

    schema = FeatureSchema(sparse=(), dense=(DenseFeature("x"),), domains=("d",), tasks=("t",))
    model = ScoreIsTheFirstDense(schema)
    a = ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    b = ([2.0, 3.0, 1.0, 4.0, 0.5, 2.5], [1, 0, 0, 1, 0, 1])
    pooled = split_of(a[0] + b[0], a[1] + b[1])
    evaluator = ServerEvaluator(model, pooled, None, client_test_rows=[4, 6])
    metrics = evaluator(1, {k: v.clone() for k, v in model.state_dict().items()})
    expected = (roc_auc_score(a[1], a[0]) + roc_auc_score(b[1], b[0])) / 2
    assert metrics[keys.GLOBAL_AUC_CLIENT_MEAN] == pytest.approx(expected, abs=1e-6)
    assert metrics[keys.key(keys.GLOBAL, keys.AUC_MEAN)] == pytest.approx(roc_auc_score(a[1] + b[1], a[0] + b[0]),
                                                                          abs=1e-6)
    assert abs(metrics[keys.GLOBAL_AUC_CLIENT_MEAN] - metrics[keys.key(keys.GLOBAL, keys.AUC_MEAN)]) > 0.05
    with_one_class = split_of(a[0] + [1.0], a[1] + [1])  # a client whose test rows are all positive has no AUC
    one_class = ServerEvaluator(model, with_one_class, None, client_test_rows=[4, 1])
    assert one_class(1, model.state_dict())[keys.GLOBAL_AUC_CLIENT_MEAN] == pytest.approx(roc_auc_score(a[1], a[0]))
    with pytest.raises(ValueError, match="global test set has 10"):
        ServerEvaluator(model, pooled, None, client_test_rows=[4, 5])


def test_the_validation_union_is_scored_apart_from_every_test_set():
    """``global_val/auc_mean`` is the global model on the training clients' validation rows only: the one
    signal a report may choose a round by, so no test row may reach it."""
    from m3oe_lightning.data.schema import DenseFeature

    schema = FeatureSchema(sparse=(), dense=(DenseFeature("x"),), domains=("d",), tasks=("t",))
    model = ScoreIsTheFirstDense(schema)
    test = split_of([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    val = split_of([0.9, 0.2, 0.7, 0.6, 0.1], [1, 0, 0, 1, 0])
    metrics = ServerEvaluator(model, test, None, global_val=val)(1, model.state_dict())
    val_auc = metrics[keys.key(keys.GLOBAL_VAL, keys.AUC_MEAN)]
    assert val_auc == pytest.approx(roc_auc_score([1, 0, 0, 1, 0], [0.9, 0.2, 0.7, 0.6, 0.1]), abs=1e-6)
    assert val_auc != pytest.approx(metrics[keys.key(keys.GLOBAL, keys.AUC_MEAN)])
    assert not any(k.startswith(keys.GLOBAL_VAL + "/auc/") for k in metrics)  # summaries only, as held-out
    empty = split_of([], [])
    without = ServerEvaluator(model, test, None, global_val=empty)(1, model.state_dict())
    assert not any(k.startswith(keys.GLOBAL_VAL) for k in without)
