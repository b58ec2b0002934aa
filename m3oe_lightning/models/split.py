"""Train-separately wrapper: the M3oE paper's "-MTL", "-MDL" and per-(domain, task) "MLP" rows
(Zhang et al., SIGIR'24, §3.2: "-MTL" runs a model D times, once per domain; "-MDL" T times, once per
task; the MLP baseline is trained per domain and per task).

:class:`SplitByGroup` builds one independent sub-model per group from a factory ``base(schema)``, each
on the group's sub-schema (one domain and/or one task), and routes rows so the rest of the system sees
one :class:`MDMTModel` with the usual interface:

* ``split="domain"`` (-MTL): sub-model d sees only domain d's rows (its schema has one domain; its
  rows carry domain id 0) and predicts all T tasks;
* ``split="task"`` (-MDL): sub-model t sees every row and predicts task t only (its schema has one
  task); the T outputs are concatenated to ``[B, T]``;
* ``split="domain_task"``: one sub-model per (domain, task) pair.

The training loss is a sum over (domain, task) groups, so each sub-model's gradient comes only from its
own group's rows and its own task: training the wrapped model trains the sub-models independently
(they share only the batch schedule and the epoch count).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from m3oe_lightning.data.schema import Batch, FeatureSchema
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.models.base import MDMTModel, RoutedModel
from m3oe_lightning.models.layers import DomainRouting

Split = Literal["domain", "task", "domain_task"]
SPLITS = ("domain", "task", "domain_task")


class SplitByGroup(RoutedModel):
    """One independent ``base`` model per domain, per task, or per (domain, task).

    Args:
        schema: features, domains and tasks of the data.
        base: builds a sub-model from a schema (a class, or a ``functools.partial`` of one, e.g. from a
            Hydra node with ``_partial_: true``).
        split: ``domain`` (-MTL) | ``task`` (-MDL) | ``domain_task`` (the MLP row).
    """

    def __init__(self, schema: FeatureSchema, *, base: Callable[..., MDMTModel], split: Split = "domain") -> None:
        super().__init__(schema)
        if split not in SPLITS:
            raise UserInputError(f"model.split={split!r}: use domain (-MTL), task (-MDL) or domain_task")
        if not callable(base):
            raise UserInputError(f"model.base={base!r} is not a model factory: give a node with _target_ and "
                                 "_partial_: true")
        self.split = split
        self.by_domain = split in ("domain", "domain_task")
        self.by_task = split in ("task", "domain_task")
        domain_groups = [(name,) for name in schema.domains] if self.by_domain else [schema.domains]
        task_groups = [(name,) for name in schema.tasks] if self.by_task else [schema.tasks]
        self.group_names: list[str] = []
        models = []
        for domains in domain_groups:
            for tasks in task_groups:
                sub_schema = dataclasses.replace(schema, domains=tuple(domains), tasks=tuple(tasks))
                model = base(schema=sub_schema)
                if not isinstance(model, MDMTModel):
                    raise UserInputError(f"model.base built a {type(model).__name__}, not an MDMTModel")
                models.append(model)
                self.group_names.append("/".join(
                    ([domains[0]] if self.by_domain else []) + ([tasks[0]] if self.by_task else [])))
        self.models = nn.ModuleList(models)
        self.tasks_per_domain = len(task_groups)

    # ----------------------------------------------------------------------------------- interface
    def architecture_parameters(self) -> list[nn.Parameter]:
        return [p for model in self.models for p in model.architecture_parameters()]

    def architecture_weights(self) -> dict[str, float]:
        return {f"{group}/{name}": value for group, model in zip(self.group_names, self.models)
                for name, value in model.architecture_weights().items()}

    # ------------------------------------------------------------------------------------ forward
    @staticmethod
    def _run(model: MDMTModel, batch: Batch, route: DomainRouting) -> torch.Tensor:
        """A sub-model the way the wrapper runs: its ``forward``, or its export formulation when exporting."""
        if route.every_domain:
            return model.export_forward(batch["sparse"], batch["dense"], batch["domain"])
        return model(batch)

    def _tasks(self, models: list[MDMTModel], batch: Batch, route: DomainRouting) -> torch.Tensor:
        """Every task group's sub-model on ``batch``, concatenated to ``[B, T]``."""
        if not self.by_task:
            return self._run(models[0], batch, route)
        outs = []
        for t, model in enumerate(models):
            sub = dict(batch)
            if "labels" in sub:  # the sub-model's one task (models do not read labels; kept consistent)
                sub["labels"] = sub["labels"][:, t:t + 1]
            outs.append(self._run(model, sub, route))
        return torch.cat(outs, dim=1)

    def routed_forward(self, batch: Batch, route: DomainRouting) -> torch.Tensor:
        models = list(self.models)
        per = self.tasks_per_domain
        if not self.by_domain:
            return self._tasks(models, batch, route)
        rows_sorted = {key: route.sort(value) for key, value in batch.items()}
        outs = []
        for d, rows in route.slices():
            sub = {key: value[rows] for key, value in rows_sorted.items()}
            sub["domain"] = torch.zeros_like(sub["domain"])  # the sub-model's schema has one domain
            outs.append(self._tasks(models[d * per:(d + 1) * per], sub, route))
        return route.unsort(route.combine(outs))
