"""The AutoML arms (conf/experiment/automl/*): each moves exactly the parameters it claims, when it claims,
draws its architecture batches from the split it claims, and logs the fusion weights after every epoch."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.loggers import Logger

from m3oe_lightning.config import CONF_DIR
from m3oe_lightning.data.datamodule import MDMTDataModule
from m3oe_lightning.models.m3oe import M3oE
from m3oe_lightning.training.module import MDMTModule
from tests.helpers import compose_train
from tests.unit.test_module import ARCH, ArchitectureStepSpy, changed, snapshot, tiny_dataset

EPOCHS, BATCHES = 2, 4  # 256 training rows at batch 64
ARMS = {  # preset: (automl.mode, every, source)
    "paper": ("alternate", "epoch", "train"),
    "joint": ("joint", "epoch", "train"),
    "darts": ("alternate", 1, "val"),
    "frozen": ("frozen", None, None),
    "off": ("off", None, None),
}


class MetricsRecorder(Logger):
    """Every logged metrics dict, in order (a logger without files)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.records.append(dict(metrics))


class FusionTrace(L.Callback):
    """The fusion logits after every training batch, and every ``automl_batch`` source the module asked for."""

    def __init__(self) -> None:
        self.after_batch: list[dict[str, torch.Tensor]] = []
        self.sources: list[str] = []

    def on_train_start(self, trainer, module) -> None:
        datamodule = trainer.datamodule
        original = datamodule.automl_batch

        def spied(source, **kwargs):
            self.sources.append(source)
            return original(source, **kwargs)

        datamodule.automl_batch = spied

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.after_batch.append({n: p.detach().clone() for n, p in module.model.fusion_logits.items()})


def arm_module(tiny_schema, arm: str, fusion_init: float = 1.0) -> MDMTModule:
    mode, every, source = ARMS[arm]
    torch.manual_seed(0)
    model = M3oE(tiny_schema, star_dim=12, bottom_dim=10, expert_dims=[6], tower_dims=[5], num_shared_experts=2,
                 fusion_init=fusion_init)
    settings = {"automl_every": every, "automl_source": source} if every is not None else {}
    return MDMTModule(model, automl_mode=mode, **settings)


def train_arm(tiny_schema, batch_factory, arm: str, fusion_init: float = 1.0):
    module = arm_module(tiny_schema, arm, fusion_init)
    datamodule = MDMTDataModule.from_dataset(tiny_dataset(tiny_schema, batch_factory), batch_size=64)
    trace, spy, recorder = FusionTrace(), ArchitectureStepSpy(), MetricsRecorder()
    before = snapshot(module)
    trainer = L.Trainer(accelerator="cpu", logger=recorder, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, max_epochs=EPOCHS,
                        callbacks=[trace, spy])
    trainer.fit(module, datamodule=datamodule)
    return module, before, trace, spy, recorder


