"""Many small local fits as one vectorised SGD run: a round of 100 tiny clients at the cost of one.

PAGE's Synthetic setting trains 100 clients' 30×30 linear classifiers per round, each up to 20 epochs of
5-row batches: 84,000 optimiser steps a round, each far too small to keep a core busy (about 1 ms a step
through a ``Trainer``: six hours for 300 rounds of FedAvg). The clients' fits are independent, so this
runs them side by side: their parameters stacked along a leading job axis, the model called on each job's
own batch with ``torch.func.vmap`` over ``functional_call``, and one step moving every job at once.

Each job keeps exactly the semantics of ``ClassifierModule`` trained by a fresh ``Trainer`` (the reference
path; a test holds the two together): its own start, learning rate, epoch count and batch order
(``epoch_permutation(n, seed, epoch)``, the datamodule's), the mean loss over its batch's rows, the
proximal term ``coefficient/2·‖w − reference‖²`` (FedProx, Ditto), the gradient's L2 norm clipped per job
as ``torch.nn.utils.clip_grad_norm_`` does, then plain SGD with weight decay (``torch.optim.SGD``'s update).
Jobs with fewer steps stop moving when theirs are done (the jobs are sorted by length, so the active ones
are a prefix of the stack and a finished job costs nothing). Only SGD is offered: per-job Adam state would
be a second optimiser to keep in step with PyTorch's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.func import functional_call, vmap

from m3oe_lightning.data.datamodule import epoch_permutation
from m3oe_lightning.data.schema import Batch, EncodedSplit

RowLoss = Callable[[torch.Tensor, Batch], torch.Tensor]  # (logits [J, B, ...], batch [J, B, ...]) -> [J, B]


class LocalJob(Protocol):
    """One local fit (the federated client's ``LocalFit``): from ``start`` (a state dict), ``epochs`` over
    ``split`` at ``lr``, batch order from ``seed``; ``reference`` / ``coefficient``: the proximal term
    (``None`` / 0: none)."""

    @property
    def start(self) -> Mapping[str, torch.Tensor]: ...
    @property
    def epochs(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def split(self) -> EncodedSplit: ...
    @property
    def reference(self) -> Mapping[str, torch.Tensor] | None: ...
    @property
    def coefficient(self) -> float: ...


@dataclass(frozen=True)
class LocalResult:
    """A local fit's trained state dict and its last epoch's mean training loss (without the proximal term;
    NaN when it ran no step)."""

    arrays: dict[str, torch.Tensor]
    loss: float


class CohortSGD:
    """Runs many jobs of one model architecture as one stacked SGD run.

    Args:
        template: the architecture (its weights are not used); its forward must be a function of its
            parameters and the batch (no buffers that training updates, no randomness).
        row_loss: per-row losses of a job-stacked batch (``[J, B]``).
        batch_size: rows per step (the last batch of an epoch is smaller, as the datamodule's).
        weight_decay / clip_grad_norm: SGD's weight decay; clip each job's gradient to this L2 norm (``None``: no clip).
    """

    def __init__(self, template: nn.Module, row_loss: RowLoss, *, batch_size: int, weight_decay: float = 0.0,
                 clip_grad_norm: float | None = None) -> None:
        self.template = template
        self.row_loss = row_loss
        self.batch_size = int(batch_size)
        self.weight_decay = float(weight_decay)
        self.clip_grad_norm = None if clip_grad_norm is None else float(clip_grad_norm)
        self.names = [name for name, p in template.named_parameters() if p.requires_grad]
        self.seconds = 0.0  # time inside the stacked SGD steps, over every ``train`` call (the bench reads it)
        self._forward = vmap(lambda params, batch: functional_call(template, params, (batch,)))

    # --------------------------------------------------------------------------------------- plan
    def _order(self, job: LocalJob) -> tuple[torch.Tensor, torch.Tensor]:
        """The job's rows step by step (``[steps, B]``, padded with row 0) and each row's weight in its step's
        mean (``1/rows in the batch``, 0 for padding)."""
        n, size = len(job.split), self.batch_size
        per_epoch = -(-n // size)
        index = torch.zeros(job.epochs, per_epoch * size, dtype=torch.long)
        for epoch in range(job.epochs):
            index[epoch, :n] = epoch_permutation(n, job.seed, epoch)
        rows = torch.full((per_epoch,), float(size))
        rows[-1] = n - (per_epoch - 1) * size
        valid = torch.arange(per_epoch * size).view(per_epoch, size) < n
        weight = (valid / rows.unsqueeze(1)).repeat(job.epochs, 1)
        return index.view(job.epochs * per_epoch, size), weight

    @staticmethod
    def _stack_rows(splits: Sequence[EncodedSplit]) -> Batch:
        """Every job's training rows, padded to the longest and stacked: each field ``[J, n_max, ...]``."""
        tables = [split.rows(slice(0, len(split))) for split in splits]
        longest = max(len(split) for split in splits)
        stacked: Batch = {}
        for name in tables[0]:
            padded = [torch.nn.functional.pad(t[name], (0, 0) * (t[name].dim() - 1) + (0, longest - len(t[name])))
                      for t in tables]
            stacked[name] = torch.stack(padded)
        return stacked

    # ---------------------------------------------------------------------------------------- run
    def train(self, jobs: Sequence[LocalJob]) -> list[LocalResult]:
        """Run ``jobs`` side by side; results in ``jobs`` order."""
        if not jobs:
            return []
        orders = [self._order(job) for job in jobs]
        steps = [len(index) for index, _ in orders]
        rank = sorted(range(len(jobs)), key=lambda j: -steps[j])  # longest first: the active jobs are a prefix
        jobs_sorted = [jobs[j] for j in rank]
        total = steps[rank[0]]
        size = self.batch_size
        index = torch.zeros(total, len(jobs), size, dtype=torch.long)
        weight = torch.zeros(total, len(jobs), size)
        for slot, j in enumerate(rank):
            index[: steps[j], slot], weight[: steps[j], slot] = orders[j]
        active = torch.tensor([sum(steps[j] > t for j in rank) for t in range(total)]).tolist()
        last_epoch_from = torch.tensor([steps[j] - steps[j] // max(jobs[j].epochs, 1) for j in rank])

        data = self._stack_rows([job.split for job in jobs_sorted])
        params = {name: torch.stack([job.start[name].detach().float() for job in jobs_sorted]) for name in self.names}
        lr = torch.tensor([job.lr for job in jobs_sorted])
        coefficient = torch.tensor([job.coefficient if job.reference is not None else 0.0 for job in jobs_sorted])
        reference = {name: torch.stack([(job.reference or job.start)[name].detach().float() for job in jobs_sorted])
                     for name in self.names}
        loss_sum = torch.zeros(len(jobs))
        loss_rows = torch.zeros(len(jobs))
        started = time.perf_counter()
        for t in range(total):
            a = active[t]
            rows = index[t, :a]
            take = torch.arange(a).unsqueeze(1)
            batch = {name: field[take, rows] for name, field in data.items()}
            leaves = {name: p[:a].detach().requires_grad_(True) for name, p in params.items()}
            row_losses = self.row_loss(self._forward(leaves, batch), batch)
            per_job = (row_losses * weight[t, :a]).sum(1)
            objective = per_job.sum()
            pulled = coefficient[:a] > 0
            if bool(pulled.any()):
                objective = objective + sum(
                    (0.5 * coefficient[:a] * (leaves[name] - reference[name][:a]).pow(2).flatten(1).sum(1)).sum()
                    for name in self.names)
            grads = torch.autograd.grad(objective, [leaves[name] for name in self.names])
            with torch.no_grad():
                if self.clip_grad_norm is not None:
                    norm = torch.stack([g.pow(2).flatten(1).sum(1) for g in grads]).sum(0).sqrt()
                    scale = (self.clip_grad_norm / (norm + 1e-6)).clamp(max=1.0)
                else:
                    scale = torch.ones(a)
                for name, grad in zip(self.names, grads):
                    shape = (a,) + (1,) * (grad.dim() - 1)
                    p = params[name][:a]
                    step = grad * scale.view(shape) + self.weight_decay * p
                    p.sub_(lr[:a].view(shape) * step)
                counted = (torch.full((a,), float(t)) >= last_epoch_from[:a]).float()
                rows_in_step = (weight[t, :a] > 0).sum(1).float()
                loss_sum[:a] += counted * per_job.detach() * rows_in_step
                loss_rows[:a] += counted * rows_in_step
        self.seconds += time.perf_counter() - started
        results: list[LocalResult | None] = [None] * len(jobs)
        for slot, j in enumerate(rank):
            arrays = {name: value.detach().clone() for name, value in jobs[j].start.items()}
            for name in self.names:
                arrays[name] = params[name][slot].clone().to(arrays[name].dtype)
            loss = float(loss_sum[slot] / loss_rows[slot]) if loss_rows[slot] > 0 else float("nan")
            results[j] = LocalResult(arrays=arrays, loss=loss)
        return [r for r in results if r is not None]
