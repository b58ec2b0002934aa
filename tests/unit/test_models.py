"""Every model config and every paper row: builds, forward shape, gradients everywhere, learns; the
train-separately wrapper's routing; M3oE's fusion ablations; routing rows to their own domain.

The cases are globbed from ``conf/model/*.yaml`` and ``conf/experiment/paper/*.yaml``, so a new
model or paper row is covered without editing this file.
"""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from m3oe_lightning.config import CONF_DIR, build
from m3oe_lightning.data.datamodule import MDMTDataModule
from m3oe_lightning.data.readers.synthetic import make_synthetic
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.models.adatt import AdaTT
from m3oe_lightning.models.base import DEFAULT_EVAL_CHUNK_ROWS, MDMTModel, forward_in_chunks
from m3oe_lightning.models.layers import DomainTaskTowers
from m3oe_lightning.models.m2m import M2M
from m3oe_lightning.models.m3oe import M3oE
from m3oe_lightning.models.mmoe import MMoE
from m3oe_lightning.models.ple import PLE
from m3oe_lightning.models.split import SplitByGroup
from m3oe_lightning.models.star import STAR
from m3oe_lightning.training.metrics import grouped_bce_loss
from m3oe_lightning.training.module import MDMTModule
from tests.helpers import compose_train, recommendation_models

CONF = Path(CONF_DIR)
MODELS = recommendation_models()  # the classification family: tests/unit/test_classification.py
PAPER_ROWS = sorted(p.stem for p in (CONF / "experiment" / "paper").glob("*.yaml") if not p.stem.startswith("_"))
CASES = [f"model={name}" for name in MODELS] + [f"experiment=paper/{row}" for row in PAPER_ROWS]


@functools.cache
def composed(case: str) -> tuple[str, str]:
    """(model node as YAML, AutoML mode) of a case, composed once per session."""
    cfg = compose_train([case])
    return OmegaConf.to_yaml(cfg.model), str(cfg.automl.mode)


def build_case(case: str, schema) -> MDMTModel:
    node_yaml, _ = composed(case)
    model = build(OmegaConf.create(node_yaml), schema=schema)
    assert isinstance(model, MDMTModel)
    return model


def test_cases_cover_every_model_and_the_paper_tables():
    assert {"mlp", "shared_bottom", "mmoe", "ple", "adatt", "adatt_sp", "star", "m2m", "m3oe", "split"} <= set(MODELS)
    assert len(PAPER_ROWS) == 21  # Table 2: 15 MovieLens rows (M3oE included); Table 3: 6 variants


@pytest.mark.parametrize("case", CASES)
def test_forward_shape_and_every_parameter_gets_a_gradient(case, tiny_schema, batch_factory):
    torch.manual_seed(0)
    model = build_case(case, tiny_schema)
    batch = batch_factory(tiny_schema, 48)  # every domain present
    logits = model(batch)
    assert logits.shape == (48, tiny_schema.num_tasks)
    assert torch.isfinite(logits).all()
    grouped_bce_loss(logits, batch["labels"], batch["domain"], tiny_schema.num_domains).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


