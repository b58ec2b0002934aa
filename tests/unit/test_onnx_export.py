"""ONNX export over the encoded inputs (m3oe_lightning.serving.onnx_export), checked with onnxruntime.

Every model config is exported once, with random (not initial: the embeddings start near zero, which
would hide a wrong routing) parameters, and that one file must match PyTorch on a large batch with every
domain, a single row and a batch missing a domain: the batch axis and the domain mix are inputs of the
graph, not constants of it. Each model's :meth:`~MDMTModel.export_forward` (what is traced) must equal
its ``forward`` on uneven domain mixes, for every model config and paper row.

Export time grows with the number of operators, not their width (about 5 s a model on a busy 2-core
machine), so the exported models are small: two domains (the graph holds D copies of each per-domain
part), one narrow layer per stack (a config not named in :data:`SMALL` is exported at its own size).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import onnx
import pytest
import torch
from omegaconf import OmegaConf

from m3oe_lightning.config import CONF_DIR, build, compose
from m3oe_lightning.data.schema import Batch, DenseFeature, FeatureSchema, SparseFeature
from m3oe_lightning.models.base import MDMTModel
from m3oe_lightning.models.shared_bottom import SharedBottom
from m3oe_lightning.serving import onnx_export
from m3oe_lightning.serving.onnx_export import export_onnx, verify_onnx
from tests.helpers import recommendation_models

CONF = Path(CONF_DIR)
MODELS = recommendation_models()  # every recommender (the classifier is no serving model)
PAPER_ROWS = sorted(p.stem for p in (CONF / "experiment" / "paper").glob("*.yaml") if not p.stem.startswith("_"))
CASES = [f"model={name}" for name in MODELS] + [f"experiment=paper/{row}" for row in PAPER_ROWS]

# model config -> overrides that keep its structure (levels, experts, towers) with one narrow layer per stack
TOWER = ["model.tower_dims=[8]"]
SMALL: dict[str, list[str]] = {
    "mlp": ["model.hidden_dims=[8]"],
    "shared_bottom": ["model.bottom_dims=[8]", *TOWER],
    "mmoe": ["model.expert_dims=[8]", "model.num_experts=2", *TOWER],
    "ple": ["model.expert_dims=[[8],[8]]", *TOWER],
    "adatt": ["model.expert_dims=[[8],[8]]", "model.num_task_experts=1", *TOWER],  # unit residual weights 1
    "adatt_sp": ["model.expert_dims=[[8],[8]]", *TOWER],  # 2 task experts: learned residual weights
    "star": ["model.hidden_dims=[8]", "model.aux_dims=[8]"],
    "m2m": ["model.expert_dims=[8]", "model.num_experts=2", "model.attention_dim=8", "model.meta_tower_layers=1",
            *TOWER],
    "m3oe": ["model.star_dim=8", "model.bottom_dim=8", "model.expert_dims=[8]", *TOWER],
    "split": ["+model.base.hidden_dims=[8]"],
}
# what the exported models read: two domains, two tasks, the domain as the last sparse column
EXPORT_SCHEMA = FeatureSchema(sparse=(SparseFeature("user", 11, 4), SparseFeature("domain", 2, 4)),
                              dense=(DenseFeature("age"), DenseFeature("price")), domains=("d0", "d1"),
                              tasks=("click", "like"))
PERTURBATION_STD = 0.1  # on top of the initial values: logits of order 1, far from both 0 and saturation
ATOL = 1e-5


@functools.cache
def model_node(case: str) -> str:
    """The model node of a case, shrunk by :data:`SMALL`, as YAML (composed once per session)."""
    overrides = [case, "data=synthetic", *SMALL.get(case.removeprefix("model="), [])]
    return OmegaConf.to_yaml(compose("train", overrides).model)


def perturbed(model: MDMTModel) -> MDMTModel:
    """``model`` with every parameter moved by a seeded normal."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * PERTURBATION_STD)
    return model


def random_model(case: str, schema: FeatureSchema) -> MDMTModel:
    """The case's model (train mode, as built) with random parameters."""
    torch.manual_seed(0)
    return perturbed(build(OmegaConf.create(model_node(case)), schema=schema))


