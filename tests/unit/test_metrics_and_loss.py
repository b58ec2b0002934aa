"""Masked loss, per-(domain, task) metrics and the per-task metrics pooled over domains."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from sklearn.metrics import log_loss, roc_auc_score

from m3oe_lightning.data.schema import EncodedSplit
from m3oe_lightning.federated.evaluation import evaluate_split
from m3oe_lightning.models.mlp import MLP
from m3oe_lightning.training.metrics import DomainTaskMetrics, grouped_bce_loss


def pairwise_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """AUC as the probability a positive outranks a negative (ties count half): the definition."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).float().sum()
    ties = (pos[:, None] == neg[None, :]).float().sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def test_loss_is_sum_over_groups_of_per_domain_means():
    logits = torch.tensor([[0.1, -0.3], [2.0, 0.5], [-1.0, 1.0], [0.3, 0.3], [0.0, 0.2]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    domain = torch.tensor([0, 0, 2, 2, 2])  # domain 1 is empty
    loss = grouped_bce_loss(logits, labels, domain, num_domains=3)
    expected = sum(
        F.binary_cross_entropy_with_logits(logits[domain == d, t], labels[domain == d, t])
        for d in (0, 2) for t in (0, 1)
    )
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, expected)


def test_loss_with_every_group_empty_but_one_has_no_nan():
    loss = grouped_bce_loss(torch.zeros(3, 2), torch.ones(3, 2), torch.tensor([1, 1, 1]), num_domains=3)
    assert math.isclose(float(loss), 2 * math.log(2), rel_tol=1e-6)


def test_metrics_match_definition_and_skip_single_class_groups():
    g = torch.Generator().manual_seed(0)
    metric = DomainTaskMetrics(("a", "b"), ("click", "like"))
    logits = torch.randn(200, 2, generator=g)
    labels = torch.randint(0, 2, (200, 2), generator=g).float()
    domain = torch.randint(0, 2, (200,), generator=g)
    labels[domain == 1, 1] = 1.0  # group (b, like) has a single class
    for chunk in range(0, 200, 64):  # several updates, as an evaluation loop does
        metric.update(logits[chunk:chunk + 64], labels[chunk:chunk + 64], domain[chunk:chunk + 64])
    out = {k: float(v) for k, v in metric.compute().items()}

    assert "auc/b/like" not in out  # not 0.0, not 0.5: absent
    assert "logloss/b/like" in out
    aucs = []
    for d, dn in enumerate(("a", "b")):
        for t, tn in enumerate(("click", "like")):
            rows = domain == d
            if (dn, tn) != ("b", "like"):
                expected = pairwise_auc(logits[rows, t], labels[rows, t])
                assert math.isclose(out[f"auc/{dn}/{tn}"], expected, abs_tol=1e-6)
                aucs.append(expected)
            expected_ll = float(F.binary_cross_entropy_with_logits(logits[rows, t], labels[rows, t]))
            assert math.isclose(out[f"logloss/{dn}/{tn}"], expected_ll, rel_tol=1e-5)
    assert math.isclose(out["auc_mean"], sum(aucs) / 3, abs_tol=1e-6)


def test_metrics_reset_between_epochs():
    metric = DomainTaskMetrics(("a",), ("click",))
    metric.update(torch.tensor([[1.0], [-1.0]]), torch.tensor([[1.0], [0.0]]), torch.tensor([0, 0]))
    assert float(metric.compute()["auc/a/click"]) == 1.0
    metric.reset()
    metric.update(torch.tensor([[-1.0], [1.0]]), torch.tensor([[1.0], [0.0]]), torch.tensor([0, 0]))
    assert float(metric.compute()["auc/a/click"]) == 0.0


def test_pooled_metrics_equal_scikit_learn_on_every_domains_rows():
    g = torch.Generator().manual_seed(1)
    metric = DomainTaskMetrics(("a", "b", "c"), ("click", "like"))
    logits = torch.randn(300, 2, generator=g)
    labels = (torch.rand(300, 2, generator=g) < torch.sigmoid(logits + 0.5)).float()  # informative, not perfect
    domain = torch.randint(0, 3, (300,), generator=g)
    for chunk in range(0, 300, 128):
        metric.update(logits[chunk:chunk + 128], labels[chunk:chunk + 128], domain[chunk:chunk + 128])
    out = {k: float(v) for k, v in metric.compute().items()}

    pooled = []
    for t, task in enumerate(("click", "like")):
        y, p = labels[:, t].numpy(), torch.sigmoid(logits[:, t]).double().numpy()
        expected = roc_auc_score(y, p)
        assert math.isclose(out[f"auc_pooled/{task}"], expected, abs_tol=1e-6)
        assert math.isclose(out[f"logloss_pooled/{task}"], log_loss(y, p), rel_tol=1e-5)
        pooled.append(expected)
    assert math.isclose(out["auc_pooled_mean"], sum(pooled) / 2, abs_tol=1e-6)
    assert math.isclose(out["logloss_pooled_mean"], (out["logloss_pooled/click"] + out["logloss_pooled/like"]) / 2,
                        rel_tol=1e-6)


def test_pooled_auc_is_not_the_mean_of_groups():
    """Each domain ranked perfectly on its own, but domain b's scores all sit below domain a's negatives:
    the per-group mean is 1, the pooled AUC (rows of both domains ranked together) is not."""
    metric = DomainTaskMetrics(("a", "b"), ("click",))
    logits = torch.tensor([[3.0], [2.0], [-2.0], [-3.0]])
    labels = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    metric.update(logits, labels, torch.tensor([0, 0, 1, 1]))
    out = {k: float(v) for k, v in metric.compute().items()}
    assert out["auc_mean"] == 1.0
    assert out["auc_pooled/click"] == 0.75 and out["auc_pooled_mean"] == 0.75  # 3 of 4 (pos, neg) pairs in order


def test_a_task_with_one_class_over_all_domains_has_no_pooled_auc():
    metric = DomainTaskMetrics(("a", "b"), ("click", "like"))
    labels = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])  # like: positive everywhere
    metric.update(torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.5, 1.0], [-0.5, 2.0]]), labels, torch.tensor([0, 0, 1, 1]))
    out = {k: float(v) for k, v in metric.compute().items()}
    assert "auc_pooled/like" not in out and "logloss_pooled/like" in out  # absent, never 0.0 or 0.5
    assert out["auc_pooled_mean"] == out["auc_pooled/click"] == 1.0


def test_federated_evaluation_reports_the_pooled_metrics(tiny_schema, batch_factory):
    """The server's global evaluation logs every key of this dict (``global/auc_pooled/{task}`` …)."""
    torch.manual_seed(0)
    model = MLP(tiny_schema)
    split = EncodedSplit(**batch_factory(tiny_schema, 200, seed=3))
    out = evaluate_split(model, split, batch_size=64)
    with torch.no_grad():
        logits = model(batch_factory(tiny_schema, 200, seed=3))
    labels = split.labels
    for t, task in enumerate(tiny_schema.tasks):
        assert math.isclose(out[f"auc_pooled/{task}"], roc_auc_score(labels[:, t], logits[:, t]), abs_tol=1e-6)
    assert "auc_pooled_mean" in out and "logloss_pooled_mean" in out