@pytest.mark.parametrize("case", CASES)
def test_rows_only_depend_on_themselves_in_eval(case, tiny_schema, batch_factory):
    """Routing by domain inside a model never mixes rows: the batch gives what each row alone gives."""
    torch.manual_seed(0)
    model = build_case(case, tiny_schema).eval()
    batch = batch_factory(tiny_schema, 12, seed=3)
    with torch.no_grad():
        full = model(batch)
        alone = torch.cat([model({k: v[i:i + 1] for k, v in batch.items()}) for i in range(12)])
    torch.testing.assert_close(full, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_chunked_evaluation_forward_gives_the_full_batch_logits(case, tiny_schema, batch_factory):
    torch.manual_seed(0)
    model = build_case(case, tiny_schema).eval()
    batch = batch_factory(tiny_schema, 40, seed=4)
    model.set_eval_chunk_rows(7)  # as the training system sets it: the chunk size is the model's own setting
    with torch.no_grad():
        torch.testing.assert_close(forward_in_chunks(model, batch), model(batch), rtol=1e-4, atol=1e-5)


def test_eval_chunk_rows_defaults_and_rejects_non_positive_values(tiny_schema):
    model = small_mmoe(tiny_schema)
    assert model.eval_chunk_rows == DEFAULT_EVAL_CHUNK_ROWS
    model.set_eval_chunk_rows(64)
    assert model.eval_chunk_rows == 64
    model.set_eval_chunk_rows(None)  # unset: the default again
    assert model.eval_chunk_rows == DEFAULT_EVAL_CHUNK_ROWS
    for bad in (0, -1, 2.5):
        with pytest.raises(UserInputError, match="eval_chunk_rows"):
            model.set_eval_chunk_rows(bad)


# ------------------------------------------------------------------------------ learning on synthetic data
@pytest.fixture(scope="module")
def synthetic():
    # 50 users × 30 items: ~64 training rows per user, so embeddings learn within a dozen steps
    return make_synthetic(rows=4000, num_users=50, num_items=30, seed=0)


_auc_by_config: dict[tuple[str, str], float] = {}


@pytest.mark.parametrize("case", CASES)
def test_trains_briefly_and_beats_a_constant_predictor(case, synthetic):
    key = composed(case)
    if key not in _auc_by_config:  # paper rows that are a plain model config train once
        L.seed_everything(0, verbose=False)
        model = build_case(case, synthetic.schema)
        module = MDMTModule(model, lr=1e-2, automl_mode=key[1])  # lr of every paper row
        datamodule = MDMTDataModule.from_dataset(synthetic, batch_size=512, seed=0)
        trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            limit_val_batches=0)
        trainer.fit(module, datamodule=datamodule)
        trainer.test(module, datamodule=datamodule, verbose=False)
        _auc_by_config[key] = module.test_results["test/auc_mean"]
    assert _auc_by_config[key] > 0.55  # a constant predictor has AUC 0.5


# ------------------------------------------------------------------------------------ routing to domains
def small_mmoe(schema) -> MMoE:
    return MMoE(schema, num_experts=3, expert_dims=[8], tower_dims=[5])


def test_mmoe_routed_forward_equals_computing_every_gate_and_tower(tiny_schema, batch_factory):
    """The routed forward against the naive one: all D×T gates and towers on every row, then gather."""
    torch.manual_seed(0)
    model = small_mmoe(tiny_schema).eval()
    batch = batch_factory(tiny_schema, 30)
    D, T, N = 3, 2, 3
    with torch.no_grad():
        x = model.embedding(batch)
        experts = model.experts(x)  # [N, B, k]
        gates = model.gates(x).view(D, -1, T, N).softmax(-1)  # [D, B, T, N]
        fused = torch.einsum("dbtn,nbk->dtbk", gates, experts).reshape(D * T, x.shape[0], -1)
        towers = model.towers.mlp(fused).view(D, T, -1)  # every (d, t) tower on every row
        expected = towers.permute(2, 0, 1)[torch.arange(x.shape[0]), batch["domain"]]  # [B, T]
        torch.testing.assert_close(model(batch), expected, rtol=1e-5, atol=1e-6)


def gather_own_domain(per_objective: torch.Tensor, domain: torch.Tensor, num_tasks: int) -> torch.Tensor:
    """``[B, D·T]`` logits of every (domain, task) objective → ``[B, T]`` of each row's own domain."""
    B = per_objective.shape[0]
    return per_objective.view(B, -1, num_tasks)[torch.arange(B), domain]


def objective_towers(model, inputs: list[torch.Tensor]) -> torch.Tensor:
    """Tower ``o`` on objective ``o``'s representation, for every row: ``[B, D·T]``."""
    return torch.stack([model.towers.mlp(h, slice(o, o + 1))[0, :, 0] for o, h in enumerate(inputs)], dim=1)


