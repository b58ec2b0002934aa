"""Differential privacy of the global model (``federated.dp``), from Flower's DP building blocks.

Central DP with fixed clipping (Geyer et al. 2017; McMahan et al. 2018), as Flower's
``DifferentialPrivacy{Server,Client}SideFixedClipping`` wrappers and ``fixedclipping_mod`` do it:

* every client's **update** (the float arrays it sends − the global arrays it received) is clipped to
  L2 norm ``clipping_norm`` over all those arrays together: on the server (``server_fixed``, the server
  sees raw updates) or on the client before sending (``client_fixed``, the server never does);
* the aggregate gets Gaussian noise of std ``noise_multiplier × clipping_norm × w_max``, ``w_max`` the
  largest normalised aggregation weight of the round. That is Flower's ``z·C/n`` exactly when the weights
  are uniform (``w_max = 1/n``); under FedAvg's example weights or PAGE's learnt ones one client moves
  the aggregate by up to ``w_max·C``, so the noise must scale with that, not with ``1/n``.

``local`` is local DP: each client clips its update and adds noise of std ``noise_multiplier ×
clipping_norm`` itself (Flower's ``LocalDpMod`` with ``sensitivity = clipping_norm`` and
``noise_multiplier = sqrt(2·ln(1.25/δ))/ε``); the server adds none.

The arithmetic is Flower's (:mod:`flwr.supercore.differential_privacy`, on lists of NumPy arrays); this
module converts at the boundary and seeds Flower's draws (NumPy's global generator) from the run seed,
restoring the generator afterwards so nothing else in the run sees a different stream. Integer entries
(counters) are neither clipped nor noised; entries no reply carries (a client's private user embeddings)
are not part of any update, so they get no noise either. Row-sparse replies are refused: a row one client
updated is averaged with weight 1 (its sensitivity is ``C``, not ``w·C``) and the ids sent reveal which
users and items the client holds, which no noise on values hides (docs/privacy.md).

Round metrics: ``dp/clipped_fraction`` (share of the aggregated updates that were clipped) and
``dp/noise_std`` (std of the noise added per coordinate: to the aggregate, or to each update under ``local``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.supercore.differential_privacy import (
    add_gaussian_noise_inplace,
    compute_adaptive_clip_model_update,
    compute_stdv,
)

from m3oe_lightning.errors import UserInputError, check_number
from m3oe_lightning.federated.messages import Arrays, Config, FitRes, Metrics
from m3oe_lightning.seeds import derive_seed

DP_MODES = ("none", "server_fixed", "client_fixed", "local")
# ``federated.dp`` at these values computes what a run computed before the block existed (identity default)
DP_DEFAULTS: dict[str, object] = {"mode": "none", "noise_multiplier": 1.0, "clipping_norm": 1.0}

CLIPPING_NORM_KEY = "dp_clipping_norm"      # round config: the client clips its update to this norm
LOCAL_NOISE_KEY = "dp_local_noise_std"      # round config: … and adds noise of this std (local DP)
CLIPPED = "dp/clipped"                      # fit reply metric: 1.0 when the client's update was clipped
CLIPPED_FRACTION = "dp/clipped_fraction"
NOISE_STD = "dp/noise_std"


@dataclass(frozen=True)
class DPSettings:
    """``federated.dp``: ``mode`` (one of :data:`DP_MODES`), ``noise_multiplier`` z ≥ 0, ``clipping_norm`` C > 0."""

    mode: str = "none"
    noise_multiplier: float = 1.0
    clipping_norm: float = 1.0

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> DPSettings:
        """The checked settings of a ``federated.dp`` node (``None``: DP off)."""
        values: dict[str, Any] = {**DP_DEFAULTS, **dict(node or {})}
        unknown = sorted(set(values) - set(DP_DEFAULTS))
        if unknown:
            raise UserInputError(f"federated.dp.{unknown[0]}: no such setting; use {', '.join(DP_DEFAULTS)}")
        mode = values["mode"]
        if mode not in DP_MODES:
            raise UserInputError(f"federated.dp.mode={mode!r}: use one of {', '.join(DP_MODES)}")
        check_number("federated.dp.noise_multiplier", values["noise_multiplier"], low=0)
        check_number("federated.dp.clipping_norm", values["clipping_norm"], low=0, low_open=True)
        return cls(mode=str(mode), noise_multiplier=float(values["noise_multiplier"]),
                   clipping_norm=float(values["clipping_norm"]))

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


# ------------------------------------------------------------------------------- Flower's arithmetic
@contextmanager
def numpy_seeded(seed: int) -> Iterator[None]:
    """Flower draws its noise from NumPy's global generator: seed it for the draw, then put it back."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def float_names(arrays: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> list[str]:
    """The entries an update is made of: float arrays the reply carries and the global model has."""
    return [name for name, value in arrays.items() if value.is_floating_point() and name in reference]


