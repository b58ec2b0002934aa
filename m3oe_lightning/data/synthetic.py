"""A synthetic multi-domain multi-task dataset with known structure, for tests and quick experiments.

Real data cannot tell us whether a model *can* use domain- and task-specific signal; here we decide how
much there is. Each user and item has a latent vector; the logit of task ``t`` for a row of domain ``d``
is a sum of three standardised bilinear terms, each with its own strength:

    logit[t] = shared_signal * (<u, v> + 2 (b_u + b_i))  (the same for every domain and task)
             + domain_signal * <u, a_d * v>      (a per-domain re-weighting of the latent dimensions)
             + task_signal   * <u, b_t * v>      (a per-task re-weighting)
             + domain_signal * offset_d                  (per-domain base rate)
             + shared_signal * dense effect of x0 + noise * N(0, 1)

and the label is ``logit[t] > cut[t]`` (task ``t0`` is positive for 50% of rows, later tasks are
rarer, like ML-1M's ``click`` vs ``like``). The domain is drawn per row, independently of the user
(a scenario, as in KuaiRand, rather than a user segment): if it were a function of the user, a user
embedding alone could absorb the domain term and domain information would not matter. ``x1`` is an
uninformative dense column. Everything is vectorised and seeded, and the random draws do not depend on
the *_signal arguments, so two tables that differ only in a signal strength have the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from m3oe_lightning.data.encode import TableSpec, encode_table
from m3oe_lightning.data.schema import EncodedDataset
from m3oe_lightning.data.splits import check_split_kind, split_indices
from m3oe_lightning.errors import UserInputError

LATENT_DIM = 8


@dataclass(frozen=True)
class SyntheticTable:
    """The raw generated rows plus the noiseless logits ``[N, T]`` (what an oracle model would predict)."""

    frame: pd.DataFrame
    clean_logits: np.ndarray
    domains: tuple[str, ...]
    tasks: tuple[str, ...]


def _standardise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column, so the *_signal arguments are comparable strengths."""
    std = x.std(axis=0, keepdims=True)
    return (x - x.mean(axis=0, keepdims=True)) / np.where(std > 0, std, 1.0)


def _thresholds(noisy: np.ndarray) -> np.ndarray:
    """Per-task cut-offs giving positive rates 50%, 35%, 20%, 20%, ... (a click/like-like funnel)."""
    rates = np.maximum(0.5 - 0.15 * np.arange(noisy.shape[1]), 0.2)
    return np.array([np.quantile(noisy[:, t], 1.0 - r) for t, r in enumerate(rates)])


def _check_args(num_domains: int, num_tasks: int, rows: int, num_users: int, num_items: int,
                noise: float) -> None:
    for name, value, low in (("num_domains", num_domains, 1), ("num_tasks", num_tasks, 1), ("rows", rows, 10),
                             ("num_users", num_users, 1), ("num_items", num_items, 1)):
        if value < low:
            raise UserInputError(f"data.{name}={value} must be at least {low}")
    if noise < 0:
        raise UserInputError(f"data.noise={noise} must be >= 0")


def synthetic_table(
    *,
    num_domains: int = 3,
    num_tasks: int = 2,
    rows: int = 20000,
    num_users: int = 500,
    num_items: int = 300,
    shared_signal: float = 1.0,
    domain_signal: float = 1.0,
    task_signal: float = 1.0,
    noise: float = 0.5,
    seed: int = 0,
) -> SyntheticTable:
    """Generate the raw rows (columns ``user_id, item_id, domain, x0, x1, t0..``) and clean logits."""
    _check_args(num_domains, num_tasks, rows, num_users, num_items, noise)
    rng = np.random.default_rng(seed)
    users = rng.standard_normal((num_users, LATENT_DIM))
    items = rng.standard_normal((num_items, LATENT_DIM))
    domain_weights = rng.standard_normal((num_domains, LATENT_DIM))
    domain_offsets = rng.uniform(-0.5, 0.5, size=num_domains)
    task_weights = rng.standard_normal((num_tasks, LATENT_DIM))

    u = rng.integers(0, num_users, size=rows)
    i = rng.integers(0, num_items, size=rows)
    d = rng.integers(0, num_domains, size=rows)
    x = rng.random((rows, 2))
    user_bias = rng.standard_normal(num_users)  # drawn last: the draws above are unchanged by it
    item_bias = rng.standard_normal(num_items)
    uv = users[u] * items[i]  # [N, k]: per-dimension user-item interaction

    # user propensity and item popularity, as in real logs: easy for embeddings, so models learn fast
    additive = user_bias[u] + item_bias[i]
    shared = _standardise((uv.sum(axis=1) + 2.0 * additive + 1.5 * (x[:, 0] - 0.5))[:, None])
    domain = _standardise((uv * domain_weights[d]).sum(axis=1)[:, None]) + domain_offsets[d][:, None]
    task = _standardise(uv @ task_weights.T)  # [N, T]
    clean = shared_signal * shared + domain_signal * domain + task_signal * task
    noisy = clean + noise * rng.standard_normal((rows, num_tasks))
    labels = (noisy > _thresholds(noisy)).astype(np.int8)

    tasks = tuple(f"t{k}" for k in range(num_tasks))
    frame = pd.DataFrame({"user_id": u, "item_id": i, "domain": d, "x0": x[:, 0], "x1": x[:, 1]})
    for k, name in enumerate(tasks):
        frame[name] = labels[:, k]
    return SyntheticTable(frame=frame, clean_logits=clean.astype(np.float32),
                          domains=tuple(f"d{k}" for k in range(num_domains)), tasks=tasks)


def make_synthetic(*, split: str = "random", split_seed: int = 0, **generator: Any) -> EncodedDataset:
    """Synthetic rows encoded like a real dataset: sparse ``user_id, item_id, domain``, dense ``x0, x1``,
    domains ``d0..``, tasks ``t0..``. ``generator`` holds :func:`synthetic_table`'s settings."""
    check_split_kind(split)
    try:
        table = synthetic_table(**generator)
    except TypeError as error:  # a misspelt data.<setting>
        raise UserInputError(f"unknown synthetic data setting: {error}") from None
    num_domains, rows, seed = len(table.domains), len(table.frame), generator.get("seed", 0)
    spec = TableSpec(
        name="synthetic",
        sparse=("user_id", "item_id"),
        dense=("x0", "x1"),
        tasks=table.tasks,
        domains=table.domains,
        domain_column="domain",
        domain_of_value={k: k for k in range(num_domains)},
        extras={"split": split, "split_seed": split_seed, "seed": seed},
    )
    train, val, test = split_indices(rows, split, split_seed)
    return encode_table(table.frame, train, val, test, spec)
