"""PAGE (Chen et al., WWW 2024) as the released code implements it (docs/page.md, §1).

One DDPG agent per client chooses that client's learning rate and local epochs; one server agent
chooses the aggregation weights. Both learn online, interleaved with FL (the whole run is one
episode). All agents live on the server (docs/page.md, §6, option b: as the released code), so
the lr and epochs travel in each client's round config. Our decisions (docs/page.md, Decisions 1-3):

* **Client agent** — state (1-d): the AUC of the global model the client received, on its local
  **validation** split (measured by the client before training: the released code's one-round lag,
  docs/page.md, §1.6 item 1, is kept). Action (2-d, raw tanh space): ``[lr, epochs]``. Reward:
  ``c_reward_weight / (logloss(local model after training, local val) + loss_eps)``.
* **Server agent** — state (N-d, one entry per training client, in client order): the AUC of each
  client's fresh local model on the **server validation set** (a client that did not reply this
  round keeps its previous entry; the first state is the initial global model's AUC, repeated).
  Action (N-d): the aggregation weights. Reward:
  ``s_reward_weight / (logloss(aggregated model, server val) + loss_eps)``.
* The server validation set (:func:`server_validation_set`, bound in :meth:`PAGE.prepare`): the union of
  the training clients' local validation splits (disjoint from every test split used for reporting;
  docs/page.md, Decision 1). ``paper_parity: true`` switches both sides to the released code's leaky
  variant (local **test** splits and the pooled global **test** set); reports from such runs must say
  so (:meth:`PAGE.run_tags` gives the run the tag ``page_parity``).
* Metrics are the task family's (:mod:`..families`): for recommendation AUC / logloss (mean over (domain,
  task) groups), replacing the paper's accuracy / cross-entropy; for classification (PAGE's Synthetic
  setting) accuracy / cross-entropy, as the paper. A missing score (one label class) counts as 0.5 in a state.
* Warm-up (``round ≤ warmup``): uniform random raw actions in [-1, 1]; no agent updates. After it:
  client actions ``clip(actor(s) + ε·OU, −1, 1)`` with ε decaying; server actions ``actor(S)`` without
  noise (released code, docs/page.md, §1.6 item 3; ``server_noise: true`` adds it); one DDPG update per
  agent per round.
* Action mapping (``action_map``), applied when an action is used, from ``u = (a + 1)/2``:
  ``affine`` maps the whole range: ``lr = lr_min + u·(lr_max − lr_min)`` (``lr_scale: log``: geometric),
  ``epochs = 1 + round(u·(epochs_max − 1))``; ``released`` is the released code's: ``u`` clipped into
  ``[lr_min, lr_max]`` (so an untrained actor, u ≈ 0.5, plays ``lr_max`` and ``epochs_max``, FedAvg's own
  setting), ``lr = u``, ``epochs = max(1, int(u·int(epochs_max / lr_max)))``, and warm-up actions drawn
  uniformly in ``[lr_min, lr_max]`` as it does (the default: PAGE's Synthetic study favoured it on
  validation, within noise; ``lr_scale: log`` needs ``affine``). Server weights are ``u_i + 1e-6``
  normalised over the clients that replied (a dropped client gets no weight) under both; row-sparse replies
  (``federated.sparse_embeddings``) average each embedding row over the clients that updated it, these
  weights renormalised over them, and a client's state entry scores its model as :func:`expand` rebuilds it
  (the global model with the client's updated rows).
* Differential privacy (``federated.dp``): the replies are clipped first, so the server agent's state
  scores the clipped models; the noise std uses the agent's largest weight (``z·C·w_max``, not ``z·C/n``),
  and the server's reward scores the noised model, the one released. The agent's state itself is computed
  from individual models without noise, which the DP guarantee does not cover (:meth:`Strategy.notices`).
* Replay (``replay``): ``raw`` (docs/page.md, Decision 2) stores the actor's own output; ``transformed``
  stores what was applied, as the released code does: the client's ``u`` after the mapping's clip, the
  server's weight vector (0 for a client that did not reply).
* Ablations: ``learn_lr`` / ``learn_epochs`` / ``learn_weights`` off → ``lr_max`` / ``epochs_max`` /
  uniform weights (the released ``--is_lr`` / ``--is_epoch`` / ``--is_p``). The agents still act and learn.
* Round metrics (``page/*``: each client's lr, epochs and reward, the weights, the server's reward and
  validation AUC, critic losses, ε, the warm-up flag) are returned by :meth:`PAGE.aggregate_train`; the
  actions' part is recorded when :meth:`PAGE.configure_train` chooses them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.errors import UserInputError, check_int, check_number
from m3oe_lightning.federated.aggregation import aggregate, expand
from m3oe_lightning.federated.evaluation import finite
from m3oe_lightning.federated.messages import (
    Arrays,
    FitIns,
    FitRes,
    Metrics,
)
from m3oe_lightning.federated.partition import Roster
from m3oe_lightning.federated.strategies.base import SplitEvaluatorFactory, SplitScore
from m3oe_lightning.federated.strategies.fedavg import FedAvg
from m3oe_lightning.federated.strategies.page_agents import DDPGAgent
from m3oe_lightning.seeds import derive_seed

PARITY_TAG = "page_parity"
PARITY_TAG_VALUE = "true: PAGE's states and rewards come from the TEST splits (leaky, as the released code)"
PARITY_NOTICE = ("federated.paper_parity=true: PAGE's states and rewards use the TEST splits "
                 "(the released code's leaky variant); say so in any report of this run")


ACTION_MAPS = ("affine", "released")
REPLAYS = ("raw", "transformed")
# the defaults: the released map, as PAGE's Synthetic study chose on validation (docs/page.md, "The Synthetic
# study"); raw replay (DDPG's own)
DEFAULT_ACTION_MAP, DEFAULT_REPLAY = "released", "raw"
# what runs made before the switches existed did (the affine map): a run with these settings keeps its old hash
LEGACY_IDENTITY = {"action_map": "affine", "replay": "raw"}


def page_key(*parts: str) -> str:
    """PAGE's own round metrics: ``page/...``."""
    return keys.key("page", *parts)


