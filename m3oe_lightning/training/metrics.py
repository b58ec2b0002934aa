"""Per-(domain, task) AUC and logloss as one torchmetrics ``Metric``.

The metric keeps the logits, labels and domain ids of a whole evaluation pass (``cat`` states, so DDP
ranks are gathered exactly) and computes every group at the end: no per-step host sync, and one
update call per batch instead of one per group. A group whose labels hold a single class has no AUC:
it is left out of the mean and not reported (never 0.0 or 0.5; docs/design.md, "Single-class groups").

Beside the per-group mean (the paper's "Overall", the selection metric) each task also gets an AUC and a
logloss over the rows of every domain pooled together, as the Scenario-Wise-Rec benchmark reports them.
The two answer different questions: the mean weighs every domain alike, the pooled value weighs every row
alike and also credits a model for ranking one domain's rows against another's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities import dim_zero_cat

from m3oe_lightning import metric_keys as keys


def grouped_bce_loss(logits: torch.Tensor, labels: torch.Tensor, domain: torch.Tensor,
                     num_domains: int) -> torch.Tensor:
    """Σ over (domain, task) of the BCE mean over that domain's rows (paper Eq. 12).

    Domains without rows in the batch contribute nothing (the released code would give NaN).
    """
    per_element = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # [B, T]
    sums = per_element.new_zeros(num_domains, logits.shape[1]).index_add_(0, domain, per_element)
    counts = torch.bincount(domain, minlength=num_domains).to(per_element.dtype)
    present = counts > 0
    return (sums[present] / counts[present].unsqueeze(1)).sum()


def _auc_if_defined(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """AUROC of one column, or ``None`` when its labels hold one class (or no row): such a column has no AUC."""
    positives = float(labels.sum())
    if not 0.0 < positives < labels.numel():
        return None
    return binary_auroc(torch.sigmoid(logits), labels.long())


def _mean_or_nan(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(values).mean() if values else torch.tensor(math.nan)


class DomainTaskMetrics(Metric):
    """AUROC and logloss for every (domain, task) group and their means over groups; per task, the same two
    over all domains' rows pooled, and the pooled values' mean over tasks."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, domains: tuple[str, ...], tasks: tuple[str, ...]) -> None:
        super().__init__()
        self.domains = tuple(domains)
        self.tasks = tuple(tasks)
        self.add_state("logits", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("domain", default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, labels: torch.Tensor, domain: torch.Tensor) -> None:  # type: ignore[override]
        self.logits.append(logits.detach().float())
        self.labels.append(labels.detach().float())
        self.domain.append(domain.detach())

    def compute(self) -> dict[str, torch.Tensor]:
        """Keys ``auc/{domain}/{task}``, ``logloss/{domain}/{task}``, ``auc_mean``, ``logloss_mean``,
        ``auc_pooled/{task}``, ``logloss_pooled/{task}``, ``auc_pooled_mean`` and ``logloss_pooled_mean``."""
        if isinstance(self.logits, list) and not self.logits:  # a tensor after a DDP sync
            return {}
        logits, labels, domain = (dim_zero_cat(s) for s in (self.logits, self.labels, self.domain))
        out: dict[str, torch.Tensor] = {}
        aucs: list[torch.Tensor] = []
        loglosses: list[torch.Tensor] = []
        for d, domain_name in enumerate(self.domains):
            rows = domain == d
            if not bool(rows.any()):
                continue
            for t, task_name in enumerate(self.tasks):
                z, y = logits[rows, t], labels[rows, t]
                logloss = F.binary_cross_entropy_with_logits(z, y)
                out[keys.group(keys.LOGLOSS, domain_name, task_name)] = logloss
                loglosses.append(logloss)
                auc = _auc_if_defined(z, y)
                if auc is not None:
                    out[keys.group(keys.AUC, domain_name, task_name)] = auc
                    aucs.append(auc)
        out[keys.AUC_MEAN] = _mean_or_nan(aucs)
        out[keys.LOGLOSS_MEAN] = _mean_or_nan(loglosses)
        out.update(self._pooled(logits, labels))
        return out

    def _pooled(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per task over every row whatever its domain; a task whose pooled labels hold one class has no AUC."""
        out: dict[str, torch.Tensor] = {}
        aucs: list[torch.Tensor] = []
        loglosses: list[torch.Tensor] = []
        for t, task_name in enumerate(self.tasks):
            z, y = logits[:, t], labels[:, t]
            logloss = F.binary_cross_entropy_with_logits(z, y)
            out[keys.pooled(keys.LOGLOSS_POOLED, task_name)] = logloss
            loglosses.append(logloss)
            auc = _auc_if_defined(z, y)
            if auc is not None:
                out[keys.pooled(keys.AUC_POOLED, task_name)] = auc
                aucs.append(auc)
        out[keys.AUC_POOLED_MEAN] = _mean_or_nan(aucs)
        out[keys.LOGLOSS_POOLED_MEAN] = _mean_or_nan(loglosses)
        return out
