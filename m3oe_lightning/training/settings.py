"""The settings checks of a training run, light to import: they run before torch and Lightning load."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from m3oe_lightning.errors import UserInputError, check_int, check_number
from m3oe_lightning.training.allocator import DEFAULT_ALLOCATOR, check_allocator


def validate(cfg: DictConfig) -> None:
    """Settings checks that must fail before anything is read, trained or opened in MLflow."""
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise UserInputError(f"seed={cfg.seed!r} is not an integer; pass e.g. seed=2022")
    check_int("threads", cfg.threads, optional=True)
    check_allocator(cfg.get("allocator", DEFAULT_ALLOCATOR))
    check_int("eval_chunk_rows", cfg.get("eval_chunk_rows"), optional=True)
    for name in ("optimizer.lr", "automl.lr"):
        check_number(name, OmegaConf.select(cfg, name), low=0, low_open=True)
    for name in ("optimizer.weight_decay", "automl.weight_decay"):
        check_number(name, OmegaConf.select(cfg, name), low=0)
    trainer = cfg.get("trainer") or {}
    zero = (trainer.get("max_epochs") == 0 or trainer.get("max_steps") == 0
            or trainer.get("limit_train_batches") in (0, 0.0))
    if zero:
        raise UserInputError("the trainer would train zero steps (trainer.max_epochs, max_steps or "
                             "limit_train_batches is 0): a run's test metrics would be those of an untrained model; "
                             "use trainer.max_epochs >= 1")
    precision = str(trainer.get("precision", "32-true"))
    if precision.endswith("-true") and precision not in ("32-true", "bf16-true") or precision == "64":  # 64-true
        raise UserInputError(f"trainer.precision={precision}: the models keep float32 weights; use 32-true, "
                             "bf16-true (bf16 compute, fp32 master weights) or bf16-mixed (bf16 autocast)")
    for name in ("task_name", "logger.run_name", "logger.experiment_name"):
        value = OmegaConf.select(cfg, name)
        if value is not None and ("/" in str(value) or "\\" in str(value) or str(value) in (".", "..")):
            raise UserInputError(f"{name}={value!r}: it becomes a folder name; use a name without path separators")
