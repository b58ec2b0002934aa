"""m3oe-lightning: multi-domain multi-task recommendation (M3oE and baselines) on Lightning + Hydra + MLflow."""

__version__ = "0.1.0"