def naive_adatt(model: AdaTT, batch) -> torch.Tensor:
    """AdaTT as loops over units and experts (facebookresearch/AdaTT AdaTTWSharedExps / AdaTTSp), every
    objective on every row."""
    x = model.embedding(batch)
    G, Kt, Ks = model.num_objectives, model.num_task_experts, model.num_shared_experts
    unit_of = [o for o in range(G) for _ in range(Kt)] + [G] * Ks
    inputs = [x] * (G + 1)
    for i, level in enumerate(model.levels):
        experts = [level.experts(inputs[unit_of[e]], slice(e, e + 1))[0] for e in range(G * Kt + Ks)]
        units = G + (1 if Ks and i < len(model.levels) - 1 else 0)
        outs = []
        for u in range(units):
            g = (inputs[u] @ level.gates.weight[u] + level.gates.bias[u, 0]).softmax(-1).clone()
            native = range(u * Kt, (u + 1) * Kt) if u < G else range(G * Kt, G * Kt + Ks)
            for j, e in enumerate(native):  # residual: the unit's own experts, weight v (or 1)
                if level.task_residual is None:
                    g[:, e] += 1.0
                else:
                    g[:, e] += level.task_residual[u, j] if u < G else level.shared_residual[j]
            outs.append(sum(g[:, e:e + 1] * experts[e] for e in range(len(experts))))
        inputs = outs
    return gather_own_domain(objective_towers(model, inputs), batch["domain"], model.num_tasks)


@pytest.mark.parametrize("kw", [dict(), dict(num_shared_experts=0), dict(num_task_experts=1),
                                dict(num_task_experts=1, num_shared_experts=0), dict(expert_dims=[[6]]),
                                dict(num_shared_experts=2, expert_dims=[[6], [5], [4]])])
def test_adatt_matches_a_loop_over_units_and_experts(tiny_schema, batch_factory, kw):
    torch.manual_seed(0)
    model = AdaTT(tiny_schema, **{"expert_dims": [[8], [6]], "tower_dims": [4], **kw}).eval()
    batch = batch_factory(tiny_schema, 20)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), naive_adatt(model, batch), rtol=1e-5, atol=1e-6)


def naive_ple(model: PLE, batch) -> torch.Tensor:
    """PLE as loops (Tang et al. Eq. 2–6; facebookresearch/AdaTT's PLE), every objective on every row."""
    x = model.embedding(batch)
    G, Ks, Ksh = model.num_objectives, model.num_specific, model.num_shared
    module_of = [o for o in range(G) for _ in range(Ks)] + [G] * Ksh
    inputs = [x] * (G + 1)
    for level in model.levels:
        experts = [level.experts(inputs[module_of[e]], slice(e, e + 1))[0] for e in range(G * Ks + Ksh)]
        outs = []
        for o in range(G):  # CGC gate: own + shared experts, on the objective's own input
            chosen = [o * Ks + j for j in range(Ks)] + [G * Ks + j for j in range(Ksh)]
            g = (inputs[o] @ level.gates.weight[o] + level.gates.bias[o, 0]).softmax(-1)
            outs.append(sum(g[:, i:i + 1] * experts[e] for i, e in enumerate(chosen)))
        if level.shared_gate is not None:  # below the last level: the shared gate over every expert
            g = level.shared_gate(inputs[G]).softmax(-1)
            outs.append(sum(g[:, e:e + 1] * experts[e] for e in range(len(experts))))
        inputs = outs
    return gather_own_domain(objective_towers(model, inputs), batch["domain"], model.num_tasks)


@pytest.mark.parametrize("kw", [dict(), dict(expert_dims=[[6]]), dict(num_specific_experts=2, num_shared_experts=3),
                                dict(expert_dims=[[8], [6], [4]])])
def test_ple_matches_a_loop_over_objectives_and_experts(tiny_schema, batch_factory, kw):
    torch.manual_seed(0)
    model = PLE(tiny_schema, **{"expert_dims": [[8], [6]], "tower_dims": [4], **kw}).eval()
    batch = batch_factory(tiny_schema, 20)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), naive_ple(model, batch), rtol=1e-5, atol=1e-6)