def _score_or_half(value: float | None) -> float:
    return float(value) if finite(value) else 0.5


class PAGE(FedAvg):
    """PAGE's server: client agents (lr, epochs) and a server agent (aggregation weights).

    Args:
        warmup: rounds of random actions (no agent updates) at the start.
        lr_min / lr_max: range of the clients' learning rate; ``lr_scale``: ``linear`` or ``log``.
        epochs_max: local epochs range from 1 to this.
        learn_lr / learn_epochs / learn_weights: ablation switches (off: lr_max / epochs_max / uniform).
        c_reward_weight / s_reward_weight: reward scales (the "biased variants").
        loss_eps: added to the logloss before taking its inverse.
        paper_parity: states and rewards from the test splits (the released code's leaky variant).
        server_noise: exploration noise on the server agent's actions after warm-up (released: off).
        agent: DDPG settings shared by all agents
            (see :class:`~m3oe_lightning.federated.strategies.page_agents.DDPGAgent`).
        Others: :class:`~m3oe_lightning.federated.strategies.base.Strategy` (``local_epochs`` and
        ``client_lr`` are unused: the agents choose them).
    """

    name = "page"
    identity_defaults = LEGACY_IDENTITY
    uses_individual_updates = True  # the server agent's state scores each client's model

    def __init__(self, *, warmup: int = 3, lr_min: float = 1e-3, lr_max: float = 2e-2, lr_scale: str = "linear",
                 epochs_max: int = 3, learn_lr: bool = True, learn_epochs: bool = True, learn_weights: bool = True,
                 c_reward_weight: float = 1.0, s_reward_weight: float = 1.0, loss_eps: float = 1e-5,
                 paper_parity: bool = False, server_noise: bool = False, agent: Mapping[str, Any] | None = None,
                 action_map: str = DEFAULT_ACTION_MAP, replay: str = DEFAULT_REPLAY, **kwargs: Any) -> None:
        check_int("federated.warmup", warmup, minimum=0)
        check_number("federated.lr_min", lr_min, low=0, low_open=True)
        check_number("federated.lr_max", lr_max, low=0, low_open=True)
        if lr_min > lr_max:
            raise UserInputError(f"federated.lr_min={lr_min!r}, lr_max={lr_max!r}: use 0 < lr_min ≤ lr_max")
        if lr_scale not in ("linear", "log"):
            raise UserInputError(f"federated.lr_scale={lr_scale!r}: use linear or log")
        check_int("federated.epochs_max", epochs_max)
        if action_map not in ACTION_MAPS:
            raise UserInputError(f"federated.action_map={action_map!r}: use one of {', '.join(ACTION_MAPS)}")
        if replay not in REPLAYS:
            raise UserInputError(f"federated.replay={replay!r}: use one of {', '.join(REPLAYS)}")
        if action_map == "released" and lr_scale != "linear":
            raise UserInputError(f"federated.lr_scale={lr_scale}: the released action map is linear; use "
                                 f"federated.action_map=affine for a log scale")
        super().__init__(**kwargs)  # after our checks: local_epochs / client_lr interpolate ours in page.yaml
        self.warmup, self.lr_min, self.lr_max, self.lr_scale = warmup, float(lr_min), float(lr_max), lr_scale
        self.epochs_max = epochs_max
        self.action_map, self.replay = action_map, replay
        self.learn_lr, self.learn_epochs, self.learn_weights = bool(learn_lr), bool(learn_epochs), bool(learn_weights)
        self.c_reward_weight, self.s_reward_weight = float(c_reward_weight), float(s_reward_weight)
        self.loss_eps = float(loss_eps)
        self.paper_parity, self.server_noise = bool(paper_parity), bool(server_noise)
        self.agent_settings = dict(agent or {})
        DDPGAgent(1, 2, **self.agent_settings)  # fail on a bad agent setting now, not in round 1
        self.server_evaluate: SplitScore | None = None
        self.client_ids: list[str] = []
        self.client_agents: dict[str, DDPGAgent] = {}
        self.server_agent: DDPGAgent | None = None
        self.client_states: dict[str, torch.Tensor] = {}   # last observed state per client (1-d)
        self.server_state: torch.Tensor | None = None        # last observed server state (N-d)
        # this round, from configure_train to aggregate_train: each sampled client's (state, raw action),
        # the server's raw action, and the metrics of the chosen actions
        self._pending: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}
        self._server_action: torch.Tensor | None = None
        self._action_metrics: Metrics = {}

    @property
    def score_split(self) -> str:
        """The local split clients score on (``val``; ``test`` under ``paper_parity``)."""
        return "test" if self.paper_parity else "val"

    # ------------------------------------------------------------------------------ run-level hooks
    def prepare(self, federation: Roster, make_split_evaluator: SplitEvaluatorFactory) -> None:
        """Every client must have validation rows to score on (unless ``paper_parity``); bind the
        server validation set's evaluator."""
        super().prepare(federation, make_split_evaluator)
        if not self.paper_parity:
            empty = [c.client_id for c in federation.clients if c.num_val == 0]
            if empty:
                raise UserInputError(f"federated=page scores on each client's validation split, but "
                                     f"federated.local_split leaves client(s) {empty} without validation rows; "
                                     f"give val a larger share (or paper_parity=true)")
        # the server set: the union of the training clients' validation splits (docs/page.md, Decision 1), or
        # under paper_parity their test splits, i.e. the pooled global test set (the released code's leaky variant)
        self.bind_server_evaluator(make_split_evaluator(self.score_split))

    def bind_server_evaluator(self, evaluate: SplitScore) -> None:
        """The server validation set's evaluator (:meth:`prepare` binds it; tests bind a stand-in)."""
        self.server_evaluate = evaluate

    def run_tags(self) -> dict[str, str]:
        return {PARITY_TAG: PARITY_TAG_VALUE} if self.paper_parity else {}

    def notices(self) -> list[str]:
        return [*super().notices(), *([PARITY_NOTICE] if self.paper_parity else [])]

    # --------------------------------------------------------------------------------------- agents
    def _agent_seed(self, *agent: str | int) -> int:
        return derive_seed(self.seed, "page-agent", *agent)

    def _ensure_agents(self, client_ids: list[str]) -> None:
        if self.server_agent is not None:
            if list(client_ids) != self.client_ids:
                raise ValueError(f"PAGE: the training clients changed from {self.client_ids} to {client_ids}")
            return
        self.client_ids = list(client_ids)
        self.client_agents = {cid: DDPGAgent(1, 2, **{**self.agent_settings, "seed": self._agent_seed("client", k)})
                              for k, cid in enumerate(self.client_ids)}
        n = len(self.client_ids)
        self.server_agent = DDPGAgent(n, n, **{**self.agent_settings, "seed": self._agent_seed("server")})

    def _server_score(self, arrays: Arrays) -> Metrics:
        if self.server_evaluate is None:
            raise RuntimeError("PAGE needs a server validation set: call prepare (or bind_server_evaluator) first")
        return self.server_evaluate(arrays)

    # ------------------------------------------------------------------------------------- mapping
    def client_unit(self, raw: torch.Tensor) -> torch.Tensor:
        """``u = (a + 1)/2`` of a client action, clipped into ``[lr_min, lr_max]`` under the released map."""
        u = (raw.clamp(-1.0, 1.0) + 1.0) / 2.0
        return u.clamp(self.lr_min, self.lr_max) if self.action_map == "released" else u

    def map_client_action(self, raw: torch.Tensor) -> tuple[float, int]:
        """Raw ``[a_lr, a_epochs]`` in [-1, 1] → (lr in [lr_min, lr_max], epochs in [1, epochs_max])."""
        u = self.client_unit(raw).tolist()
        if self.action_map == "released":
            lr = u[0] if self.learn_lr else self.lr_max
            scale = int(self.epochs_max / self.lr_max)
            epochs = min(max(1, int(u[1] * scale)), self.epochs_max) if self.learn_epochs else self.epochs_max
            return lr, epochs
        if not self.learn_lr:
            lr = self.lr_max
        elif self.lr_scale == "log":
            lr = math.exp(math.log(self.lr_min) + u[0] * (math.log(self.lr_max) - math.log(self.lr_min)))
        else:
            lr = self.lr_min + u[0] * (self.lr_max - self.lr_min)
        lr = min(max(lr, self.lr_min), self.lr_max)
        epochs = 1 + int(round(u[1] * (self.epochs_max - 1))) if self.learn_epochs else self.epochs_max
        return lr, epochs

    def map_server_action(self, raw: torch.Tensor, replied: list[str]) -> dict[str, float]:
        """Raw N-d action → weights over ``replied`` (a distribution; the others get none)."""
        if not replied:
            return {}
        if not self.learn_weights:
            return {cid: 1.0 / len(replied) for cid in replied}
        u = (raw.clamp(-1.0, 1.0) + 1.0) / 2.0 + 1e-6
        raw_w = {cid: float(u[self.client_ids.index(cid)]) for cid in replied}
        total = sum(raw_w.values())
        return {cid: w / total for cid, w in raw_w.items()}

    # --------------------------------------------------------------------------------------- train
    def configure_train(self, server_round: int, arrays: Arrays | None, client_ids: list[str]) -> dict[str, FitIns]:
        self._ensure_agents(client_ids)
        self.round_arrays = arrays
        if self.server_state is None:  # reset: the initial global model's score, once per client
            first = _score_or_half(self._server_score(arrays).get(self.family.score)) if arrays is not None else 0.5
            self.server_state = torch.full((len(self.client_ids),), first)
        warm = server_round <= self.warmup
        self._pending, self._action_metrics = {}, {}
        out: dict[str, FitIns] = {}
        for cid in self.sample(server_round, client_ids):
            agent, state = self.client_agents[cid], self.client_states.get(cid)
            raw = self._warmup_action(agent) if warm or state is None else agent.select_action(state)
            lr, epochs = self.map_client_action(raw)
            self._pending[cid] = (state, raw)
            self._action_metrics[page_key("client", cid, "lr")] = lr
            self._action_metrics[page_key("client", cid, "epochs")] = float(epochs)
            out[cid] = FitIns(arrays=arrays, config={"server_round": server_round, "local_epochs": epochs, "lr": lr,
                                                     "score_split": self.score_split, **self.privacy.fit_config()})
        assert self.server_agent is not None
        self._server_action = (self.server_agent.random_action() if warm else
                               self.server_agent.select_action(self.server_state, explore=self.server_noise))
        self._action_metrics[page_key("warmup")] = float(warm)
        return out

    def _warmup_action(self, agent: DDPGAgent) -> torch.Tensor:
        """A random client action: uniform over the actor's space, or (released map) over ``[lr_min, lr_max]``
        after the mapping, as the released code draws its warm-up learning rates and epochs."""
        if self.action_map == "released":
            return agent.random_action(2 * self.lr_min - 1, 2 * self.lr_max - 1)
        return agent.random_action()

    def _stored_client_action(self, raw: torch.Tensor) -> torch.Tensor:
        return raw if self.replay == "raw" else self.client_unit(raw)

    def _stored_server_action(self, raw: torch.Tensor, replied: list[str]) -> torch.Tensor:
        if self.replay == "raw":
            return raw
        weights = self.map_server_action(raw, replied)
        return torch.tensor([weights.get(cid, 0.0) for cid in self.client_ids])

    def aggregation_weights(self, server_round: int, replies: dict[str, FitRes]) -> dict[str, float]:
        """The server agent's weights over the clients that replied (a distribution)."""
        if self._server_action is None:
            raise RuntimeError("PAGE.aggregation_weights before configure_train")
        return self.map_server_action(self._server_action, sorted(replies))

    def aggregate_train(self, server_round: int, replies: dict[str, FitRes]) -> tuple[Arrays | None, Metrics]:
        """Agents observe and learn, the server agent's weights aggregate; the round's ``page/*`` metrics
        (the actions chosen at configure time included; non-finite values left out)."""
        replies = {cid: r for cid, r in replies.items() if r.arrays is not None}
        assert self.server_agent is not None and self.server_state is not None
        replies, dp_metrics = self.privacy.clip_replies(server_round, replies, self.round_arrays)
        metrics: Metrics = {**self._action_metrics, **dp_metrics}
        # client transitions (s, a_raw, r, s'): only clients that replied with a score
        received_key = self.family.reply_key("received", "score")
        trained_loss_key = self.family.reply_key("trained", "loss")
        for cid, (state, raw) in self._pending.items():
            reply = replies.get(cid)
            if reply is None or not finite(reply.metrics.get(trained_loss_key)):
                continue
            next_state = torch.tensor([_score_or_half(reply.metrics.get(received_key))])
            reward = self.c_reward_weight / (reply.metrics[trained_loss_key] + self.loss_eps)
            self.client_agents[cid].observe(state if state is not None else next_state,
                                            self._stored_client_action(raw), reward, next_state)
            self.client_states[cid] = next_state
            metrics[page_key("client", cid, "reward")] = reward
        # the server's next state: each fresh local model on the server validation set
        next_server = self.server_state.clone()
        for cid in sorted(replies):
            score = self._server_score(expand(self.round_arrays, replies[cid]))
            next_server[self.client_ids.index(cid)] = _score_or_half(score.get(self.family.score))
        new = None
        if len(replies) >= self.min_clients:
            weights = self.aggregation_weights(server_round, replies)
            new, noise_metrics = self.privacy.noise(server_round, aggregate(replies, weights, self.round_arrays),
                                                    replies, weights)
            metrics.update(noise_metrics)
            for cid, w in weights.items():
                metrics[page_key("weight", cid)] = w
            score = self._server_score(new)
            if finite(score.get(self.family.loss)):
                reward = self.s_reward_weight / (score[self.family.loss] + self.loss_eps)
                self.server_agent.observe(self.server_state, self._stored_server_action(self._server_action,
                                                                                         sorted(replies)),
                                          reward, next_server)
                metrics[page_key("server", "reward")] = reward
                metrics[page_key("server", f"val_{self.family.score_label}")] = _score_or_half(
                    score.get(self.family.score))
        self.server_state = next_server
        if server_round > self.warmup:  # one DDPG step per agent per round after warm-up
            losses = [agent.update()[0] for agent in self.client_agents.values() if len(agent.buffer)]
            if losses:
                metrics[page_key("client", "critic_loss_mean")] = float(sum(losses) / len(losses))
            if len(self.server_agent.buffer):
                metrics[page_key("server", "critic_loss")] = self.server_agent.update()[0]
        metrics[page_key("client", "epsilon_mean")] = float(
            sum(a.epsilon for a in self.client_agents.values()) / max(1, len(self.client_agents)))
        return new, {k: float(v) for k, v in metrics.items() if finite(v)}

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        if self.server_agent is None:
            return {}
        return {"client_ids": list(self.client_ids),
                "client_agents": {cid: a.state_dict() for cid, a in self.client_agents.items()},
                "server_agent": self.server_agent.state_dict(),
                "client_states": {cid: s.clone() for cid, s in self.client_states.items()},
                "server_state": None if self.server_state is None else self.server_state.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        self.server_agent = None
        self._ensure_agents(list(state["client_ids"]))
        for cid, agent_state in state["client_agents"].items():
            self.client_agents[cid].load_state_dict(agent_state)
        assert self.server_agent is not None
        self.server_agent.load_state_dict(state["server_agent"])
        self.client_states = {cid: s.clone() for cid, s in state["client_states"].items()}
        self.server_state = None if state["server_state"] is None else state["server_state"].clone()
