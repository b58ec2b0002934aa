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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from m3oe_lightning.data.encode import TableSpec, encode_table
from m3oe_lightning.data.schema import EncodedDataset
from m3oe_lightning.data.splits import TRAINING_SPLITS, check_split_kind, split_indices
from m3oe_lightning.errors import UserInputError, check_int, check_number

LATENT_DIM = 8
REGIONS = 10  # the region of a row is ``user_id mod REGIONS`` (federated.partition=region)


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
        check_int(f"data.{name}", value, minimum=low)
    check_number("data.noise", noise, low=0)


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
    domains ``d0..``, tasks ``t0..``, regions ``user_id mod 10``. ``generator`` holds
    :func:`synthetic_table`'s settings."""
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
        region_column="region",
    )
    train, val, test = split_indices(rows, split, split_seed, nonempty=TRAINING_SPLITS, advice="raise data.rows")
    frame = table.frame.assign(region=table.frame["user_id"] % REGIONS)  # no geography: regions of users
    return encode_table(frame, train, val, test, spec)


# ------------------------------------------------------------------------------ streaming generator
STREAM_BLOCK = 1 << 16  # rows per generation block: the table depends on it, never on data.chunk_rows
THRESHOLD_SAMPLE = 1 << 20  # rows whose noisy logits fix the label cut-offs (the first ones; rows are iid)
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclass(frozen=True)
class StreamBlock:
    """One generation block: raw columns plus the un-standardised logit terms ``[n, 2 + T]``."""

    user: np.ndarray
    item: np.ndarray
    domain: np.ndarray
    x: np.ndarray
    raw: np.ndarray  # columns: shared, domain, task 0..T-1 (before standardisation)
    noise: np.ndarray  # standard normal draws [n, T]


