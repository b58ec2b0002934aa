"""The LightningModule: which parameters each AutoML mode touches, and when."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from m3oe_lightning.data.datamodule import MDMTDataModule
from m3oe_lightning.data.schema import EncodedDataset, EncodedSplit
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.models.m3oe import M3oE
from m3oe_lightning.training.module import MDMTModule


def tiny_dataset(schema, batch_factory) -> EncodedDataset:
    splits = [EncodedSplit(**batch_factory(schema, rows, seed=i)) for i, rows in enumerate((256, 96, 96))]
    return EncodedDataset(schema, *splits)


def snapshot(module: MDMTModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.model.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: MDMTModule) -> set[str]:
    return {n for n, p in module.model.named_parameters() if not torch.equal(before[n], p.detach())}


def fit(module: MDMTModule, datamodule: MDMTDataModule, **trainer_kwargs) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, **trainer_kwargs)
    trainer.fit(module, datamodule=datamodule)
    return trainer


class ArchitectureStepSpy(L.Callback):
    """Records which parameters changed during each architecture step."""

    def __init__(self) -> None:
        self.changed: list[set[str]] = []

    def on_train_start(self, trainer, module) -> None:
        original = module.architecture_step

        def spied(seed_offset: int) -> None:
            before = snapshot(module)
            original(seed_offset)
            self.changed.append(changed(before, module))

        module.architecture_step = spied


@pytest.fixture
def setup(tiny_schema, batch_factory):
    def make(mode: str, every="epoch", source="train"):
        torch.manual_seed(0)
        model = M3oE(tiny_schema, star_dim=12, bottom_dim=10, expert_dims=[6], tower_dims=[5], num_shared_experts=2)
        module = MDMTModule(model, automl_mode=mode, automl_every=every, automl_source=source)
        dm = MDMTDataModule.from_dataset(tiny_dataset(tiny_schema, batch_factory), batch_size=64)
        return module, dm
    return make


ARCH = {"fusion_logits.alpha_d", "fusion_logits.alpha_t", "fusion_logits.beta_d", "fusion_logits.beta_t"}


def test_alternate_model_optimizer_never_touches_fusion_and_arch_step_touches_only_fusion(setup):
    module, dm = setup("alternate")
    opt_model, opt_arch = module.configure_optimizers()
    model_ids = {id(p) for g in opt_model.param_groups for p in g["params"]}
    arch_ids = {id(p) for g in opt_arch.param_groups for p in g["params"]}
    assert model_ids.isdisjoint(arch_ids)
    assert arch_ids == {id(p) for p in module.model.architecture_parameters()}
    assert len(model_ids) + len(arch_ids) == len(list(module.model.parameters()))

    spy = ArchitectureStepSpy()
    before = snapshot(module)
    fit(module, dm, max_epochs=2, callbacks=[spy])
    assert len(spy.changed) == 2  # once per epoch (the paper's cadence)
    assert all(step == ARCH for step in spy.changed)
    assert changed(before, module) >= ARCH  # fusion moved (only through the arch steps)


def test_alternate_every_n_steps(setup):
    module, dm = setup("alternate", every=2, source="val")
    spy = ArchitectureStepSpy()
    fit(module, dm, max_epochs=1, callbacks=[spy])
    assert len(spy.changed) == 2  # 4 training batches → steps after batch 2 and 4
    assert all(step == ARCH for step in spy.changed)


def test_joint_mode_trains_fusion_in_the_model_optimizer_too(setup):
    module, dm = setup("joint")
    opt_model, opt_arch = module.configure_optimizers()
    model_ids = {id(p) for g in opt_model.param_groups for p in g["params"]}
    assert {id(p) for p in module.model.architecture_parameters()} <= model_ids
    assert len(model_ids) == len(list(module.model.parameters()))
    fit(module, dm, max_epochs=1, limit_train_batches=1)  # one model step, then the epoch's arch step
    assert module.model.architecture_weights()["alpha_d"] != pytest.approx(0.7310586, abs=1e-7)


def test_off_mode_fixes_every_weight_at_one_half(setup):
    module, dm = setup("off")
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Optimizer)  # no architecture optimiser at all
    fit(module, dm, max_epochs=2)
    assert all(w == 0.5 for w in module.model.architecture_weights().values())


@pytest.mark.parametrize("kwargs", [dict(automl_mode="sometimes"), dict(automl_source="test"),
                                    dict(automl_every=0)])
def test_bad_automl_settings(tiny_schema, kwargs):
    with pytest.raises(UserInputError, match="automl"):
        MDMTModule(M3oE(tiny_schema), **kwargs)


def test_compile_callback_compiles_the_model_in_place_and_training_runs(tiny_schema, batch_factory):
    from m3oe_lightning.training.callbacks import CompileModel

    torch.manual_seed(0)
    module = MDMTModule(M3oE(tiny_schema, star_dim=8, bottom_dim=8, expert_dims=[4], tower_dims=[4]), lr=1e-2)
    keys = set(module.model.state_dict())
    datamodule = MDMTDataModule.from_dataset(tiny_dataset(tiny_schema, batch_factory), batch_size=64)
    before = snapshot(module)
    fit(module, datamodule, max_epochs=1, limit_val_batches=0, callbacks=[CompileModel(backend="eager")])
    assert module.model._compiled_call_impl is not None  # nn.Module.compile: forward goes through dynamo
    assert set(module.model.state_dict()) == keys  # in place: no _orig_mod. prefix in checkpoints
    assert changed(before, module)


def test_validation_and_test_log_the_pooled_metrics_beside_the_mean(setup):
    module, dm = setup("alternate")
    trainer = fit(module, dm, max_epochs=1)
    logged = trainer.callback_metrics
    assert {"val/auc_mean", "val/auc_pooled/click", "val/auc_pooled/like", "val/auc_pooled_mean",
            "val/logloss_pooled/click", "val/logloss_pooled_mean"} <= set(logged)
    trainer.test(module, datamodule=dm, verbose=False)
    results = module.test_results
    assert results["test/auc_pooled_mean"] == pytest.approx(
        (results["test/auc_pooled/click"] + results["test/auc_pooled/like"]) / 2)
    assert results["test/auc_mean"] != results["test/auc_pooled_mean"]  # two different summaries


def test_frozen_mode_keeps_the_initial_fusion_weights_and_has_no_architecture_optimiser(setup):
    module, dm = setup("frozen")
    assert isinstance(module.configure_optimizers(), torch.optim.Optimizer)
    fit(module, dm, max_epochs=1)
    assert all(w == pytest.approx(0.7310586) for w in module.model.architecture_weights().values())