def clip_update(arrays: Arrays, reference: Mapping[str, torch.Tensor], clipping_norm: float) -> tuple[Arrays, bool]:
    """``arrays`` moved so that ``arrays − reference`` (over its float entries) has L2 norm ≤ ``clipping_norm``;
    whether it had to be scaled down. The other entries are returned as they are."""
    names = float_names(arrays, reference)
    sent = [arrays[name].detach().cpu().numpy() for name in names]
    received = [reference[name].detach().cpu().numpy() for name in names]
    if all(np.array_equal(a, b) for a, b in zip(sent, received, strict=True)):
        return arrays, False  # a zero update: nothing to clip (Flower's scaling would divide by its zero norm)
    # Flower's FlatClip: replaces each element of ``sent`` by received + the clipped update, says if it scaled
    clipped = compute_adaptive_clip_model_update(sent, received, clipping_norm)
    out = dict(arrays)
    for name, value in zip(names, sent, strict=True):
        out[name] = torch.from_numpy(np.ascontiguousarray(value)).to(arrays[name].dtype)
    return out, bool(clipped)


def add_noise(arrays: Arrays, names: list[str], std: float, seed: int) -> Arrays:
    """``arrays`` with Gaussian noise of ``std`` on the entries ``names`` (Flower's draw, seeded by ``seed``)."""
    if std <= 0 or not names:
        return arrays
    noisy = [arrays[name].detach().cpu().numpy().copy() for name in names]
    with numpy_seeded(seed):
        add_gaussian_noise_inplace(noisy, std)
    out = dict(arrays)
    for name, value in zip(names, noisy, strict=True):
        out[name] = torch.from_numpy(value)
    return out


def central_noise_std(settings: DPSettings, weights: Mapping[str, float]) -> float:
    """``z·C·w_max``: Flower's ``compute_stdv(z, C, n)`` with ``n = 1/w_max`` clients' worth of averaging
    (``n`` is the number of clients when the weights are uniform)."""
    total = float(sum(weights.values()))
    effective_clients = total / max(weights.values())
    return compute_stdv(settings.noise_multiplier, settings.clipping_norm, effective_clients)