def parity_batches(schema: FeatureSchema, make) -> dict[str, Batch]:
    """What one exported graph must get right: every domain (257 rows), one row, a domain absent."""
    return {"every domain": make(schema, 257, seed=11),
            "one row": make(schema, 1, seed=12, domains=[0]),
            "domain 0 absent": make(schema, 60, seed=13, domains=list(range(1, schema.num_domains)))}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(name) -> (model, path)``: each model config (on :data:`EXPORT_SCHEMA`) exported once."""
    folder = tmp_path_factory.mktemp("onnx")
    done: dict[str, tuple[MDMTModel, Path]] = {}

    def export(name: str) -> tuple[MDMTModel, Path]:
        if name not in done:
            model = random_model(f"model={name}", EXPORT_SCHEMA)
            done[name] = model, export_onnx(model, folder / f"{name}.onnx")
        return done[name]

    return export


@pytest.mark.parametrize("name", MODELS)
def test_one_exported_graph_matches_pytorch_for_any_batch_size_and_domain_mix(name, batch_factory, exported):
    schema = EXPORT_SCHEMA
    model, path = exported(name)
    assert model.training, "export_onnx must give the model back in the mode it was in"
    for label, batch in parity_batches(schema, batch_factory).items():
        difference = verify_onnx(model, path, batch, atol=ATOL)
        assert difference <= ATOL, label
    graph = onnx.load(str(path)).graph
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in graph.initializer)  # no external data file
    ios = {v.name: (onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type),
                    [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
           for v in [*graph.input, *graph.output]}
    batch_axis = ios["domain"][1][0]
    assert isinstance(batch_axis, str) and batch_axis  # symbolic, not a number
    assert ios == {"sparse": ("INT64", [batch_axis, len(schema.sparse)]),
                   "dense": ("FLOAT", [batch_axis, len(schema.dense)]),
                   "domain": ("INT64", [batch_axis]),
                   "logits": ("FLOAT", [batch_axis, schema.num_tasks])}


@pytest.mark.parametrize("case", CASES)
def test_export_forward_gives_the_logits_of_forward_on_uneven_domain_mixes(case, tiny_schema, batch_factory):
    model = random_model(case, tiny_schema).eval()
    batches = [batch_factory(tiny_schema, 50, seed=21, domains=[0, 0, 0, 0, 1, 2]),  # mostly domain 0
               batch_factory(tiny_schema, 9, seed=22, domains=[1, 2]),  # domain 0 absent
               batch_factory(tiny_schema, 5, seed=23, domains=[2]),  # one domain only
               batch_factory(tiny_schema, 1, seed=24, domains=[0])]
    with torch.no_grad():
        for batch in batches:
            exported = model.export_forward(batch["sparse"], batch["dense"], batch["domain"])
            torch.testing.assert_close(exported, model(batch), rtol=0, atol=ATOL)


def test_export_forward_refuses_train_mode(tiny_schema, batch_factory):
    model = random_model("model=m3oe", tiny_schema)
    batch = batch_factory(tiny_schema, 4)
    with pytest.raises(RuntimeError, match="M3oE.export_forward needs eval mode"):
        model.export_forward(batch["sparse"], batch["dense"], batch["domain"])


def test_verify_onnx_names_the_model_and_the_difference_when_they_disagree(batch_factory, exported):
    model, path = exported("mmoe")
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.towers.mlp.final.bias.add_(0.5)  # every logit moves by 0.5
    with pytest.raises(ValueError, match=r"MMoE: the ONNX graph at .* differs from PyTorch by 0\.5"):
        verify_onnx(changed, path, batch_factory(EXPORT_SCHEMA, 16))


def test_a_failed_export_leaves_no_file_and_keeps_the_previous_one(tiny_schema, tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous export")

    def half_written(module, args, f, **kwargs):
        Path(f).write_bytes(b"partial graph")
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(onnx_export.torch.onnx, "export", half_written)
    model = random_model("model=mlp", tiny_schema)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_onnx(model, target)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    assert target.read_bytes() == b"previous export"
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_onnx(model, tmp_path / "new" / "model.onnx")
    assert list((tmp_path / "new").iterdir()) == []


def test_a_model_without_dense_features_keeps_a_zero_width_dense_input(tmp_path, batch_factory):
    schema = FeatureSchema(sparse=(SparseFeature("user", 11, 4), SparseFeature("domain", 2, 4)), dense=(),
                           domains=("d0", "d1"), tasks=("click",))
    torch.manual_seed(0)
    model = perturbed(SharedBottom(schema, bottom_dims=(8,), tower_dims=(8,)))
    path = export_onnx(model, tmp_path / "shared_bottom.onnx")
    dense = next(v for v in onnx.load(str(path)).graph.input if v.name == "dense")
    assert [d.dim_value for d in dense.type.tensor_type.shape.dim][1:] == [0]
    for label, batch in parity_batches(schema, batch_factory).items():
        assert batch["dense"].shape[1] == 0
        assert verify_onnx(model, path, batch, atol=ATOL) <= ATOL, label