def moved(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_every_arm_preset_composes_to_its_settings(arm):
    mode, every, source = ARMS[arm]
    cfg = compose_train([f"experiment=automl/{arm}"])
    assert cfg.model._target_.endswith(".M3oE") and cfg.logger.tags.arm == arm and cfg.automl.mode == mode
    if every is not None:
        assert (cfg.automl.every, cfg.automl.source) == (every, source)
    paper = (Path(CONF_DIR) / "experiment" / "automl" / "paper.yaml").read_text()
    assert "literal schedule of the M3oE paper" in paper


def test_the_arm_presets_are_the_claimed_ones():
    assert sorted(p.stem for p in (Path(CONF_DIR) / "experiment" / "automl").glob("*.yaml")) == sorted(ARMS)


def test_paper_arm_moves_fusion_only_after_each_epoch_through_the_architecture_optimiser(tiny_schema, batch_factory):
    module, before, trace, spy, _ = train_arm(tiny_schema, batch_factory, "paper")
    model_opt, arch_opt = module.optimizers()
    fusion = {id(p) for p in module.model.fusion_logits.values()}
    assert fusion.isdisjoint(id(p) for g in model_opt.optimizer.param_groups for p in g["params"])
    assert {id(p) for g in arch_opt.optimizer.param_groups for p in g["params"]} == fusion
    initial = {n: before[f"fusion_logits.{n}"] for n in module.model.fusion_logits}
    steps = [initial, *trace.after_batch]
    for k in range(EPOCHS * BATCHES):  # within an epoch fusion stays put; the epoch's last batch ends with the step
        assert moved(steps[k], steps[k + 1]) == ((k + 1) % BATCHES == 0), k
    assert trace.sources == ["train"] * EPOCHS and spy.changed == [ARCH] * EPOCHS


def test_joint_arm_moves_fusion_with_the_model_optimiser_every_step(tiny_schema, batch_factory):
    module, before, trace, spy, _ = train_arm(tiny_schema, batch_factory, "joint")
    model_opt, _ = module.optimizers()
    fusion = {id(p) for p in module.model.fusion_logits.values()}
    assert fusion <= {id(p) for g in model_opt.optimizer.param_groups for p in g["params"]}
    initial = {n: before[f"fusion_logits.{n}"] for n in module.model.fusion_logits}
    steps = [initial, *trace.after_batch]
    assert all(moved(steps[k], steps[k + 1]) for k in range(EPOCHS * BATCHES))  # also before any epoch's step
    assert trace.sources == ["train"] * EPOCHS and spy.changed == [ARCH] * EPOCHS  # the released per-epoch step


def test_darts_arm_takes_an_architecture_step_on_a_validation_batch_after_every_step(tiny_schema, batch_factory):
    module, before, trace, spy, _ = train_arm(tiny_schema, batch_factory, "darts")
    model_opt, _ = module.optimizers()
    fusion = {id(p) for p in module.model.fusion_logits.values()}
    assert fusion.isdisjoint(id(p) for g in model_opt.optimizer.param_groups for p in g["params"])
    assert trace.sources == ["val"] * (EPOCHS * BATCHES)
    assert spy.changed == [ARCH] * (EPOCHS * BATCHES)  # each step: the fusion logits and nothing else
    assert changed(before, module) >= ARCH


@pytest.mark.parametrize(("arm", "init", "weight"), [("frozen", 1.0, 1 / (1 + math.exp(-1.0))),
                                                     ("frozen", -0.4, 1 / (1 + math.exp(0.4))),
                                                     ("off", 1.0, 0.5)])
def test_fixed_arms_never_move_fusion(tiny_schema, batch_factory, arm, init, weight):
    module, before, trace, spy, _ = train_arm(tiny_schema, batch_factory, arm, fusion_init=init)
    assert isinstance(module.optimizers(), LightningOptimizer)  # no architecture optimiser
    assert trace.sources == [] and spy.changed == []
    expected = torch.full((1,), 0.0 if arm == "off" else init)
    assert all(torch.equal(logits[n], expected) for logits in trace.after_batch for n in logits)
    assert all(w == pytest.approx(weight) for w in module.model.architecture_weights().values())
    trained = changed(before, module)
    assert trained and trained.isdisjoint(ARCH)  # the rest of the model trained, the fusion logits did not
    assert all(not p.requires_grad for p in module.model.fusion_logits.values())


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_every_arm_logs_the_fusion_weights_after_every_epoch(tiny_schema, batch_factory, arm):
    module, _, _, _, recorder = train_arm(tiny_schema, batch_factory, arm)
    logged = [r["arch/alpha_d"] for r in recorder.records if "arch/alpha_d" in r]
    assert len(logged) == EPOCHS
    assert logged[-1] == pytest.approx(module.model.architecture_weights()["alpha_d"])
    assert {k for r in recorder.records for k in r if k.startswith("arch/")} == {f"arch/{n}" for n in
                                                                                  module.model.fusion_logits}