def _combine(count: int, mean: np.ndarray, m2: np.ndarray, block: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan's parallel update of (count, mean, sum of squared deviations): exact enough in float64 and
    stable, unlike sum/sum-of-squares, so 50M rows standardise like one ``np.std`` would."""
    n_b = block.shape[0]
    if n_b == 0:
        return count, mean, m2
    mean_b = block.mean(axis=0)
    m2_b = ((block - mean_b) ** 2).sum(axis=0)
    total = count + n_b
    delta = mean_b - mean
    return total, mean + delta * (n_b / total), m2 + m2_b + delta**2 * (count * n_b / total)


class SyntheticStream:
    """The synthetic generator of :func:`synthetic_table`, drawn block by block so no step holds the table.

    Why a second generator: the classic one draws every column for all rows from one RNG stream and
    standardises/thresholds over all rows, which needs the whole table in RAM. Here the small latent tables
    come from ``default_rng(seed)`` and each block of :data:`STREAM_BLOCK` rows from its own
    ``default_rng([seed, block])``, so any block can be regenerated on its own, in any order, and the rows do
    not depend on how many are encoded at a time. Standardisation uses exact streaming moments (a first
    pass); the per-task cut-offs are the quantiles of the first :data:`THRESHOLD_SAMPLE` rows (iid, so the
    positive rates match the classic 50 % / 35 % funnel to about ±0.1 %). The rows are *different draws*
    from the classic table of the same seed (same distribution); ``data.storage=memory`` keeps the classic one.

    The split (``random``: an exactly 80/10/10, uniformly random subset drawn blockwise with sequential
    multivariate hypergeometric counts, then a per-block shuffle; ``ordered``: consecutive rows) is also
    blockwise, so no permutation of all rows is ever materialised (8 bytes a row at 50M rows = 400 MB).
    """

    def __init__(self, *, num_domains: int = 3, num_tasks: int = 2, rows: int = 20000, num_users: int = 500,
                 num_items: int = 300, shared_signal: float = 1.0, domain_signal: float = 1.0,
                 task_signal: float = 1.0, noise: float = 0.5, seed: int = 0, split: str = "random",
                 split_seed: int = 0, gen_block: int = STREAM_BLOCK) -> None:
        _check_args(num_domains, num_tasks, rows, num_users, num_items, noise)
        check_split_kind(split)
        check_int("data.seed", seed, minimum=0)  # numpy's per-block seeds [seed, block] must be >= 0
        check_int("data.split_seed", split_seed, minimum=0)
        self.num_domains, self.num_tasks, self.rows = num_domains, num_tasks, rows
        self.num_users, self.num_items = num_users, num_items
        self.signals = (shared_signal, domain_signal, task_signal)
        self.noise_scale, self.seed, self.split, self.split_seed = noise, seed, split, split_seed
        self.gen_block = int(gen_block)
        self.n_blocks = -(-rows // self.gen_block)
        rng = np.random.default_rng(seed)
        self.users = rng.standard_normal((num_users, LATENT_DIM))
        self.items = rng.standard_normal((num_items, LATENT_DIM))
        self.domain_weights = rng.standard_normal((num_domains, LATENT_DIM))
        self.domain_offsets = rng.uniform(-0.5, 0.5, size=num_domains)
        self.task_weights = rng.standard_normal((num_tasks, LATENT_DIM))
        self.user_bias = rng.standard_normal(num_users)
        self.item_bias = rng.standard_normal(num_items)
        self.domains = tuple(f"d{k}" for k in range(num_domains))
        self.tasks = tuple(f"t{k}" for k in range(num_tasks))
        self._split_counts = self._draw_split_counts()
        self._moments: tuple[np.ndarray, np.ndarray] | None = None
        self._cuts: np.ndarray | None = None

    # -- rows
    def block_range(self, block: int) -> tuple[int, int]:
        start = block * self.gen_block
        return start, min(start + self.gen_block, self.rows)

    def block(self, block: int) -> StreamBlock:
        start, stop = self.block_range(block)
        n = stop - start
        rng = np.random.default_rng([self.seed, block])
        u = rng.integers(0, self.num_users, size=n)
        i = rng.integers(0, self.num_items, size=n)
        d = rng.integers(0, self.num_domains, size=n)
        x = rng.random((n, 2))
        noise = rng.standard_normal((n, self.num_tasks))
        uv = self.users[u] * self.items[i]
        raw = np.empty((n, 2 + self.num_tasks))
        raw[:, 0] = uv.sum(axis=1) + 2.0 * (self.user_bias[u] + self.item_bias[i]) + 1.5 * (x[:, 0] - 0.5)
        raw[:, 1] = np.einsum("nk,nk->n", uv, self.domain_weights[d])
        raw[:, 2:] = np.einsum("nk,tk->nt", uv, self.task_weights)  # einsum: no BLAS threads per block
        return StreamBlock(user=u, item=i, domain=d, x=x, raw=raw, noise=noise)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and (population) std of the raw logit terms over all rows (one generation pass, cached)."""
        if self._moments is None:
            count, mean, m2 = 0, np.zeros(2 + self.num_tasks), np.zeros(2 + self.num_tasks)
            for b in range(self.n_blocks):
                count, mean, m2 = _combine(count, mean, m2, self.block(b).raw)
            std = np.sqrt(m2 / count)
            self._moments = (mean, np.where(std > 0, std, 1.0))
        return self._moments

    def _noisy(self, blk: StreamBlock) -> tuple[np.ndarray, np.ndarray]:
        mean, std = self.moments()
        z = (blk.raw - mean) / std
        shared_s, domain_s, task_s = self.signals
        clean = (shared_s * z[:, :1] + domain_s * (z[:, 1:2] + self.domain_offsets[blk.domain][:, None])
                 + task_s * z[:, 2:])
        return clean, clean + self.noise_scale * blk.noise

    def cuts(self) -> np.ndarray:
        """Per-task label cut-offs: :func:`_thresholds` over the first :data:`THRESHOLD_SAMPLE` rows."""
        if self._cuts is None:
            sample, have, b = [], 0, 0
            while have < min(THRESHOLD_SAMPLE, self.rows):
                sample.append(self._noisy(self.block(b))[1])
                have += sample[-1].shape[0]
                b += 1
            self._cuts = _thresholds(np.concatenate(sample)[:THRESHOLD_SAMPLE])
        return self._cuts

    def labels(self, blk: StreamBlock) -> np.ndarray:
        """0/1 labels ``[n, T]`` (uint8) of one block."""
        return (self._noisy(blk)[1] > self.cuts()).astype(np.uint8)

    # -- split
    def _draw_split_counts(self) -> np.ndarray:
        """Rows of each split in each block ``[n_blocks, 3]``: exact totals, a uniformly random subset."""
        n_train = int(np.floor(self.rows * SPLIT_FRACTIONS[0] + 1e-9))
        n_val = int(np.floor(self.rows * (SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]) + 1e-9)) - n_train
        totals = np.array([n_train, n_val, self.rows - n_train - n_val], dtype=np.int64)
        counts = np.zeros((self.n_blocks, 3), dtype=np.int64)
        if self.split == "ordered":
            bounds = np.cumsum(totals)
            for b in range(self.n_blocks):
                start, stop = self.block_range(b)
                edges = np.clip(np.concatenate([[0], bounds]), start, stop)
                counts[b] = np.diff(edges)
            return counts
        rng = np.random.default_rng(self.split_seed)
        remaining = totals.copy()
        for b in range(self.n_blocks):
            start, stop = self.block_range(b)
            counts[b] = rng.multivariate_hypergeometric(remaining, stop - start)
            remaining -= counts[b]
        return counts

    def split_of(self, block: int) -> np.ndarray:
        """Split id per row of ``block`` (0 train, 1 val, 2 test)."""
        ids = np.repeat(np.arange(3, dtype=np.int8), self._split_counts[block])
        if self.split == "random":
            np.random.default_rng([self.split_seed, block]).shuffle(ids)
        return ids

    def split_sizes(self) -> tuple[int, int, int]:
        total = self._split_counts.sum(axis=0)
        return int(total[0]), int(total[1]), int(total[2])

    # -- encoding
    def table_spec(self) -> TableSpec:
        """The :class:`TableSpec` the materialised stream encodes with (for the in-memory reference)."""
        return TableSpec(name="synthetic", sparse=("user_id", "item_id"), dense=("x0", "x1"), tasks=self.tasks,
                         domains=self.domains, domain_column="domain",
                         domain_of_value={k: k for k in range(self.num_domains)},
                         extras={"split": self.split, "split_seed": self.split_seed, "seed": self.seed,
                                 "generator": "stream"})

    def frame(self) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
        """All rows as one frame + split indices: the in-memory reference (small tables and tests only)."""
        parts, splits = [], []
        for b in range(self.n_blocks):
            blk = self.block(b)
            labels = self.labels(blk)
            part = pd.DataFrame({"user_id": blk.user, "item_id": blk.item, "domain": blk.domain,
                                 "x0": blk.x[:, 0], "x1": blk.x[:, 1]})
            for k, name in enumerate(self.tasks):
                part[name] = labels[:, k]
            parts.append(part)
            splits.append(self.split_of(b))
        ids = np.concatenate(splits)
        frame = pd.concat(parts, ignore_index=True)
        return frame, *(np.flatnonzero(ids == s).astype(np.int64) for s in range(3))  # type: ignore[return-value]