def test_m2m_matches_per_row_generated_weights(tiny_schema, batch_factory):
    """Generating the meta weights once per domain equals generating them for every row (M2M's form)."""
    torch.manual_seed(0)
    model = M2M(tiny_schema, num_experts=3, expert_dims=[8, 6], scenario_dim=5, attention_dim=7,
                tower_dims=[4]).eval()
    batch = batch_factory(tiny_schema, 12)
    leaky = functools.partial(torch.nn.functional.leaky_relu, negative_slope=0.1)
    k, rows = 6, []
    with torch.no_grad():
        x = model.embedding(batch)
        experts = model.experts(x)  # [K, B, k]
        task = leaky(model.task_mlp(model.task_embedding.weight))  # [T, k]
        for i, d in enumerate(batch["domain"].tolist()):
            s = leaky(model.scenario_mlp(model.scenario_embedding.weight[d]))
            w, b = model.attention_weight(s).view(2 * k, 7), model.attention_bias(s)
            out = []
            for t in range(2):
                e = experts[:, i]  # [K, k]
                scores = torch.stack([leaky(torch.cat([e[j], task[t]]) @ w + b) @ model.attention_v for j in range(3)])
                h = scores.softmax(0) @ e
                for weight, bias in zip(model.tower_weight, model.tower_bias):
                    h = leaky(h @ weight(s).view(2, k, k)[t] + bias(s).view(2, k)[t]) + h
                out.append(model.output(h.view(1, 1, k).expand(2, 1, k))[t, 0, 0])
            rows.append(torch.stack(out))
        torch.testing.assert_close(model(batch), torch.stack(rows), rtol=1e-5, atol=1e-6)


def test_star_matches_per_row_star_topology(tiny_schema, batch_factory):
    torch.manual_seed(0)
    model = STAR(tiny_schema, hidden_dims=[8, 6], aux_dims=[4])
    with torch.no_grad():  # domain weights start at ones: make every domain's network differ
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    batch = batch_factory(tiny_schema, 30)
    model(batch)  # one training step's statistics into the running buffers
    model.eval()
    rows = []
    with torch.no_grad():
        x = model.embedding(batch)
        for i, d in enumerate(batch["domain"].tolist()):
            pn = model.norm
            h = (x[i] - pn.running_mean[d]) / torch.sqrt(pn.running_var[d] + pn.eps)
            h = h * pn.gamma * pn.domain_gamma[d] + pn.beta + pn.domain_beta[d]
            for j in range(3):
                w = model.shared_weight[j] * model.domain_weight[j][d]
                h = h @ w + model.shared_bias[j] + model.domain_bias[j][d]
                h = torch.relu(h) if j < 2 else h
            rows.append(h + model.aux(model.aux_embedding.weight[d]))
        torch.testing.assert_close(model(batch), torch.stack(rows), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["model=shared_bottom", "model=mmoe", "model=ple", "model=adatt", "model=adatt_sp"])
def test_rows_of_one_domain_reach_only_that_domains_towers(case, tiny_schema, batch_factory):
    torch.manual_seed(0)
    model = build_case(case, tiny_schema)
    assert isinstance(model.towers, DomainTaskTowers)
    batch = batch_factory(tiny_schema, 32)
    logits = model(batch)
    logits[batch["domain"] == 1].sum().backward()
    grad = model.towers.mlp.linears[0].weight.grad.abs().flatten(1).sum(1).view(3, 2)  # [D, T]
    assert (grad[1] > 0).all() and (grad[[0, 2]] == 0).all()


# ------------------------------------------------------------------------------------- SplitByGroup
def split_model(schema, split: str) -> SplitByGroup:
    torch.manual_seed(0)
    return SplitByGroup(schema, base=functools.partial(MMoE, num_experts=2, expert_dims=[8], tower_dims=[4]),
                        split=split)


