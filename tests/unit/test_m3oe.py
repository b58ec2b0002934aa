"""M3oE: shapes, gradients, switches and the fusion maths against a hand computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from m3oe_lightning.errors import UserInputError
from m3oe_lightning.models.m3oe import M3oE
from m3oe_lightning.models.m3oe_reference import reference_forward

PRESETS = {
    "paper": {},
    "released": dict(num_shared_experts=4, tower_layernorm=True, gate_detach=True, bottom_layernorm=True),
    "per_domain": dict(fusion_granularity="per_domain", num_shared_experts=2),
    "per_task": dict(fusion_granularity="per_task"),
    "deep_experts": dict(expert_dims=[16, 8], tower_dims=[8, 4], num_shared_experts=3),
    "no_domain_experts": dict(use_domain_experts=False),
    "no_task_experts": dict(use_task_experts=False),
    "no_star_layer": dict(use_star_layer=False),
}


def small(schema, **kw) -> M3oE:
    torch.manual_seed(0)
    return M3oE(schema, star_dim=12, bottom_dim=10, expert_dims=kw.pop("expert_dims", [6]),
                tower_dims=kw.pop("tower_dims", [5]), **kw)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_forward_shape_and_every_parameter_gets_a_gradient(tiny_schema, batch_factory, preset):
    model = small(tiny_schema, **PRESETS[preset])
    batch = batch_factory(tiny_schema, 64)
    logits = model(batch)
    assert logits.shape == (64, 2)
    assert torch.isfinite(logits).all()
    nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"]).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_rows_only_depend_on_their_own_domain(tiny_schema, batch_factory):
    """Routing rows to their own domain: a row's logits do not change with the rest of the batch."""
    model = small(tiny_schema, num_shared_experts=3).eval()
    batch = batch_factory(tiny_schema, 40)
    full = model(batch)
    single = torch.cat([model({k: v[i:i + 1] for k, v in batch.items()}) for i in range(40)])
    torch.testing.assert_close(full, single, rtol=1e-5, atol=1e-5)


def test_without_star_layer_h_is_the_skip_path(tiny_schema, batch_factory):
    """``use_star_layer=False`` removes f_DR and W_c; the rest reads ``h = f_DA(x)``."""
    model = small(tiny_schema, use_star_layer=False)
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith(("star_", "w_c")) for n in names)
    assert {"star_weight", "w_c.weight"} <= {n for n, _ in small(tiny_schema).named_parameters()}
    captured = []
    model.experts.register_forward_hook(lambda mod, args, out: captured.append(args[0]))
    batch = batch_factory(tiny_schema, 24)
    model(batch)
    x = model.embedding(batch)
    order = torch.argsort(batch["domain"], stable=True)
    torch.testing.assert_close(captured[0], model.skip(x[order]))


def test_missing_domain_in_batch(tiny_schema, batch_factory):
    model = small(tiny_schema)
    batch = batch_factory(tiny_schema, 16, domains=[2])
    assert model(batch).shape == (16, 2)


def test_gate_detach_blocks_gate_gradient_into_bottom(tiny_schema, batch_factory):
    batch = batch_factory(tiny_schema, 32)
    grads = {}
    for detach in (False, True):
        model = small(tiny_schema, num_shared_experts=3, gate_detach=detach)
        model(batch).sum().backward()
        grads[detach] = model.skip[0].weight.grad.clone()
    assert not torch.allclose(grads[False], grads[True])


