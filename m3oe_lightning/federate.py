"""Entry point: ``python -m m3oe_lightning.federate [hydra overrides]`` (console script ``m3oe-federate``).

Thin on purpose (docs/design.md, property 4): compose the ``federate`` config (Hydra) → build the
simulation (data, partition, clients, strategy; every settings check) → one tracked MLflow run whose
metrics are the per-round federated metrics (MLflow step = round). Resume, checkpoints and the round
log: :mod:`m3oe_lightning.tracking.federation`.
"""

from __future__ import annotations

import functools

import hydra
from omegaconf import DictConfig

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.config import CONF_DIR, exits_on_interrupt, report_user_errors
from m3oe_lightning.federated.labels import SERVER_STATE, algorithm_label

# torch, Lightning, Flower and MLflow are imported inside federate(): `--help` answers without them

__all__ = ["SERVER_STATE", "algorithm_label", "federate", "main"]


def federate(cfg: DictConfig) -> dict[str, float]:
    """Build, run and log one federated run; returns the last round's metrics."""
    from m3oe_lightning.federated.factory import build_federated
    from m3oe_lightning.tracking.federation import run_federation

    return run_federation(cfg, functools.partial(build_federated, cfg))


@exits_on_interrupt
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="federate")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry; returns the last round's global score (personal for ``local``): AUC, or a classifier's
    accuracy."""
    metrics = report_user_errors(federate, cfg)
    for score in (keys.AUC_MEAN, keys.ACCURACY):
        for scope in (keys.GLOBAL, keys.PERSONAL):
            if keys.key(scope, score) in metrics:
                return metrics[keys.key(scope, score)]
    return None


if __name__ == "__main__":
    main()