@pytest.mark.parametrize("split, groups, sub_domains, sub_tasks", [
    ("domain", 3, 1, 2), ("task", 2, 3, 1), ("domain_task", 6, 1, 1)])
def test_split_builds_one_submodel_per_group_on_its_subschema(tiny_schema, split, groups, sub_domains, sub_tasks):
    model = split_model(tiny_schema, split)
    assert len(model.models) == groups
    assert all(m.num_domains == sub_domains and m.num_tasks == sub_tasks for m in model.models)
    assert model.num_domains == 3 and model.num_tasks == 2


def test_split_by_domain_submodel_sees_only_its_domains_rows(tiny_schema, batch_factory):
    model = split_model(tiny_schema, "domain").eval()
    batch = batch_factory(tiny_schema, 40)
    seen: dict[int, list[torch.Tensor]] = {d: [] for d in range(3)}
    for d, sub in enumerate(model.models):
        sub.register_forward_pre_hook(lambda m, args, d=d: seen[d].append(args[0]))
    with torch.no_grad():
        out = model(batch)
    for d in range(3):
        own = batch["domain"] == d
        (sub_batch,) = seen[d]
        torch.testing.assert_close(sub_batch["sparse"], batch["sparse"][own])  # its rows, in batch order
        assert (sub_batch["domain"] == 0).all()  # the sub-model's schema has one domain
        torch.testing.assert_close(out[own], model.models[d](sub_batch))

    # changing every row of the other domains leaves domain 0's outputs unchanged
    other = batch["domain"] != 0
    changed = {k: v.clone() for k, v in batch.items()}
    changed["sparse"][other, :2] = torch.randint(0, 7, (int(other.sum()), 2))
    changed["dense"][other] = torch.rand(int(other.sum()), 1)
    with torch.no_grad():
        out_changed = model(changed)
    torch.testing.assert_close(out_changed[~other], out[~other])
    assert not torch.allclose(out_changed[other], out[other])


def test_split_by_domain_gradients_come_only_from_own_rows(tiny_schema, batch_factory):
    model = split_model(tiny_schema, "domain")
    batch = batch_factory(tiny_schema, 40)
    logits = model(batch)
    grouped_bce_loss(logits[batch["domain"] == 2], batch["labels"][batch["domain"] == 2],
                     torch.zeros(int((batch["domain"] == 2).sum()), dtype=torch.long), 1).backward()
    for d, sub in enumerate(model.models):
        has_grad = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in sub.parameters()]
        assert all(has_grad) if d == 2 else not any(has_grad)


def test_split_by_task_concatenates_one_submodel_per_task(tiny_schema, batch_factory):
    model = split_model(tiny_schema, "task")
    batch = batch_factory(tiny_schema, 24)
    logits = model(batch)
    for t, sub in enumerate(model.models):
        torch.testing.assert_close(logits[:, t:t + 1], sub(batch))
    logits[:, 1].sum().backward()  # task 1's loss reaches task 1's model only
    assert not any(p.grad is not None and bool(p.grad.any()) for p in model.models[0].parameters())
    assert all(p.grad is not None and bool(p.grad.any()) for p in model.models[1].parameters())


def test_split_by_domain_task_routes_each_pair(tiny_schema, batch_factory):
    model = split_model(tiny_schema, "domain_task").eval()
    batch = batch_factory(tiny_schema, 24)
    with torch.no_grad():
        logits = model(batch)
        for d in range(3):
            own = batch["domain"] == d
            sub = {k: v[own] for k, v in batch.items()}
            sub["domain"] = torch.zeros_like(sub["domain"])
            for t in range(2):
                torch.testing.assert_close(logits[own, t:t + 1], model.models[d * 2 + t](sub))