def stream_settings(generator: dict[str, Any]) -> dict[str, Any]:
    """``data.*`` generator settings with :func:`synthetic_table`'s defaults filled in (the memmap cache key)."""
    defaults = {"num_domains": 3, "num_tasks": 2, "rows": 20000, "num_users": 500, "num_items": 300,
                "shared_signal": 1.0, "domain_signal": 1.0, "task_signal": 1.0, "noise": 0.5, "seed": 0}
    unknown = sorted(set(generator) - set(defaults))
    if unknown:
        raise UserInputError(f"unknown synthetic data setting(s): {unknown}")
    return {**defaults, **generator}


def make_synthetic_memmap(*, folder: str | Path, split: str = "random", split_seed: int = 0,
                          chunk_rows: int = 262_144, block_rows: int = 1 << 16, **generator: Any) -> EncodedDataset:
    """The streaming synthetic table, encoded chunk by chunk into memory-mapped files under ``folder``.

    The table is written once per (settings, split, split_seed) and reopened afterwards (a sub-folder
    named by the hash of those); see :mod:`m3oe_lightning.data.memmap`.
    """
    from m3oe_lightning.data import memmap  # memmap imports schema only; kept local to keep this light

    settings = stream_settings(generator)
    check_split_kind(split)
    config = {"dataset": "synthetic", "generator": "stream", "gen_block": STREAM_BLOCK,
              "threshold_sample": THRESHOLD_SAMPLE, "split": split, "split_seed": int(split_seed), **settings}
    return memmap.cached_table(
        Path(folder), config,
        lambda target: write_stream(SyntheticStream(split=split, split_seed=int(split_seed), gen_block=STREAM_BLOCK,
                                                    **settings), target, chunk_rows=int(chunk_rows)),
        block_rows=int(block_rows),
    )


