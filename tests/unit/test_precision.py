"""``trainer.precision=bf16-true``: bf16 compute on fp32 master weights (training/precision.py)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from m3oe_lightning.config import compose
from m3oe_lightning.data.datamodule import MDMTDataModule
from m3oe_lightning.models.m3oe import M3oE
from m3oe_lightning.training.module import MDMTModule
from m3oe_lightning.training.precision import CastForward, MasterWeightsPrecision, cast_batch, trainer_precision
from tests.unit.test_models import MODELS, build_case
from tests.unit.test_module import tiny_dataset

MODEL_CASES = [f"model={name}" for name in MODELS]


@pytest.mark.parametrize("case", MODEL_CASES)
def test_every_model_computes_in_bf16_and_its_gradients_land_in_fp32(case, tiny_schema, batch_factory):
    torch.manual_seed(0)
    model = build_case(case, tiny_schema).train()
    batch = batch_factory(tiny_schema, 128, seed=3)
    torch.manual_seed(1)  # the same dropout masks for both forwards
    reference = model(batch)
    torch.manual_seed(1)
    logits = CastForward(model, torch.bfloat16)(batch)
    assert logits.dtype == torch.float32 and logits.shape == reference.shape
    assert not torch.equal(logits, reference)  # it really computed in bf16 ...
    torch.testing.assert_close(logits, reference, atol=0.06, rtol=0.05)  # ... to bf16's precision
    logits.sum().backward()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_a_bf16_true_fit_keeps_fp32_weights_and_optimiser_states_and_learns(tiny_schema, batch_factory):
    datamodule = MDMTDataModule.from_dataset(tiny_dataset(tiny_schema, batch_factory), batch_size=64)
    modules = {}
    for precision in ("32-true", "bf16-true"):
        torch.manual_seed(0)
        model = M3oE(tiny_schema, star_dim=12, bottom_dim=10, expert_dims=[6], tower_dims=[5], num_shared_experts=2)
        module = MDMTModule(model, lr=1e-2)
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, max_epochs=3,
                            **trainer_precision(compose("train", [f"trainer.precision={precision}"]).trainer))
        trainer.fit(module, datamodule=datamodule)
        modules[precision] = (trainer, module)
    trainer, module = modules["bf16-true"]
    assert isinstance(trainer.precision_plugin, MasterWeightsPrecision) and trainer.precision == "bf16-true"
    assert module.cast_forward is not None and modules["32-true"][1].cast_forward is None
    assert all(p.dtype == torch.float32 for p in module.parameters())
    states = [v for opt in module.optimizers() for s in opt.optimizer.state.values() for v in s.values()
              if torch.is_tensor(v)]
    assert states and all(v.dtype == torch.float32 for v in states if v.numel() > 1)
    assert all(v.dtype == torch.float32 for v in module.state_dict().values() if v.is_floating_point())
    # it trained: the weights moved, and by about as much as fp32's did from the same start
    torch.manual_seed(0)
    start = M3oE(tiny_schema, star_dim=12, bottom_dim=10, expert_dims=[6], tower_dims=[5], num_shared_experts=2)
    moved = {p: sum(float((a - b).norm()) for a, b in zip(start.parameters(), m.model.parameters()))
             for p, (_, m) in modules.items()}
    assert moved["bf16-true"] > 0.5 * moved["32-true"] > 0


def test_other_precisions_go_to_lightning_as_they_are():
    assert trainer_precision(compose("train", ["trainer.precision=bf16-mixed"]).trainer) == {}
    assert trainer_precision(compose("train").trainer) == {}


def test_embedding_tables_stay_fp32_in_the_bf16_forward_with_the_values_of_cast_tables(tiny_schema, batch_factory):
    torch.manual_seed(0)
    model = build_case("model=m3oe", tiny_schema).eval()
    batch = batch_factory(tiny_schema, 64, seed=5)
    cast = CastForward(model, torch.bfloat16)
    assert cast.kept and cast.kept == {name for name, _ in model.named_parameters() if ".tables." in name}
    # casting after the gather gives exactly what casting every table first gives
    everything_cast = {name: p.to(torch.bfloat16) for name, p in model.named_parameters()}
    reference = torch.func.functional_call(model, everything_cast, (cast_batch(batch, torch.bfloat16),)).float()
    logits = cast(batch)
    torch.testing.assert_close(logits, reference, atol=0, rtol=0)
    logits.sum().backward()
    table = model.embedding.tables[0].weight
    assert table.grad is not None and table.grad.dtype == torch.float32
    assert table.grad.abs().sum(1).count_nonzero() == batch["sparse"][:, 0].unique().numel()  # only looked-up rows
