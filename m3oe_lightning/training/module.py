"""``MDMTModule``: the one LightningModule for every model (docs/design.md, property 2).

It owns the loss (Σ over (domain, task) of the per-domain BCE mean), the per-(domain, task) metrics,
the model optimiser and the AutoML step that tunes a model's architecture (fusion) parameters.
Optimisation is manual because the AutoML step is a second optimiser on a different schedule
(Lightning 2.x supports several optimisers only under manual optimisation).

AutoML modes (``automl.mode``; docs/m3oe.md, Decisions 2–3):

* ``alternate`` (paper): the model optimiser never holds architecture parameters; a second Adam
  updates only them, every ``automl.every`` (``epoch`` = once after each epoch, or every N steps), on
  one batch from ``automl.source`` (``train`` as the paper, or ``val`` as DARTS).
* ``joint`` (released code's effective behaviour): architecture parameters are also in the model
  optimiser (model lr, every step); the separate step still runs.
* ``frozen`` (control): architecture logits stay at the model's initial value (M3oE ``fusion_init``,
  sigmoid(1) = 0.731), trained by no optimiser. Beside ``off`` it separates "the weights were tuned"
  from "the weights are not 0.5": the paper's schedule barely moves them, so ``alternate`` vs ``off``
  alone compares 0.731 with 0.5.
* ``off`` ("w/o AutoML" ablation): architecture logits fixed at 0, i.e. every weight is 0.5.

First-order DARTS is ``alternate`` with ``every: 1`` and ``source: val``. Every mode logs the fusion
weights (``arch/*``) after each training epoch, so the arms' trajectories can be compared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import lightning as L
import torch
from torch import nn

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.data.schema import Batch
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.models.base import MDMTModel, forward_in_chunks
from m3oe_lightning.training.callbacks import RUNNING_LOSS
from m3oe_lightning.training.metrics import DomainTaskMetrics, grouped_bce_loss
from m3oe_lightning.training.precision import CastForward

AutoMLMode = Literal["alternate", "joint", "frozen", "off"]
AUTOML_MODES: tuple[str, ...] = ("alternate", "joint", "frozen", "off")
FIXED_MODES: tuple[str, ...] = ("frozen", "off")  # architecture parameters trained by no optimiser


class MDMTModule(L.LightningModule):
    """Training system around any :class:`MDMTModel`.

    Args:
        model: the network (built from the data's schema).
        lr / weight_decay: Adam settings of the model optimiser.
        automl_mode: ``alternate`` | ``joint`` | ``frozen`` | ``off`` (see module docstring).
        automl_every: ``"epoch"`` or a number of training steps between architecture steps.
        automl_source: ``train`` or ``val``: where the architecture step's batch comes from.
        automl_lr / automl_weight_decay: Adam settings of the architecture optimiser.
    """

    def __init__(
        self,
        model: MDMTModel,
        *,
        lr: float = 1e-2,
        weight_decay: float = 1e-5,
        automl_mode: AutoMLMode = "alternate",
        automl_every: str | int = "epoch",
        automl_source: Literal["train", "val"] = "train",
        automl_lr: float = 1e-3,
        automl_weight_decay: float = 1e-5,
    ) -> None:
        super().__init__()
        if model.task_family != "recommendation":
            raise UserInputError(f"model {type(model).__name__} is a {model.task_family} model; m3oe-train fits "
                                 f"recommenders: federate it with python -m m3oe_lightning.federate "
                                 f"(experiment=federated/page_synthetic)")
        if automl_mode is False:  # YAML 1.1 reads a bare `mode: off` as false
            automl_mode = "off"
        if automl_mode not in AUTOML_MODES:
            raise UserInputError(f"automl.mode={automl_mode!r}: use {', '.join(AUTOML_MODES[:-1])} or off")
        if automl_source not in ("train", "val"):
            raise UserInputError(f"automl.source={automl_source!r}: use train or val")
        if automl_every != "epoch" and (not isinstance(automl_every, int) or automl_every < 1):
            raise UserInputError(f"automl.every={automl_every!r}: use 'epoch' or a positive number of steps")
        self.save_hyperparameters(ignore=["model"], logger=False)  # in checkpoints (plain values: weights_only);
        # not logged again: the run logs the whole resolved config once (optimizer.lr, not also lr)
        self.automatic_optimization = False
        self.model = model
        self.arch_params = model.architecture_parameters()
        if automl_mode in FIXED_MODES:
            with torch.no_grad():
                for p in self.arch_params:
                    if automl_mode == "off":
                        p.zero_()  # sigmoid(0) = 0.5; frozen keeps the model's initial value
                    p.requires_grad_(False)
        domains, tasks = model.schema.domains, model.schema.tasks
        self.val_metrics = DomainTaskMetrics(domains, tasks)
        self.test_metrics = DomainTaskMetrics(domains, tasks)
        self.test_results: dict[str, float] = {}
        # Optional term added to the training loss (not to the AutoML step's): a plain callable of the
        # model, e.g. FedProx's proximal term or Ditto's regulariser. Not a hyper-parameter, not saved;
        # ``train/loss`` stays the data loss.
        self.extra_loss: Callable[[nn.Module], torch.Tensor] | None = None
        # the model's forward on bf16 copies of its fp32 weights (trainer.precision=bf16-true), or None: the model
        self.cast_forward: CastForward | None = None

    # ------------------------------------------------------------------------------------ helpers
    @property
    def uses_architecture_step(self) -> bool:
        return self.hparams.automl_mode not in FIXED_MODES and bool(self.arch_params)

    def use_compute_dtype(self, dtype: torch.dtype) -> None:
        """Compute every forward and backward in ``dtype``, the weights and the optimisers' states staying
        fp32 (the hook of :class:`~m3oe_lightning.training.precision.MasterWeightsPrecision`)."""
        self.cast_forward = None if dtype == torch.float32 else CastForward(self.model, dtype)

    @property
    def logits_of(self) -> Callable[[Batch], torch.Tensor]:
        return self.model if self.cast_forward is None else self.cast_forward

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.logits_of(batch)

    def _loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits_of(batch)
        return grouped_bce_loss(logits, batch["labels"], batch["domain"], self.model.num_domains), logits

    def _optimizers(self) -> tuple[Any, Any | None]:
        opts = self.optimizers()
        if isinstance(opts, list):
            return opts[0], opts[1]
        return opts, None

    # ----------------------------------------------------------------------------------- training
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        model_opt, _ = self._optimizers()
        loss, _ = self._loss(batch)
        objective = loss if self.extra_loss is None else loss + self.extra_loss(self.model)
        model_opt.zero_grad()
        self.manual_backward(objective)
        model_opt.step()
        self.log(keys.key("train", keys.LOSS), loss.detach(), on_step=False, on_epoch=True,
                 batch_size=batch["domain"].shape[0])
        if self._trainer is not None and self.trainer.progress_bar_callback is not None:
            self.log(RUNNING_LOSS, loss.detach(), on_step=True, on_epoch=False, logger=False, prog_bar=True)
        if self.uses_architecture_step and self._architecture_step_due(batch_idx):
            self.architecture_step(seed_offset=batch_idx)
        return loss.detach()

    def _architecture_step_due(self, batch_idx: int) -> bool:
        """After the epoch's last batch (``every: epoch``) or every N batches.

        The per-epoch step runs inside the last training step rather than in ``on_train_epoch_end``:
        Lightning validates and checkpoints before that hook, so a resumed run would miss the step.
        """
        every = self.hparams.automl_every
        if every == "epoch":
            return batch_idx + 1 == self.trainer.num_training_batches
        return (batch_idx + 1) % int(every) == 0

    def on_train_epoch_end(self) -> None:
        """The fusion weights after each epoch, for every mode (a fixed arm's flat line is the control)."""
        if self.arch_params:
            self.log_dict({f"arch/{k}": v for k, v in self.model.architecture_weights().items()})

    def architecture_step(self, seed_offset: int) -> None:
        """One first-order step of the architecture optimiser on one batch, every other weight frozen."""
        _, arch_opt = self._optimizers()
        datamodule = self.trainer.datamodule
        batch = datamodule.automl_batch(self.hparams.automl_source, epoch=self.current_epoch, offset=seed_offset)
        batch = self.transfer_batch_to_device(batch, self.device, 0)
        with self.toggled_optimizer(arch_opt):
            loss, _ = self._loss(batch)
            arch_opt.zero_grad()
            self.manual_backward(loss)
            if self.trainer.world_size > 1:  # not run through the DDP wrapper: average by hand
                for p in self.arch_params:
                    if p.grad is not None:
                        p.grad = self.trainer.strategy.reduce(p.grad, reduce_op="mean")
            arch_opt.step()

    # --------------------------------------------------------------------------------- evaluation
    def _eval_step(self, batch: Batch, stage: str, metrics: DomainTaskMetrics) -> None:
        logits = forward_in_chunks(self.logits_of, batch)
        loss = grouped_bce_loss(logits, batch["labels"], batch["domain"], self.model.num_domains)
        metrics.update(logits, batch["labels"], batch["domain"])
        self.log(keys.key(stage, keys.LOSS), loss, on_step=False, on_epoch=True, batch_size=batch["domain"].shape[0],
                 sync_dist=self.trainer.world_size > 1)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def _log_metrics(self, stage: str, metrics: DomainTaskMetrics) -> dict[str, float]:
        computed = metrics.compute()
        metrics.reset()
        mean = computed.get(keys.AUC_MEAN)
        if mean is not None and bool(torch.isnan(mean)) and not self.trainer.sanity_checking:
            # no group has both label classes: an AUC-selected checkpoint would be chosen on nothing, and a
            # search would optimise the callback's -inf sentinel
            raise UserInputError(f"no (domain, task) group of the {stage} split has both label classes, so it "
                                 f"has no AUC; check the data's labels (or data.split_fractions for a larger split)")
        values = {keys.key(stage, k): v for k, v in computed.items()}
        self.log_dict(values)
        return {k: float(v) for k, v in values.items()}

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self.test_results = self._log_metrics("test", self.test_metrics)

    # --------------------------------------------------------------------------------- optimisers
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        arch_ids = {id(p) for p in self.arch_params}
        if hp.automl_mode == "joint":
            model_params = [p for p in self.model.parameters() if p.requires_grad]
        else:
            model_params = [p for p in self.model.parameters() if id(p) not in arch_ids]
        model_opt = torch.optim.Adam(model_params, lr=hp.lr, weight_decay=hp.weight_decay)
        if not self.uses_architecture_step:
            return model_opt
        arch_opt = torch.optim.Adam(self.arch_params, lr=hp.automl_lr, weight_decay=hp.automl_weight_decay)
        return [model_opt, arch_opt]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