def write_stream(stream: SyntheticStream, folder: Path, *, chunk_rows: int = 262_144) -> None:
    """Encode ``stream`` like :func:`encode_table` would encode :meth:`SyntheticStream.frame`, chunk by chunk.

    Pass 1 (generation only) gathers what encoding fits on train rows — which user/item/domain values
    train holds (the vocabularies) and the train min/max of ``x0``/``x1`` — plus the logit moments and
    cut-offs; pass 2 regenerates each chunk and appends it to the files. Memory is O(chunk_rows +
    vocabularies), never O(rows).
    """
    from m3oe_lightning.data import memmap
    from m3oe_lightning.data.schema import DenseFeature, FeatureSchema, SparseFeature

    check_int("data.chunk_rows", chunk_rows)
    blocks_per_chunk = max(1, -(-chunk_rows // stream.gen_block))
    seen = [np.zeros(stream.num_users, bool), np.zeros(stream.num_items, bool), np.zeros(stream.num_domains, bool)]
    low, high = np.full(2, np.inf), np.full(2, -np.inf)
    count, mean, m2 = 0, np.zeros(2 + stream.num_tasks), np.zeros(2 + stream.num_tasks)
    for b in range(stream.n_blocks):
        blk = stream.block(b)
        count, mean, m2 = _combine(count, mean, m2, blk.raw)
        train = stream.split_of(b) == 0
        for mask, values in zip(seen, (blk.user, blk.item, blk.domain)):
            mask[values[train]] = True
        if train.any():
            low = np.minimum(low, blk.x[train].min(axis=0))
            high = np.maximum(high, blk.x[train].max(axis=0))
    std = np.sqrt(m2 / count)
    stream._moments = (mean, np.where(std > 0, std, 1.0))
    stream.cuts()  # fixes the label cut-offs (from the first rows) before pass 2 writes labels

    new_ids = []
    for mask in seen:  # fit_vocabulary: ids 1.. in sorted value order among train values, 0 = unseen
        ids = np.zeros(mask.shape[0], dtype=np.int64)
        ids[mask] = np.arange(1, int(mask.sum()) + 1)
        new_ids.append(ids)
    names = ("user_id", "item_id", "domain")
    schema = FeatureSchema(
        sparse=tuple(SparseFeature(n, int(m.sum()) + 1, 16) for n, m in zip(names, seen)),
        dense=(DenseFeature("x0"), DenseFeature("x1")),
        domains=stream.domains, tasks=stream.tasks,
        extras={"dataset": "synthetic", "dense_range": {"x0": [float(low[0]), float(high[0])],
                                                        "x1": [float(low[1]), float(high[1])]},
                **dict(stream.table_spec().extras)},
    )
    span = high - low
    with memmap.TableWriter(folder, schema, stream.split_sizes(), sparse_dtype=np.int32) as writer:
        for first in range(0, stream.n_blocks, blocks_per_chunk):
            blocks = [stream.block(b) for b in range(first, min(first + blocks_per_chunk, stream.n_blocks))]
            split_ids = np.concatenate([stream.split_of(b) for b in range(first, first + len(blocks))])
            user = np.concatenate([blk.user for blk in blocks])
            item = np.concatenate([blk.item for blk in blocks])
            domain = np.concatenate([blk.domain for blk in blocks])
            x = np.concatenate([blk.x for blk in blocks])
            labels = np.concatenate([stream.labels(blk) for blk in blocks])
            sparse = np.stack([new_ids[0][user], new_ids[1][item], new_ids[2][domain]], axis=1)
            dense = np.where(span > 0, (x - low) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)
            writer.append(split_ids, sparse=sparse, dense=dense, domain=domain, labels=labels)