def test_fusion_maths_against_hand_computation(tiny_schema):
    """One row of domain 1, N=2: h̄(d,t) = Σ_n g_n S_n + α_d·Dlevel1 + α_t·Tlevel1, tower on top."""
    model = small(tiny_schema, num_shared_experts=2).eval()
    with torch.no_grad():
        for name, raw in zip(("alpha_d", "alpha_t", "beta_d", "beta_t"), (0.3, -0.7, 1.2, -0.2)):
            model.fusion_logits[name].fill_(raw)
    sig = torch.sigmoid(torch.tensor([0.3, -0.7, 1.2, -0.2]))
    alpha_d, alpha_t, beta_d, beta_t = sig.tolist()
    batch = {"sparse": torch.tensor([[3, 4, 1]]), "dense": torch.tensor([[0.25]]),
             "domain": torch.tensor([1]), "labels": torch.zeros(1, 2)}
    out = model(batch)[0]

    with torch.no_grad():
        x = model.embedding(batch)
        w = model.star_weight[1] * model.star_shared_weight
        f_dr = x @ w + model.star_bias[1] + model.star_shared_bias
        h = model.w_c(f_dr) + model.skip(x)  # [1, bottom]
        experts = []
        for e in range(model.num_experts):  # every expert by hand: Linear → LayerNorm → ReLU
            lin = model.experts.linears[0]
            z = h @ lin.weight[e] + lin.bias[e, 0]
            norm = model.experts.norms[0]
            z = nn.functional.layer_norm(z, z.shape[-1:]) * norm.weight[e, 0] + norm.bias[e, 0]
            experts.append(torch.relu(z)[0])
        shared, dom, task = experts[0:2], experts[2:5], experts[5:7]
        gate_logits = (h @ model.gates.weight[1] + model.gates.bias[1, 0])[0].view(2, 2)  # [T, N]
        expected = []
        for t in range(2):
            g = torch.softmax(gate_logits[t], dim=0)
            s = g[0] * shared[0] + g[1] * shared[1]
            d_level1 = beta_d * dom[1] + (1 - beta_d) / 2 * (dom[0] + dom[2])
            t_level1 = beta_t * task[t] + (1 - beta_t) * task[1 - t]
            fused = s + alpha_d * d_level1 + alpha_t * t_level1
            k = 1 * 2 + t  # tower of (domain 1, task t)
            l1, l2 = model.towers.linears[0], model.towers.final
            hidden = torch.relu(fused @ l1.weight[k] + l1.bias[k, 0])
            expected.append((hidden @ l2.weight[k] + l2.bias[k, 0])[0])
    torch.testing.assert_close(out, torch.stack(expected), rtol=1e-5, atol=1e-6)


def test_architecture_parameters_are_the_four_fusion_logits(tiny_schema):
    model = small(tiny_schema)
    arch = model.architecture_parameters()
    assert len(arch) == 4 and all(p.numel() == 1 for p in arch)
    assert {id(p) for p in arch} <= {id(p) for p in model.parameters()}  # registered; the optimiser filters them
    assert model.architecture_weights()["alpha_d"] == pytest.approx(0.7310586)


def test_released_preset_parameter_count_matches_reference():
    """788,146 trainable parameters with N=4 on ML-1M's vocabularies (docs/m3oe.md §1.2)."""
    from m3oe_lightning.data.schema import DenseFeature, FeatureSchema, SparseFeature

    vocab = {"user_id": 6040, "movie_id": 3706, "gender": 2, "occupation": 21, "zip": 3439, "genre": 18,
             "domain": 3}
    schema = FeatureSchema(sparse=tuple(SparseFeature(k, v, 16) for k, v in vocab.items()),
                           dense=(DenseFeature("age"),), domains=("a", "b", "c"), tasks=("click", "like"))
    model = M3oE(schema, num_shared_experts=4, tower_layernorm=True, bottom_layernorm=True, gate_detach=True)
    assert sum(p.numel() for p in model.parameters()) == 788_146


@pytest.mark.parametrize("setting, value", [("num_domains", 4), ("num_tasks", 1)])
def test_mismatched_domains_or_tasks_fail_clearly(tiny_schema, setting, value):
    with pytest.raises(UserInputError, match=f"model.{setting}={value}"):
        M3oE(tiny_schema, **{setting: value})


@pytest.mark.parametrize("switches", [dict(num_shared_experts=1, tower_layernorm=True),
                                      dict(num_shared_experts=3), PRESETS["released"]])
def test_optimized_forward_and_backward_equal_the_straightforward_ones(tiny_schema, batch_factory, switches):
    """The routed, grouped forward against m3oe_reference: every domain, expert and tower on every row."""
    model = small(tiny_schema, fusion_init=0.3, **switches)
    batch = batch_factory(tiny_schema, 64, seed=5)
    fast = model(batch)
    slow = reference_forward(model, batch)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    target = torch.randn_like(fast)
    grads = {}
    for name, out in (("fast", fast), ("slow", slow)):
        model.zero_grad()
        (out * target).sum().backward()
        grads[name] = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    assert grads["fast"].keys() == grads["slow"].keys() == {k for k, _ in model.named_parameters()}
    for key in grads["fast"]:
        torch.testing.assert_close(grads["fast"][key], grads["slow"][key], rtol=1e-4, atol=1e-6, msg=key)
