"""The classification task family: PAGE's Synthetic setting federated by the project's own loop.

The linear classifier, its metrics and training system, the data's own clients (``federated.partition=natural``),
and whole runs through ``build_federated``'s ``Simulation`` (FedAvg and PAGE) and the ``m3oe-federate`` entry
point. The Flower app's run of the same family is in tests/integration/test_flower_app.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from sklearn.metrics import accuracy_score, log_loss

from m3oe_lightning.data.page_synthetic import SyntheticSettings, generate
from m3oe_lightning.data.page_synthetic_module import PageSyntheticDataModule
from m3oe_lightning.data.schema import NUM_CLASSES, DenseFeature, EncodedSplit, FeatureSchema, SparseFeature
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.federated.evaluation import evaluate_classes, part_classes
from m3oe_lightning.federated.factory import build_federated
from m3oe_lightning.federated.families import CLASSIFICATION, RECOMMENDATION, family_of
from m3oe_lightning.federated.partition import natural
from m3oe_lightning.models.linear import LinearClassifier
from m3oe_lightning.training.classifier import ClassifierModule
from tests.helpers import REPO_ROOT, compose_train, isolated, run_module

# 6 clients of 100 rows (56 train, 14 val... : 0.8 local, 0.7 of it train), 1 local epoch: seconds per round
SMALL = ["experiment=federated/page_synthetic", "data.clients=6", "data.samples=100", "federated.rounds=3",
         "federated.local_epochs=1", "data.batch_size=10", "threads=1", "seed=3"]


def schema(classes: int = 3, dims: int = 4, sparse: tuple = ()) -> FeatureSchema:
    return FeatureSchema(sparse=sparse, dense=tuple(DenseFeature(f"x{j}") for j in range(dims)), domains=("all",),
                         tasks=("class",), extras={NUM_CLASSES: classes})


def split_of(x: torch.Tensor, y: torch.Tensor) -> EncodedSplit:
    n = len(y)
    return EncodedSplit(sparse=torch.zeros((n, 0), dtype=torch.int64), dense=x,
                        domain=torch.zeros(n, dtype=torch.int64), labels=y.float().reshape(n, 1))


def test_the_linear_classifier_starts_at_zero_and_refuses_data_it_cannot_classify():
    model = LinearClassifier(schema())
    assert family_of(model) is CLASSIFICATION and model.num_classes == 3
    assert not model.linear.weight.any() and not model.linear.bias.any()
    assert model.embedding_tables() == {}  # nothing for row-sparse aggregation to average
    no_classes = FeatureSchema(sparse=(), dense=(DenseFeature("x"),), domains=("all",), tasks=("click",))
    with pytest.raises(UserInputError, match="declares no num_classes"):
        LinearClassifier(no_classes)
    with pytest.raises(UserInputError, match="dense features only"):
        LinearClassifier(schema(sparse=(SparseFeature("user_id", 10),)))


def test_classification_metrics_equal_scikit_learns_on_a_hand_made_split_and_on_each_part():
    torch.manual_seed(0)
    x, y = torch.randn(12, 4), torch.tensor([0, 1, 2, 1, 0, 2, 2, 1, 0, 0, 1, 2])
    model = LinearClassifier(schema(), zero_init=False)
    logits: list[torch.Tensor] = []
    metrics = evaluate_classes(model, split_of(x, y), batch_size=5, keep_logits=logits)  # 3 batches
    with torch.no_grad():
        probs = F.softmax(model(split_of(x, y).rows(slice(None))), dim=1).numpy()
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y, probs.argmax(1)))
    assert metrics["cross_entropy"] == pytest.approx(log_loss(y, probs, labels=[0, 1, 2]), rel=1e-5)
    assert metrics["loss"] == metrics["cross_entropy"]
    parts = part_classes(model, split_of(x, y), torch.cat(logits), [5, 0, 7])
    assert parts[1] == {}
    assert parts[2]["accuracy"] == pytest.approx(accuracy_score(y[5:], probs[5:].argmax(1)))
    assert evaluate_classes(model, split_of(x[:0], y[:0])) == {}


def test_the_classifier_system_clips_the_gradient_norm_before_its_sgd_step():
    import lightning as L

    from m3oe_lightning.data.datamodule import MDMTDataModule
    from m3oe_lightning.data.schema import EncodedDataset

    x, y = torch.full((4, 4), 1e3), torch.tensor([0, 1, 2, 0])  # huge inputs: an unclipped step is huge
    data = EncodedDataset(schema(), split_of(x, y), split_of(x, y), split_of(x, y))
    for clip, bound in ((1.0, 0.1 * 1.0), (None, None)):
        model = LinearClassifier(schema())
        system = ClassifierModule(model, lr=0.1, weight_decay=0.0, optimizer="sgd", clip_grad_norm=clip)
        trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
        trainer.fit(system, datamodule=MDMTDataModule.from_dataset(data, batch_size=4))  # one step
        moved = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm()  # from zero
        if bound is None:
            assert moved > 10  # the control: without the clip the step is the raw gradient's
        else:
            assert moved == pytest.approx(bound, rel=1e-4)  # lr × clip: the clipped step's whole length
    with pytest.raises(UserInputError, match="optimizer.name='lbfgs'"):
        ClassifierModule(LinearClassifier(schema()), optimizer="lbfgs")


def test_the_datas_own_clients_become_the_federation_with_the_pooled_global_test_set_apart():
    module = PageSyntheticDataModule(clients=5, samples=100, val_fraction=0.25, generator_seed=4)
    drawn = generate(SyntheticSettings(clients=5, samples=100), seed=4)
    federation = natural(module.natural_clients(), heldout_clients=2)
    assert [c.client_id for c in federation.clients] == ["client0", "client1", "client2"]
    assert [c.client_id for c in federation.heldout] == ["client3", "client4"]
    first = federation.clients[0].data
    n_train = len(drawn.clients[0].train_y)  # 56 of 100: 0.8 local × 0.7 train
    assert (len(first.train), len(first.val), len(first.test)) == (n_train - 14, 14, 24)
    np.testing.assert_array_equal(first.train.dense.numpy(), drawn.clients[0].train_x[:n_train - 14])
    np.testing.assert_array_equal(first.val.labels.reshape(-1).long().numpy(), drawn.clients[0].train_y[n_train - 14:])
    # the global test set: the training clients' 20 pooled rows each (not their local tests), in client order
    assert federation.global_test_rows() == [20, 20, 20]
    np.testing.assert_array_equal(federation.global_test.dense.numpy(), drawn.global_x[:60])
    assert len(federation.heldout_test) == 2 * 24
    with pytest.raises(UserInputError, match="federated.heldout_clients=5: the data has 5 clients"):
        natural(module.natural_clients(), heldout_clients=5)


def test_natural_partition_is_refused_for_data_without_clients_of_its_own(tmp_path):
    cfg = compose_train(["data=synthetic", "data.rows=2000", "federated.partition=natural", *isolated(tmp_path)[:4]],
                        config_name="federate")
    with pytest.raises(UserInputError, match="data 'synthetic' has no clients of its own"):
        build_federated(cfg)


@pytest.mark.parametrize("strategy", ["fedavg", "page"])
def test_a_classifier_federates_through_the_same_simulation_scored_by_accuracy(tmp_path, strategy):
    extra = ["federated.warmup=1", "federated.epochs_max=2"] if strategy == "page" else []
    cfg = compose_train([*SMALL, f"federated={strategy}", *extra, *isolated(tmp_path)[:4]], config_name="federate")
    setup = build_federated(cfg)
    assert setup.strategy.family is CLASSIFICATION and RECOMMENDATION is not CLASSIFICATION
    state = setup.simulation.run(3)
    first, last = state.history[0], state.history[-1]
    assert not [k for k in last if "auc" in k or "logloss" in k]  # no recommendation metric is made up
    for key in ("global/accuracy", "global/cross_entropy", "personal/accuracy", "personal/accuracy_weighted",
                "personal/cross_entropy", "client/client0/accuracy", "train/loss"):
        assert np.isfinite(last[key]), key
    # 20 pooled rows per client: the mean of per-client accuracies is the pooled accuracy
    assert last["global/accuracy_client_mean"] == pytest.approx(last["global/accuracy"])
    assert last["global/accuracy"] > 3 / 30 and last["global/cross_entropy"] < first["global/cross_entropy"]
    if strategy == "page":  # the agents read the family's keys: states, rewards and the server's score
        assert np.isfinite(last["page/server/val_accuracy"]) and np.isfinite(last["page/client/client0/reward"])
        assert last["page/warmup"] == 0.0


@pytest.mark.slow
def test_the_federate_entry_point_runs_the_synthetic_setting_and_logs_accuracy(tmp_path):
    done = run_module("m3oe_lightning.federate", [*SMALL, "federated.rounds=2", *isolated(tmp_path)[:4]], cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "round 2/2: personal 0." in done.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("m3oe-federated").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["data.name"] == "page_synthetic"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "global/accuracy")] == [1, 2]


@pytest.mark.parametrize(("overrides", "message"), [
    (["model=m3oe"], "data=page_synthetic holds class labels (30 classes), but model M3oE is a recommender"),
    (["optimizer.name=lbfgs"], "optimizer.name='lbfgs': use one of sgd, adam"),
    (["optimizer.clip_grad_norm=-1"], "optimizer.clip_grad_norm"),
    (["federated.heldout_clients=6"], "federated.heldout_clients=6: the data has 6 clients"),
])
def test_a_setting_that_does_not_fit_the_classification_family_is_one_line_before_any_round(tmp_path, overrides,
                                                                                            message):
    cfg = compose_train([*SMALL, *overrides, *isolated(tmp_path)[:4]], config_name="federate")
    with pytest.raises(UserInputError, match=re.escape(message)):
        build_federated(cfg)


def test_m3oe_train_refuses_a_classifier_in_one_line(tmp_path):
    done = run_module("m3oe_lightning.train", ["data=page_synthetic", "data.clients=3", "model=linear",
                                               *isolated(tmp_path)], cwd=REPO_ROOT)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.strip()]
    assert "LinearClassifier is a classification model; m3oe-train fits recommenders" in line


def test_each_family_names_the_keys_a_client_reports_to_page():
    assert RECOMMENDATION.reply_key("received", "score") == "score/received_auc"  # the keys runs have always had
    assert RECOMMENDATION.reply_key("trained", "loss") == "score/trained_logloss"
    assert CLASSIFICATION.reply_key("received", "loss") == "score/received_cross_entropy"
    assert CLASSIFICATION.client_mean_key == "global/accuracy_client_mean"
    with pytest.raises(ValueError, match="model received|trained"):
        CLASSIFICATION.reply_key("sent", "score")