# ------------------------------------------------------------------------------------------ the server
class Privacy:
    """What a strategy applies around its aggregation: :meth:`fit_config` (what clients must do),
    :meth:`clip_replies` (before the replies are used) and :meth:`noise` (on the aggregate). With
    ``mode: none`` all three hand back exactly what they were given."""

    def __init__(self, settings: DPSettings | None = None, seed: int = 0) -> None:
        self.settings = settings or DPSettings()
        self.seed = int(seed)

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def fit_config(self) -> Config:
        """Round-config entries for the clients (``client_fixed`` / ``local``: they clip, and noise)."""
        s = self.settings
        if s.mode == "client_fixed":
            return {CLIPPING_NORM_KEY: s.clipping_norm}
        if s.mode == "local":
            return {CLIPPING_NORM_KEY: s.clipping_norm, LOCAL_NOISE_KEY: s.noise_multiplier * s.clipping_norm}
        return {}

    def clip_replies(self, server_round: int, replies: dict[str, FitRes],
                     reference: Arrays | None) -> tuple[dict[str, FitRes], Metrics]:
        """The replies with clipped updates (``server_fixed``; the clients did it otherwise) and
        ``dp/clipped_fraction``. ``reference``: the global model the round's clients were sent."""
        if not self.enabled or not replies:
            return replies, {}
        if self.settings.mode != "server_fixed":
            flags = [bool(r.metrics.get(CLIPPED, 0.0)) for r in replies.values()]
            return replies, {CLIPPED_FRACTION: float(np.mean(flags))}
        if reference is None:
            raise ValueError("server-side clipping needs the global model the clients were sent")
        out: dict[str, FitRes] = {}
        flags = []
        for cid, reply in replies.items():
            assert reply.arrays is not None
            arrays, clipped = clip_update(reply.arrays, reference, self.settings.clipping_norm)
            out[cid] = dataclasses.replace(reply, arrays=arrays)
            flags.append(clipped)
        return out, {CLIPPED_FRACTION: float(np.mean(flags))}

    def noise(self, server_round: int, aggregate: Arrays, replies: Mapping[str, FitRes],
              weights: Mapping[str, float]) -> tuple[Arrays, Metrics]:
        """The aggregate with central noise (``server_fixed`` / ``client_fixed``) on the float entries some
        reply carried, and ``dp/noise_std``; seeded by (run seed, round)."""
        s = self.settings
        if not self.enabled:
            return aggregate, {}
        if s.mode == "local":  # the clients noised their own updates
            return aggregate, {NOISE_STD: s.noise_multiplier * s.clipping_norm}
        std = central_noise_std(s, {cid: weights[cid] for cid in replies})
        carried = {name for r in replies.values() for name in float_names(r.arrays or {}, aggregate)}
        names = [name for name in aggregate if name in carried]
        return add_noise(aggregate, names, std, derive_seed(self.seed, "dp-noise", server_round)), {NOISE_STD: std}


def build_privacy(node: Mapping[str, Any] | None, *, seed: int, sparse_embeddings: object = False) -> Privacy:
    """The run's :class:`Privacy` from ``federated.dp`` (checked here, before anything trains)."""
    settings = DPSettings.from_config(node)
    if settings.enabled and sparse_embeddings is True:
        raise UserInputError(f"federated.dp.mode={settings.mode} with federated.sparse_embeddings=true: a row one "
                             f"client updated is released with weight 1 and its ids in the clear "
                             f"(docs/privacy.md); use federated.sparse_embeddings=false or federated.dp.mode=none")
    return Privacy(settings, seed=seed)


# ------------------------------------------------------------------------------------------ the client
def protect_reply(reply: FitRes, received: Arrays, config: Mapping[str, Any], seed: int) -> FitRes:
    """A client's fit reply as the round config asks (``dp_clipping_norm``: clip the update against
    ``received``; ``dp_local_noise_std``: then add that noise, seeded by ``seed``); unchanged otherwise.
    The reply's ``dp/clipped`` metric tells the server whether clipping scaled the update down."""
    if CLIPPING_NORM_KEY not in config or reply.arrays is None:
        return reply
    if reply.embedding_rows:
        raise ValueError("differential privacy of row-sparse replies is not supported (docs/privacy.md)")
    arrays, clipped = clip_update(reply.arrays, received, float(config[CLIPPING_NORM_KEY]))
    std = float(config.get(LOCAL_NOISE_KEY, 0.0))
    arrays = add_noise(arrays, float_names(arrays, received), std, seed)
    return dataclasses.replace(reply, arrays=arrays, metrics={**reply.metrics, CLIPPED: float(clipped)})
