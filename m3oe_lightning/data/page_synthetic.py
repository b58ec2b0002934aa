"""PAGE's Synthetic setting: many clients whose features shift, one shared linear labelling rule.

PAGE (and FedDyn before it) test on a logistic generator: every client draws its features from a Gaussian
with its own mean and a fixed, decaying diagonal covariance, and labels them with the argmax of one linear
map shared by all clients. The clients differ in *where* their points lie (covariate shift), not in the rule
that labels them, so a single global model can fit everyone and personalization can only help by fitting
each client's region of feature space better. The parameters below are those PAGE's Synthetic driver uses
(docs/page.md, "Synthetic"); the random stream is this project's own (a seeded ``numpy`` Generator), so the
draws differ from the released code's while the distribution is the same.

Per client ``samples`` points: the first ``local_fraction`` of them are the client's own data (split
``train_fraction`` / rest into local train and local test: 210 / 90 of 375), the rest join the pooled global
test set (75 per client, 7,500 in all).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COVARIANCE_DECAY = 1.2  # feature j has variance (j + 1) ** -1.2: a few strong directions, many weak ones


@dataclass(frozen=True)
class SyntheticSettings:
    """The generator's parameters; the defaults are PAGE's Synthetic setting (100 clients, 30 × 30, 375 each).

    ``alpha``: spread of the per-client solutions' means (0: all clients share one rule when
    ``shared_solution`` is false too); ``beta``: spread of the clients' feature means (the feature shift);
    ``shared_solution``: one labelling rule for all clients drawn from N(0, 1) (PAGE: true).
    """

    clients: int = 100
    dimension: int = 30
    classes: int = 30
    samples: int = 375
    alpha: float = 0.0
    beta: float = 1.0
    shared_solution: bool = True
    local_fraction: float = 0.8
    train_fraction: float = 0.7

    def __post_init__(self) -> None:
        if self.clients < 1 or self.dimension < 1 or self.classes < 2 or self.samples < 2:
            raise ValueError(f"{self}: clients, dimension ≥ 1, classes, samples ≥ 2")
        if not (0.0 < self.local_fraction <= 1.0 and 0.0 < self.train_fraction < 1.0):
            raise ValueError(f"{self}: local_fraction in (0, 1], train_fraction in (0, 1)")

    @property
    def split_sizes(self) -> tuple[int, int, int]:
        """Rows per client: (local train, local test, global test)."""
        local = int(round(self.samples * self.local_fraction))
        train = int(round(local * self.train_fraction))
        return train, local - train, self.samples - local


@dataclass(frozen=True)
class ClientData:
    """One client's rows: features (float32, rows × dimension) and class labels (int64)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


@dataclass(frozen=True)
class SyntheticFederation:
    """Every client's local data, the pooled global test set, and the labelling rule that made them."""

    settings: SyntheticSettings
    clients: list[ClientData]
    global_x: np.ndarray
    global_y: np.ndarray
    feature_means: np.ndarray  # clients × dimension
    weights: np.ndarray        # the shared rule (shared_solution): dimension × classes
    bias: np.ndarray           # classes


def generate(settings: SyntheticSettings = SyntheticSettings(), seed: int = 0) -> SyntheticFederation:
    """Draw the federation: the same ``(settings, seed)`` always gives the same arrays."""
    s = settings
    rng = np.random.default_rng(seed)
    scale = np.power(np.arange(1, s.dimension + 1, dtype=np.float64), -COVARIANCE_DECAY / 2)  # feature std
    solution_means = rng.normal(0.0, s.alpha, s.clients) if s.alpha > 0 else np.zeros(s.clients)
    shifts = rng.normal(0.0, s.beta, s.clients) if s.beta > 0 else np.zeros(s.clients)
    feature_means = rng.normal(shifts[:, None], 1.0, (s.clients, s.dimension))
    weights, bias = rng.normal(0.0, 1.0, (s.dimension, s.classes)), rng.normal(0.0, 1.0, s.classes)
    n_train, n_test, _ = s.split_sizes
    local = n_train + n_test  # a client's own rows; the rest of its draw joins the pooled global test
    clients: list[ClientData] = []
    pooled_x, pooled_y = [], []
    for i in range(s.clients):
        if not s.shared_solution:  # each client its own rule, around its own mean
            weights = rng.normal(solution_means[i], 1.0, (s.dimension, s.classes))
            bias = rng.normal(solution_means[i], 1.0, s.classes)
        x = (feature_means[i] + rng.standard_normal((s.samples, s.dimension)) * scale).astype(np.float32)
        y = np.argmax(x.astype(np.float64) @ weights + bias, axis=1).astype(np.int64)  # the rows as stored
        clients.append(ClientData(train_x=x[:n_train], train_y=y[:n_train], test_x=x[n_train:local],
                                  test_y=y[n_train:local]))
        pooled_x.append(x[local:])
        pooled_y.append(y[local:])
    return SyntheticFederation(settings=s, clients=clients, global_x=np.concatenate(pooled_x),
                               global_y=np.concatenate(pooled_y), feature_means=feature_means,
                               weights=weights, bias=bias)