def test_split_missing_domain_in_batch_and_architecture_parameters_union(tiny_schema, batch_factory):
    model = SplitByGroup(tiny_schema, base=functools.partial(M3oE, star_dim=8, bottom_dim=6, expert_dims=[4],
                                                             tower_dims=[3]), split="domain")
    assert model(batch_factory(tiny_schema, 10, domains=[1])).shape == (10, 2)
    arch = model.architecture_parameters()
    # registered parameters of the model, which the model optimiser's filter (by id) leaves out
    assert len(arch) == 3 * 4 and {id(p) for p in arch} <= {id(p) for p in model.parameters()}
    assert set(model.architecture_weights()) == {f"{d}/{w}" for d in tiny_schema.domains
                                                 for w in ("alpha_d", "alpha_t", "beta_d", "beta_t")}


def test_split_rejects_an_unknown_split(tiny_schema):
    with pytest.raises(UserInputError, match="model.split"):
        SplitByGroup(tiny_schema, base=small_mmoe, split="user")


def test_paper_rows_use_the_tables_training_modes():
    def split_of(row: str) -> str | None:
        node = OmegaConf.create(composed(f"experiment=paper/{row}")[0])
        return node.get("split") if node._target_.endswith("SplitByGroup") else None

    assert split_of("mlp") == "domain_task"
    assert {split_of(r) for r in ("shbot_mtl", "ple_mtl", "mmoe_mtl", "adatt", "adatt_sp")} == {"domain"}
    assert {split_of(r) for r in ("shbot_mdl", "mmoe_mdl", "ple_mdl", "star")} == {"task"}
    assert {split_of(r) for r in ("shbot_mdmt", "mmoe_mdmt", "ple_mdmt", "m2m", "m3oe")} == {None}
    cfg = compose_train(["experiment=paper/m3oe_wo_automl"])
    assert cfg.automl.mode == "off" and cfg.logger.tags.row == "w/o AutoML"
    assert compose_train(["experiment=paper/mmoe_mdmt"]).logger.tags.row == "MMOE-MDMT"


# ------------------------------------------------------------------------------------ M3oE fusion ablations
def small_m3oe(schema, **kw) -> M3oE:
    torch.manual_seed(0)
    return M3oE(schema, star_dim=12, bottom_dim=10, expert_dims=[6], tower_dims=[5], **kw)


def tower_input(model: M3oE, batch) -> torch.Tensor:
    """The towers' input for a one-row batch: ``[T, 1, width]``."""
    captured = []
    handle = model.towers.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    model(batch)
    handle.remove()
    return captured[0]


def one_row_parts(model: M3oE, batch, beta_d: float, beta_t: float):
    """Shared experts, level-1 domain vector and level-1 task vectors of one row of domain 1, by hand."""
    x = model.embedding(batch)
    f_dr = x @ (model.star_weight[1] * model.star_shared_weight) + model.star_bias[1] + model.star_shared_bias
    h = model.w_c(f_dr) + model.skip(x)
    e = model.experts(h)[:, 0]  # [E, k]
    N = model.num_shared
    shared, dom, task = e[:N], e[N:N + 3], e[N + 3:N + 5]
    d_level1 = beta_d * dom[1] + (1 - beta_d) / 2 * (dom[0] + dom[2])
    t_level1 = torch.stack([beta_t * task[t] + (1 - beta_t) * task[1 - t] for t in range(2)])
    return h, shared, d_level1, t_level1


ROW = {"sparse": torch.tensor([[3, 4, 1]]), "dense": torch.tensor([[0.25]]), "domain": torch.tensor([1]),
       "labels": torch.zeros(1, 2)}


