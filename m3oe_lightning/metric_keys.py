"""Every metric key the project logs or reads, composed here and nowhere else.

Keys are ``/``-joined paths: a stage or scope (``train``, ``val``, ``test``; federated ``personal``,
``global``, ``heldout``, ``client/{id}``) and a metric name (``auc_mean``, ``logloss/{domain}/{task}``).
Models, strategies, the simulation, entry points and reports compose them with these helpers, so a
renamed key is renamed everywhere (docs/design.md, "Metric names").
"""

from __future__ import annotations

import re

STAGES: tuple[str, ...] = ("train", "val", "test")

AUC = "auc"
LOGLOSS = "logloss"
AUC_MEAN = "auc_mean"            # mean over the (domain, task) groups that have an AUC: the paper's "Overall"
LOGLOSS_MEAN = "logloss_mean"
AUC_MEAN_WEIGHTED = AUC_MEAN + "_weighted"  # federated: clients' AUCs weighted by their test rows (weighted())
# pooled over every domain's rows, one value per task (the Scenario-Wise-Rec benchmark's convention): beside
# the per-group mean, never instead of it (val/auc_mean stays the selection metric)
AUC_POOLED = "auc_pooled"            # auc_pooled/{task}
LOGLOSS_POOLED = "logloss_pooled"    # logloss_pooled/{task}
AUC_POOLED_MEAN = "auc_pooled_mean"  # mean over the tasks that have a pooled AUC
LOGLOSS_POOLED_MEAN = "logloss_pooled_mean"
LOSS = "loss"
# the classification task family (PAGE's Synthetic setting): share of rows whose argmax logit is their class,
# and the mean cross-entropy
ACCURACY = "accuracy"
CROSS_ENTROPY = "cross_entropy"

PERSONAL, GLOBAL, HELDOUT = "personal", "global", "heldout"
# the global model on the union of the training clients' validation splits: what a report selects a round on
GLOBAL_VAL = "global_val"
BEST = "_best"  # suffix: the checkpoint callback's best value of a monitored key


_UNSAFE = re.compile(r"[^\w.\- :]")  # MLflow accepts letters, digits, _ . - space : (and / between parts)


def safe(part: str) -> str:
    """One key part as MLflow accepts it: other characters (``€``, ``(``, ``/`` inside a name) become ``_``,
    and ``.``/``..`` alone (which MLflow reads as paths) too. Names that are already safe are unchanged."""
    text = _UNSAFE.sub("_", str(part))
    return "_" * len(text) if text in (".", "..") else text


def key(*parts: str) -> str:
    """``key("test", "auc_mean")`` → ``test/auc_mean``."""
    return "/".join(str(p) for p in parts)


def group(metric: str, domain: str, task: str) -> str:
    """One (domain, task) group's metric name: ``auc/{domain}/{task}`` (names made :func:`safe`)."""
    return key(metric, safe(domain), safe(task))


def pooled(metric: str, task: str) -> str:
    """One task's metric over the rows of every domain: ``auc_pooled/{task}`` (the name made :func:`safe`)."""
    return key(metric, safe(task))


def weighted(name: str) -> str:
    """A federated mean over clients weighted by their test rows: ``auc_mean`` → ``auc_mean_weighted``."""
    return f"{name}_weighted"


def client(client_id: str, name: str) -> str:
    """A client's own metric: ``client/{id}/{name}`` (the id made :func:`safe`)."""
    return key("client", safe(client_id), name)


def best(name: str) -> str:
    """The best value over epochs of a monitored metric: ``val/auc_mean`` → ``val/auc_mean_best``."""
    return f"{name}{BEST}"


VAL_AUC_MEAN = key("val", AUC_MEAN)
TEST_AUC_MEAN = key("test", AUC_MEAN)
TEST_AUC_POOLED_MEAN = key("test", AUC_POOLED_MEAN)
VAL_AUC_MEAN_BEST = best(VAL_AUC_MEAN)  # the selection value: what a search optimises, never a test metric
# federated: the global model scored on each training client's test split, AUC mean per client, then the plain
# mean over clients (like-for-like with personal/auc_mean; global/auc_mean pools every client's rows instead)
AUC_CLIENT_MEAN = "auc_client_mean"
GLOBAL_AUC_CLIENT_MEAN = key(GLOBAL, AUC_CLIENT_MEAN)
