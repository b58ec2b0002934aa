"""The federated client: local fit and evaluate through the shared LightningModule.

One class serves every algorithm; what it does in a round is decided by the round's config, which
the strategy writes (as a Flower strategy writes a ``ConfigRecord``):

======================  ============================================================================
config key              effect
======================  ============================================================================
``local_epochs``        epochs of each local fit (a fresh Lightning ``Trainer`` per fit)
``lr``                  the client optimiser's learning rate
``mu``                  FedProx: adds ``μ/2·‖w − w_global‖²`` to the training loss (0 = off)
``lam``                 Ditto: also trains the persistent personal model ``v`` with ``λ/2·‖v − w_global‖²``
``personal_epochs``     Ditto: epochs of the personal fit
``local_only``          Local: train the persistent personal model, send nothing back
``score_split``         PAGE: ``val`` (default of PAGE) or ``test`` (``paper_parity``): the reply's metrics
                        also hold ``score/received_auc`` / ``score/received_logloss`` (the received
                        model on that local split, before training: the client agent's next state) and
                        ``score/trained_auc`` / ``score/trained_logloss`` (after training: its reward);
                        the classification family's are ``…_accuracy`` / ``…_cross_entropy``
``dp_clipping_norm``    ``federated.dp.mode=client_fixed`` / ``local``: the reply's update (sent float arrays −
                        the received global ones) is clipped to this L2 norm; ``dp/clipped`` in the reply
                        says whether it was scaled down (:func:`~.privacy.protect_reply`)
``dp_local_noise_std``  ``local``: Gaussian noise of this std is then added to it (seeded per round)
``deadline_s``          set by the runner from ``client_timeout``: local training stops at the first
                        batch boundary past it and the fit raises :class:`ClientTimeout` (the client's
                        persistent state is left as it was)
======================  ============================================================================

The *personalized model* (evaluated on the local test split) is the model this round's local
training produced (FedAvg/FedProx, as PAGE's code), Ditto's persistent ``v``, or Local's own model.

``personal_slices`` (``federated.personal``, e.g. federated M3oE's ``domain_experts``): those parts
of the state dict never come from the server after the client's first round: the client starts each
local fit from the received global model overlaid with its own personalized model's values there.
It still sends its whole model, so the server's global model (for the pooled global and held-out
test sets, i.e. new sites) has averaged domain parts too.
``private`` (``federated.personal=user_embeddings``): state-dict entries (the user-id embedding table)
that are overlaid in the same way and, in addition, never leave the client: they are left out of every
reply, so the server's global model keeps their initial values (a new user has no trained row anyway).

``embedding_tables`` (``federated.sparse_embeddings=true``): for each embedding table (state-dict key →
sparse column) the reply holds only the rows of the ids present in the client's training rows for that
column, with those ids in :attr:`~.messages.FitRes.embedding_rows`. Those are the rows with information:
Adam with weight decay moves every row a little each step (the decay enters the gradient and Adam rescales
it), so "the row changed" would name them all; only rows whose ids occur in local data were fitted to
anything. The client's own model keeps every row as trained.
Everything that persists across rounds is in :meth:`state_dict` (a Flower ClientApp keeps it in
``context.state``).

What the client trains and how it scores is its model's task family (:mod:`.families`): a recommender
through ``MDMTModule`` scored by AUC, a classifier through ``ClassifierModule`` scored by accuracy, with the
same rounds, personalisation and replies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import lightning as L
import torch
from torch import nn

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.data.datamodule import MDMTDataModule
from m3oe_lightning.data.schema import EncodedDataset, EncodedSplit
from m3oe_lightning.federated.families import RECOMMENDATION, TaskFamily
from m3oe_lightning.federated.messages import (
    TRAIN_LOSS,
    Arrays,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    get_arrays,
    overlay,
    set_arrays,
)
from m3oe_lightning.federated.privacy import protect_reply
from m3oe_lightning.models.base import MDMTModel, PersonalSlices
from m3oe_lightning.seeds import derive_seed
from m3oe_lightning.training.cohort import LocalResult
from m3oe_lightning.training.quiet import quiet_lightning

SystemFactory = Callable[[MDMTModel, float], L.LightningModule]  # (model, lr) -> training system (extra_loss)
TrainerFactory = Callable[..., L.Trainer]                  # (max_epochs=...) -> a quiet Trainer


@dataclass
class LocalFit:
    """One local fit a round asks of a client: from ``start``, ``epochs`` over ``split`` at ``lr``.

    ``seed`` fixes the batch order (epoch ``e`` visits ``epoch_permutation(len(split), seed, e)``), derived from
    (client seed, ``server_round``, ``stream``: 0 the fit that is sent back, 1 Ditto's personal fit).
    ``reference`` / ``coefficient``: the proximal term ``coefficient/2·‖w − reference‖²`` (FedProx's μ, Ditto's
    λ; ``None`` / 0 = none). ``deadline``: ``time.perf_counter()`` seconds past which the fit stops.
    """

    start: Arrays
    epochs: int
    lr: float
    server_round: int
    stream: int
    seed: int
    split: EncodedSplit
    reference: Arrays | None = None
    coefficient: float = 0.0
    deadline: float | None = None


@dataclass
class FitPlan:
    """A round's fit, planned: the instructions, the local fits still to run (the sent model's first, then
    Ditto's personal one), the received model as overlaid (``None``: ``local_only``) and the metrics taken
    before training (PAGE's state)."""

    ins: FitIns
    jobs: list[LocalFit]
    received: Arrays | None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def server_round(self) -> int:
        return int(self.ins.config.get("server_round", 0))


class ClientTimeout(TimeoutError):
    """A local fit ran past its ``deadline_s`` and was stopped (the runner drops the client)."""


class Deadline(L.Callback):
    """Stop a fit at the first batch boundary after ``deadline`` (``time.perf_counter()`` seconds)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if time.perf_counter() > self.deadline:
            self.fired = True
            trainer.should_stop = True


class ProximalTerm:
    """``coefficient/2 · Σ‖p − p_ref‖²`` over the model's trainable parameters.

    FedProx's proximal term (coefficient μ, reference = the received global model) and Ditto's
    regulariser (λ) have this one form. A plain callable, not an ``nn.Module``: set as
    ``MDMTModule.extra_loss`` it must not become a submodule (it would join the state dict).
    """

    def __init__(self, reference: Mapping[str, torch.Tensor], coefficient: float, model: nn.Module) -> None:
        self.coefficient = float(coefficient)
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.reference = [reference[name].detach() for name in self.names]

    def __call__(self, model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters())
        diffs = [params[name] - ref for name, ref in zip(self.names, self.reference)]
        return 0.5 * self.coefficient * torch.stack([d.pow(2).sum() for d in diffs]).sum()


class MDMTClient:
    """A client holding one partition (local train/val/test) and its persistent state.

    Args:
        client_id: stable id (a partition id; metric keys use it).
        data: the local splits.
        model_fn: a fresh model with the federation's initial weights.
        system_fn: ``(model, lr) -> LightningModule`` with an ``extra_loss`` attribute (the family's system:
            ``MDMTModule``, the same as ``m3oe-train``, or ``ClassifierModule``).
        trainer_fn: ``(max_epochs=...) -> Trainer`` (logger, checkpointing, progress bar and summary off).
        batch_size / eval_batch_size: local training / evaluation batch sizes.
        seed: base seed; a fit's batch order is derived from (seed, round, fit).
        personal_slices: parts of the state dict kept local (see the module doc); ``None``: none.
        private: state-dict entries never sent (see the module doc); they must be whole ``personal_slices``.
        embedding_tables: row-sparse replies for these tables (state-dict key → sparse column); ``None``: off.
        family: the model's task family (how a split is scored; which metric is the score and the loss).
    """

    def __init__(self, client_id: str, data: EncodedDataset, *, model_fn: Callable[[], MDMTModel],
                 system_fn: SystemFactory, trainer_fn: TrainerFactory, batch_size: int = 4096,
                 eval_batch_size: int = 65536, seed: int = 0,
                 personal_slices: PersonalSlices | None = None, private: Collection[str] = (),
                 embedding_tables: Mapping[str, int] | None = None, family: TaskFamily = RECOMMENDATION) -> None:
        self.client_id = client_id
        self.family = family
        self.data = data
        self.model_fn = model_fn
        self.system_fn = system_fn
        self.trainer_fn = trainer_fn
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.seed = int(seed)
        self.personal_slices = dict(personal_slices or {})
        self.private = frozenset(private)
        if any(self.personal_slices.get(name, slice(0)) is not None for name in self.private):
            raise ValueError(f"client {client_id}: private entries {sorted(self.private)} must be whole "
                             f"personal slices")
        self.embedding_tables = dict(embedding_tables or {})
        self._touched: Arrays | None = None  # embedding table -> the ids in the local training rows
        self.personal: Arrays | None = None  # the personalized model (see module doc)
        self._model: MDMTModel | None = None

    # -------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Arrays]:
        return {} if self.personal is None else {"personal": self.personal}

    def load_state_dict(self, state: Mapping[str, Arrays]) -> None:
        self.personal = dict(state["personal"]) if "personal" in state else None

    @property
    def model(self) -> MDMTModel:
        """The client's working copy of the model (built once)."""
        if self._model is None:
            self._model = self.model_fn()
        return self._model

    # ------------------------------------------------------------------------------------ reply
    def touched_rows(self) -> Arrays:
        """Each row-sparse table's updated rows: the sorted ids of its column in the local training rows."""
        if self._touched is None:
            sparse = self.data.train.sparse
            self._touched = {name: torch.unique(sparse[:, column]) for name, column in self.embedding_tables.items()}
        return self._touched

    def reply(self, trained: Arrays, num_examples: int, metrics: Mapping[str, float]) -> FitRes:
        """The fit reply: ``trained`` without the private entries, row-sparse tables cut to their updated rows."""
        if not self.private and not self.embedding_tables:
            return FitRes(arrays=trained, num_examples=num_examples, metrics=dict(metrics))
        arrays = {name: value for name, value in trained.items() if name not in self.private}
        rows: Arrays = {}
        for name, ids in self.touched_rows().items():
            if name in arrays:
                arrays[name] = arrays[name].index_select(0, ids)
                rows[name] = ids
        return FitRes(arrays=arrays, num_examples=num_examples, metrics=dict(metrics), embedding_rows=rows or None)

    # -------------------------------------------------------------------------------- local fit
    def train_local(self, model: MDMTModel, *, epochs: int, lr: float, server_round: int,
                    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None, stream: int = 0,
                    deadline: float | None = None) -> float:
        """``epochs`` of local training through the family's system and a fresh ``Trainer``; the train loss.

        ``deadline`` (``time.perf_counter()`` seconds): stop at the first batch past it and raise
        :class:`ClientTimeout`.
        """
        seed = derive_seed(self.seed, server_round, stream)
        torch.manual_seed(seed)
        system = self.system_fn(model, lr)
        system.extra_loss = extra_loss
        datamodule = MDMTDataModule.from_dataset(self.data, batch_size=self.batch_size,
                                                 eval_batch_size=self.eval_batch_size, seed=seed)
        stopper = Deadline(deadline) if deadline is not None else None
        with quiet_lightning():
            trainer = (self.trainer_fn(max_epochs=int(epochs)) if stopper is None
                       else self.trainer_fn(max_epochs=int(epochs), callbacks=[stopper]))
            trainer.fit(system, datamodule=datamodule)
        if stopper is not None and stopper.fired:
            raise ClientTimeout(f"client {self.client_id}: local training stopped at the deadline")
        loss = trainer.callback_metrics.get(keys.key("train", keys.LOSS))
        return float(loss) if loss is not None else float("nan")

    def score_split(self, name: str) -> EncodedSplit:
        if name not in ("val", "test"):
            raise ValueError(f"client {self.client_id}: score_split={name!r}: use val or test")
        return self.data.val if name == "val" else self.data.test

    def fit(self, ins: FitIns) -> FitRes:
        """One round's fit: plan it, run its local fits one after another through Lightning, reply."""
        plan = self.plan_fit(ins)
        return self.finish_fit(plan, [self.run_local(job) for job in plan.jobs])

    def plan_fit(self, ins: FitIns) -> FitPlan:
        """What this round's config asks of the client, as local fits still to run.

        The received model's score (PAGE's state) is taken here, before any training. A cohort transport
        (:class:`~.cohort.CohortTransport`) runs the fits of many clients' plans at once; :meth:`fit` runs
        them one by one: both then hand the results to :meth:`finish_fit`.
        """
        config = ins.config
        server_round = int(config.get("server_round", 0))
        epochs, lr = int(config["local_epochs"]), float(config["lr"])
        deadline = time.perf_counter() + float(config["deadline_s"]) if "deadline_s" in config else None

        def job(start: Arrays, *, stream: int = 0, reference: Arrays | None = None, coefficient: float = 0.0,
                job_epochs: int = epochs) -> LocalFit:
            return LocalFit(start=start, epochs=int(job_epochs), lr=lr, server_round=server_round, stream=stream,
                            seed=derive_seed(self.seed, server_round, stream), split=self.data.train,
                            reference=reference if coefficient > 0 else None, coefficient=coefficient,
                            deadline=deadline)

        if config.get("local_only"):
            start = self.personal if self.personal is not None else get_arrays(self.model)
            return FitPlan(ins=ins, jobs=[job(start)], received=None)
        if ins.arrays is None:
            raise ValueError(f"client {self.client_id}: round {server_round} sent no model to train")
        received = ins.arrays
        if self.personal_slices and self.personal is not None:
            received = overlay(received, self.personal, self.personal_slices)
        metrics: dict[str, float] = {}
        if "score_split" in config:  # PAGE: the received global model on local data is the agent's next state
            before = self.score_arrays(received, str(config["score_split"]))
            metrics[self.family.reply_key("received", "score")] = before.get(self.family.score, float("nan"))
            metrics[self.family.reply_key("received", "loss")] = before.get(self.family.loss, float("nan"))
        jobs = [job(received, reference=received, coefficient=float(config.get("mu", 0.0)))]
        if "lam" in config:  # Ditto's personal step: v (from the first global model it saw) pulled to received
            start = self.personal if self.personal is not None else received
            jobs.append(job(start, stream=1, reference=received, coefficient=float(config["lam"]),
                            job_epochs=int(config.get("personal_epochs", epochs))))
        return FitPlan(ins=ins, jobs=jobs, received=received, metrics=metrics)

    def run_local(self, job: LocalFit) -> LocalResult:
        """One local fit through the family's LightningModule and a fresh ``Trainer``."""
        model = self.model
        set_arrays(model, job.start)
        extra = ProximalTerm(job.reference, job.coefficient, model) if job.reference is not None else None
        loss = self.train_local(model, epochs=job.epochs, lr=job.lr, server_round=job.server_round, extra_loss=extra,
                                stream=job.stream, deadline=job.deadline)
        return LocalResult(arrays=get_arrays(model), loss=loss)

    def finish_fit(self, plan: FitPlan, results: Sequence[LocalResult]) -> FitRes:
        """The reply to ``plan.ins`` from its local fits' ``results`` (in ``plan.jobs`` order); keeps the
        personalized model."""
        config, n_train = plan.ins.config, len(self.data.train)
        if len(results) != len(plan.jobs):
            raise ValueError(f"client {self.client_id}: {len(results)} results for {len(plan.jobs)} local fits")
        trained, loss = results[0].arrays, results[0].loss
        if plan.received is None:  # local_only: train the own model, send nothing back
            self.personal = trained
            return FitRes(arrays=None, num_examples=n_train, metrics={TRAIN_LOSS: loss})
        metrics = dict(plan.metrics)
        if "score_split" in config:  # … and the trained local model on it gives the agent's reward
            after = self.score_arrays(trained, str(config["score_split"]))
            metrics[self.family.reply_key("trained", "score")] = after.get(self.family.score, float("nan"))
            metrics[self.family.reply_key("trained", "loss")] = after.get(self.family.loss, float("nan"))
        self.personal = results[1].arrays if len(results) > 1 else trained
        reply = self.reply(trained, n_train, {TRAIN_LOSS: loss, **metrics})
        # client-side DP (``dp_clipping_norm`` in the config): the update against the global model as sent,
        # not the overlaid start; the client's own model stays as trained
        return protect_reply(reply, plan.ins.arrays, config, seed=derive_seed(self.seed, "dp-noise", plan.server_round))

    def score_arrays(self, arrays: Arrays, split: str) -> dict[str, float]:
        """``arrays`` in the working model, scored on the local ``split`` (``val`` or ``test``)."""
        model = self.model
        set_arrays(model, arrays)
        return self.family.evaluate(model, self.score_split(split), self.eval_batch_size)

    # --------------------------------------------------------------------------------- evaluate
    def evaluate(self, ins: EvaluateIns) -> EvaluateRes:
        """The personalized model (``config["model"] == "personal"``, default) or ``ins.arrays`` on the
        local ``config["split"]`` (``test`` by default; ``val`` for a server-side scorer run at the sites)."""
        which = ins.config.get("model", "personal")
        arrays = self.personal if which == "personal" else ins.arrays
        if arrays is None:
            raise ValueError(f"client {self.client_id}: no {which} model to evaluate")
        split = str(ins.config.get("split", "test"))
        return EvaluateRes(num_examples=len(self.score_split(split)), metrics=self.score_arrays(arrays, split))