@pytest.mark.parametrize("fusion", ["concat", "gated"])
def test_m3oe_fusion_ablations_forward_backward(tiny_schema, batch_factory, fusion):
    model = small_m3oe(tiny_schema, fusion=fusion, num_shared_experts=2)
    assert set(model.fusion_logits) == {"beta_d", "beta_t"}  # no α in either ablation
    batch = batch_factory(tiny_schema, 40)
    logits = model(batch)
    assert logits.shape == (40, 2) and torch.isfinite(logits).all()
    grouped_bce_loss(logits, batch["labels"], batch["domain"], 3).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_m3oe_concat_tower_reads_shared_domain_and_task_vectors(tiny_schema):
    model = small_m3oe(tiny_schema, fusion="concat", num_shared_experts=2).eval()
    with torch.no_grad():
        model.fusion_logits["beta_d"].fill_(0.4)
        model.fusion_logits["beta_t"].fill_(-0.3)
        beta_d, beta_t = torch.sigmoid(torch.tensor([0.4, -0.3])).tolist()
        h, shared, d_level1, t_level1 = one_row_parts(model, ROW, beta_d, beta_t)
        g = (h @ model.gates.weight[1] + model.gates.bias[1, 0])[0].view(2, 2).softmax(-1)  # [T, N]
        s = g @ shared  # [T, k]
        expected = torch.cat([s, d_level1.expand(2, -1), t_level1], dim=-1).unsqueeze(1)
        torch.testing.assert_close(tower_input(model, ROW), expected, rtol=1e-5, atol=1e-6)
    assert model.towers.linears[0].d_in == 3 * 6


def test_m3oe_gated_gate_weighs_shared_experts_domain_and_task_vectors(tiny_schema):
    model = small_m3oe(tiny_schema, fusion="gated", num_shared_experts=1).eval()  # N=1: gate still exists
    with torch.no_grad():
        beta_d = beta_t = float(torch.sigmoid(torch.tensor(1.0)))
        h, shared, d_level1, t_level1 = one_row_parts(model, ROW, beta_d, beta_t)
        g = (h @ model.gates.weight[1] + model.gates.bias[1, 0])[0].view(2, 3).softmax(-1)  # [T, N+2]
        expected = g[:, :1] * shared[0] + g[:, 1:2] * d_level1 + g[:, 2:3] * t_level1
        torch.testing.assert_close(tower_input(model, ROW), expected.unsqueeze(1), rtol=1e-5, atol=1e-6)


def test_m3oe_gated_without_domain_and_task_modules_is_plain_gating(tiny_schema, batch_factory):
    model = small_m3oe(tiny_schema, fusion="gated", num_shared_experts=3, use_domain_experts=False,
                       use_task_experts=False)
    assert model.gate_size == 3 and model.architecture_parameters() == []
    assert model(batch_factory(tiny_schema, 8)).shape == (8, 2)


def test_m3oe_rejects_unknown_fusion(tiny_schema):
    with pytest.raises(UserInputError, match="model.fusion"):
        small_m3oe(tiny_schema, fusion="mean")


def test_adatt_sp_is_adatt_without_shared_experts(tiny_schema):
    adatt, sp = build_case("model=adatt", tiny_schema), build_case("model=adatt_sp", tiny_schema)
    assert adatt.num_shared_experts == 1 and sp.num_shared_experts == 0
    assert type(adatt) is type(sp)
    assert sp.levels[0].experts.groups == adatt.levels[0].experts.groups - 1


def test_star_partitioned_norm_keeps_statistics_per_domain(tiny_schema, batch_factory):
    model = build_case("model=star", tiny_schema)
    batch = batch_factory(tiny_schema, 60)
    model(batch)
    x = model.embedding(batch)
    for d in range(3):
        expected = 0.1 * x[batch["domain"] == d].mean(0)  # momentum 0.1 from zeros
        torch.testing.assert_close(model.norm.running_mean[d], expected.detach(), rtol=1e-4, atol=1e-7)


def test_models_reject_wrong_domain_or_task_counts(tiny_schema):
    for case in ("model=mmoe", "model=ple", "model=star", "model=m2m"):
        node = OmegaConf.create(composed(case)[0])
        node.num_tasks = 3
        with pytest.raises(UserInputError, match="model.num_tasks=3"):
            build(node, schema=tiny_schema)


def test_experts_and_gates_need_enough_members(tiny_schema):
    with pytest.raises(UserInputError, match="num_experts"):
        MMoE(tiny_schema, num_experts=1)
    with pytest.raises(UserInputError, match="num_shared_experts"):
        PLE(tiny_schema, num_shared_experts=0)
    with pytest.raises(UserInputError, match="num_experts"):
        M2M(tiny_schema, num_experts=1)
