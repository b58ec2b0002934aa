"""Cohort local fits (``federated.cohort=true``): many clients' fits as one vectorised SGD run.

The reference is the one-client-at-a-time path (each fit a ``ClassifierModule`` in a fresh Lightning
``Trainer``): the cohort must give the same trained weights and losses for every kind of fit a round asks for
(plain, FedProx's proximal term, Ditto's personal fit, PAGE's per-client lr and epochs), on clients of uneven
sizes with partial last batches, and whole runs must match round by round.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from m3oe_lightning.data.schema import NUM_CLASSES, DenseFeature, EncodedDataset, EncodedSplit, FeatureSchema
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.federated.client import LocalFit
from m3oe_lightning.federated.cohort import CohortTransport
from m3oe_lightning.federated.factory import build_federated, client_builder
from m3oe_lightning.federated.families import CLASSIFICATION
from m3oe_lightning.federated.messages import get_arrays
from m3oe_lightning.models.linear import LinearClassifier
from m3oe_lightning.seeds import derive_seed
from tests.helpers import compose_train, isolated
from tests.unit.test_classification import SMALL

CLASSES, DIMS = 5, 4


def schema() -> FeatureSchema:
    return FeatureSchema(sparse=(), dense=tuple(DenseFeature(f"x{j}") for j in range(DIMS)), domains=("all",),
                         tasks=("class",), extras={NUM_CLASSES: CLASSES})


def split(rows: int, generator: torch.Generator) -> EncodedSplit:
    x = torch.randn(rows, DIMS, generator=generator) * 3
    y = torch.randint(0, CLASSES, (rows,), generator=generator)
    return EncodedSplit(sparse=torch.zeros((rows, 0), dtype=torch.int64), dense=x,
                        domain=torch.zeros(rows, dtype=torch.int64), labels=y.float().reshape(rows, 1))


def clients_and_template(tmp_path, sizes, extra=()):
    cfg = compose_train([*SMALL, *extra, *isolated(tmp_path)[:4]], config_name="federate")
    torch.manual_seed(0)
    template = LinearClassifier(schema(), zero_init=False)
    make = client_builder(cfg, template, batch_size=5, eval_batch_size=64)
    generator = torch.Generator().manual_seed(1)
    clients = [make(f"c{i}", EncodedDataset(schema(), split(n, generator), split(4, generator), split(4, generator)))
               for i, n in enumerate(sizes)]
    return cfg, template, clients


def job(client, start, *, epochs, lr, stream=0, reference=None, coefficient=0.0, server_round=1) -> LocalFit:
    return LocalFit(start=start, epochs=epochs, lr=lr, server_round=server_round, stream=stream,
                    seed=derive_seed(client.seed, server_round, stream), split=client.data.train,
                    reference=reference, coefficient=coefficient)


def test_cohort_fits_equal_one_lightning_fit_per_client_for_every_kind_of_local_fit(tmp_path):
    # uneven clients (13, 7, 22, 5 rows at batch 5: partial last batches, one of a single batch), each job its
    # own lr and epochs (PAGE), a proximal pull (FedProx μ, Ditto λ) and a personal fit from another start
    cfg, template, clients = clients_and_template(tmp_path, [13, 7, 22, 5], extra=["optimizer.clip_grad_norm=1.0"])
    start = get_arrays(template)
    other = {name: value + 0.3 for name, value in start.items()}
    jobs = [job(clients[0], start, epochs=3, lr=0.1),
            job(clients[1], start, epochs=1, lr=0.05, reference=start, coefficient=0.5),
            job(clients[2], start, epochs=2, lr=0.02),
            job(clients[2], other, epochs=4, lr=0.08, stream=1, reference=start, coefficient=2.0),
            job(clients[3], start, epochs=5, lr=0.001)]
    owners = [clients[0], clients[1], clients[2], clients[2], clients[3]]
    reference = [owner.run_local(fit) for owner, fit in zip(owners, jobs)]
    cohort = CLASSIFICATION.cohort(cfg, template, 5).train(jobs)
    assert len(cohort) == len(jobs)
    for ours, theirs in zip(cohort, reference):
        for name in theirs.arrays:
            torch.testing.assert_close(ours.arrays[name], theirs.arrays[name], rtol=1e-4, atol=1e-5)
        assert ours.loss == pytest.approx(theirs.loss, rel=1e-4)
    moved = [float((r.arrays["linear.weight"] - start["linear.weight"]).abs().max()) for r in cohort]
    assert min(moved) > 0  # every job trained (the comparison is not of untouched starts)
    # the clip binds: without it the same jobs end elsewhere
    unclipped = CLASSIFICATION.cohort(compose_train([*SMALL, "optimizer.clip_grad_norm=null", *isolated(tmp_path)[:4]],
                                                    config_name="federate"), template, 5).train(jobs[:1])
    assert not torch.allclose(unclipped[0].arrays["linear.weight"], cohort[0].arrays["linear.weight"], atol=1e-4)


@pytest.mark.parametrize(("strategy", "extra"), [
    ("fedavg", []),
    ("fedprox", ["federated.mu=0.5"]),
    ("ditto", ["federated.lam=0.5"]),
    ("page", ["federated.warmup=1", "federated.epochs_max=3"]),
])
def test_a_cohort_run_matches_the_one_client_at_a_time_run_round_by_round(tmp_path, strategy, extra):
    histories = []
    for cohort in (False, True):
        cfg = compose_train([*SMALL, f"federated={strategy}", *extra, f"federated.cohort={str(cohort).lower()}",
                             *isolated(tmp_path / str(cohort))[:4]], config_name="federate")
        setup = build_federated(cfg)
        assert isinstance(setup.simulation.transport, CohortTransport) is cohort
        histories.append(setup.simulation.run(3).history)
    one_by_one, together = histories
    for round_a, round_b in zip(one_by_one, together):
        for key in ("global/accuracy", "global/cross_entropy", "personal/accuracy", "train/loss"):
            assert round_b[key] == pytest.approx(round_a[key], rel=1e-3, abs=1e-4), key
    assert np.isfinite(together[-1]["global/cross_entropy"])


@pytest.mark.parametrize(("overrides", "message"), [
    ([*SMALL, "optimizer.name=adam"], "federated.cohort=true trains with SGD only (optimizer.name='adam')"),
    ([*SMALL, "federated.client_timeout=5"], "federated.client_timeout cannot discard a late one"),
    (["data=synthetic", "data.rows=2000", "model=mlp"],
     "federated.cohort=true: model MLP (recommendation family) has no cohort fit"),
])
def test_a_cohort_that_cannot_reproduce_the_fits_is_refused_in_one_line(tmp_path, overrides, message):
    cfg = compose_train([*overrides, "federated.cohort=true", *isolated(tmp_path)[:4]], config_name="federate")
    with pytest.raises(UserInputError, match=re.escape(message)):
        build_federated(cfg)
