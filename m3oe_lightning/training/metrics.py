"""Per-(domain, task) AUC and logloss as one torchmetrics ``Metric``.

The metric keeps the logits, labels and domain ids of a whole evaluation pass (``cat`` states, so DDP
ranks are gathered exactly) and computes every group at the end: no per-step host sync, and one
update call per batch instead of one per group. A group whose labels hold a single class has no AUC:
it is left out of the mean and not reported (never 0.0 or 0.5; docs/design.md, "Single-class groups").
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


class DomainTaskMetrics(Metric):
    """AUROC and logloss for every (domain, task) group, plus their means over groups."""

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
        """Keys ``auc/{domain}/{task}``, ``logloss/{domain}/{task}``, ``auc_mean``, ``logloss_mean``."""
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
                positives = float(y.sum())
                if 0.0 < positives < y.numel():  # both classes present
                    auc = binary_auroc(torch.sigmoid(z), y.long())
                    out[keys.group(keys.AUC, domain_name, task_name)] = auc
                    aucs.append(auc)
        out[keys.AUC_MEAN] = torch.stack(aucs).mean() if aucs else torch.tensor(math.nan)
        out[keys.LOGLOSS_MEAN] = torch.stack(loglosses).mean()
        return out
