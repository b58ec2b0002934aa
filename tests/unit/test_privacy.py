"""Differential privacy of federated runs (federated/privacy.py): clipping, noise, the off switch, a real run."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from m3oe_lightning.errors import UserInputError
from m3oe_lightning.federated.aggregation import aggregate
from m3oe_lightning.federated.factory import build_federated, federated_identity
from m3oe_lightning.federated.messages import FitRes
from m3oe_lightning.federated.privacy import (
    CLIPPED,
    CLIPPED_FRACTION,
    NOISE_STD,
    DPSettings,
    Privacy,
    protect_reply,
)
from m3oe_lightning.federated.strategies import PAGE, FedAvg
from m3oe_lightning.tracking import provenance
from m3oe_lightning.tracking.federation import run_federation
from tests.helpers import compose_train, isolated, seeded_store

TINY = ["data=synthetic", "data.rows=1500", "data.num_users=60", "data.num_items=40", "data.batch_size=256",
        "model.star_dim=16", "model.bottom_dim=8", "model.expert_dims=[8]", "model.tower_dims=[8]",
        "federated.num_clients=3", "federated.heldout_clients=0", "seed=5"]


def reference() -> dict[str, torch.Tensor]:
    return {"w": torch.linspace(-1, 1, 12).reshape(3, 4), "b": torch.ones(5), "count": torch.tensor(7)}


def moved(base: dict[str, torch.Tensor], norm: float, seed: int) -> dict[str, torch.Tensor]:
    """``base`` plus a random update of L2 norm ``norm`` over its float entries (the counter moves by 1)."""
    g = torch.Generator().manual_seed(seed)
    step = {n: torch.randn(v.shape, generator=g) for n, v in base.items() if v.is_floating_point()}
    scale = norm / float(torch.sqrt(sum(s.pow(2).sum() for s in step.values())))
    return {n: (v + scale * step[n] if n in step else v + 1) for n, v in base.items()}


def update_norm(arrays, base) -> float:
    return float(torch.sqrt(sum((arrays[n].double() - base[n].double()).pow(2).sum()
                                for n in base if base[n].is_floating_point())))


def private(mode: str, noise_multiplier: float = 0.0, clipping_norm: float = 1.0, seed: int = 0) -> Privacy:
    return Privacy(DPSettings(mode=mode, noise_multiplier=noise_multiplier, clipping_norm=clipping_norm), seed=seed)


# --------------------------------------------------------------------------------------------- clipping
def test_server_side_clipping_bounds_every_update_and_the_aggregate():
    base = reference()
    strategy = FedAvg()
    strategy.use_privacy(private("server_fixed", clipping_norm=1.0))
    strategy.configure_train(1, base, ["a", "b"])
    big, small = moved(base, 10.0, seed=1), moved(base, 0.5, seed=2)
    replies = {"a": FitRes(arrays=big, num_examples=30), "b": FitRes(arrays=small, num_examples=10)}

    clipped, metrics = strategy.privacy.clip_replies(1, replies, base)
    assert update_norm(clipped["a"].arrays, base) == pytest.approx(1.0, rel=1e-5)  # scaled down to C exactly
    direction = (clipped["a"].arrays["w"] - base["w"]) / (big["w"] - base["w"])
    assert torch.allclose(direction, torch.full_like(direction, 0.1), rtol=1e-4)   # same direction, 1/10 of it
    assert update_norm(clipped["b"].arrays, base) == pytest.approx(0.5, rel=1e-5)  # under C: kept
    assert torch.equal(clipped["a"].arrays["count"], big["count"])                  # integers are no update
    assert metrics == {CLIPPED_FRACTION: 0.5}
    assert torch.equal(replies["a"].arrays["w"], big["w"])                          # the replies are not mutated

    new, metrics = strategy.aggregate_train(1, replies)
    assert update_norm(new, base) <= 1.0 + 1e-5  # the released update obeys the bound, with no noise
    assert metrics == {CLIPPED_FRACTION: 0.5, NOISE_STD: 0.0}


def test_client_side_clipping_happens_before_sending_and_the_server_counts_it():
    base = reference()
    privacy = private("client_fixed", clipping_norm=0.25)
    config = privacy.fit_config()
    sent = protect_reply(FitRes(arrays=moved(base, 3.0, seed=3), num_examples=5), base, config, seed=0)
    kept = protect_reply(FitRes(arrays=moved(base, 0.1, seed=4), num_examples=5), base, config, seed=0)
    assert update_norm(sent.arrays, base) == pytest.approx(0.25, rel=1e-5) and sent.metrics[CLIPPED] == 1.0
    assert update_norm(kept.arrays, base) == pytest.approx(0.1, rel=1e-5) and kept.metrics[CLIPPED] == 0.0
    replies = {"a": sent, "b": kept}
    same, metrics = privacy.clip_replies(1, replies, base)
    assert same is replies and metrics == {CLIPPED_FRACTION: 0.5}  # the server does not clip again
    untouched = FitRes(arrays=moved(base, 3.0, seed=3), num_examples=5)
    assert protect_reply(untouched, base, {}, seed=0) is untouched  # no DP in the round config: as trained


# ------------------------------------------------------------------------------------------------ noise
def test_noise_std_follows_the_formula_with_uniform_and_with_uneven_weights():
    zeros = {"w": torch.zeros(400, 500), "count": torch.tensor(3)}
    replies = {cid: FitRes(arrays=zeros, num_examples=1) for cid in "abcd"}
    privacy = private("server_fixed", noise_multiplier=2.0, clipping_norm=0.5, seed=9)
    before = np.random.get_state()[1].copy()

    noisy, metrics = privacy.noise(3, zeros, replies, {cid: 1.0 for cid in replies})
    assert metrics[NOISE_STD] == pytest.approx(2.0 * 0.5 / 4)  # Flower's z·C/n with n = 4 uniform clients
    assert float(noisy["w"].std()) == pytest.approx(0.25, rel=0.02) and abs(float(noisy["w"].mean())) < 0.005
    assert torch.equal(noisy["count"], zeros["count"])
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # NumPy's global stream is left as it was

    uneven = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 9.0}                  # one client holds 3/4 of the weight
    noisy, metrics = privacy.noise(3, zeros, replies, uneven)
    assert metrics[NOISE_STD] == pytest.approx(2.0 * 0.5 * 0.75)
    assert float(noisy["w"].std()) == pytest.approx(0.75, rel=0.02)

    again, _ = privacy.noise(3, zeros, replies, uneven)
    other_round, _ = privacy.noise(4, zeros, replies, uneven)
    assert torch.equal(again["w"], noisy["w"]) and not torch.equal(other_round["w"], noisy["w"])  # seeded by round


def test_local_dp_noises_each_update_on_the_client_and_not_the_aggregate():
    base = {"w": torch.zeros(300, 300)}
    privacy = private("local", noise_multiplier=1.5, clipping_norm=0.2)
    reply = protect_reply(FitRes(arrays={"w": torch.zeros(300, 300)}, num_examples=1), base, privacy.fit_config(),
                          seed=4)
    assert float(reply.arrays["w"].std()) == pytest.approx(1.5 * 0.2, rel=0.02)
    aggregate_arrays = {"w": torch.ones(3)}
    out, metrics = privacy.noise(1, aggregate_arrays, {"a": reply}, {"a": 1.0})
    assert out is aggregate_arrays and metrics == {NOISE_STD: pytest.approx(0.3)}


def test_page_clips_before_scoring_and_noises_with_its_own_weights():
    page = PAGE(warmup=1, seed=3, agent={"batch_size": 4})
    page.bind_server_evaluator(lambda arrays: {"auc_mean": 0.6, "logloss_mean": 0.5})
    page.use_privacy(private("client_fixed", noise_multiplier=1.0, clipping_norm=0.5))
    base = {"w": torch.zeros(4)}
    instructions = page.configure_train(1, base, ["c0", "c1"])
    assert all(ins.config["dp_clipping_norm"] == 0.5 for ins in instructions.values())
    replies = {cid: protect_reply(FitRes(arrays={"w": torch.full((4,), 1.0 + k)}, num_examples=10,
                                         metrics={"score/received_auc": 0.5, "score/trained_logloss": 0.6}),
                                  base, instructions[cid].config, seed=0) for k, cid in enumerate(sorted(instructions))}
    _, metrics = page.aggregate_train(1, replies)
    heaviest = max(metrics[f"page/weight/{cid}"] for cid in replies)
    assert metrics[CLIPPED_FRACTION] == 1.0 and metrics[NOISE_STD] == pytest.approx(0.5 * heaviest)
    assert any("docs/privacy.md" in line for line in page.notices())  # says what DP does not cover here


# ----------------------------------------------------------------------------------------- the switch
def test_mode_none_changes_nothing_a_run_computes_nor_its_identity(tmp_path):
    base = reference()
    replies = {"a": FitRes(arrays=moved(base, 10.0, seed=1), num_examples=3),
               "b": FitRes(arrays=moved(base, 2.0, seed=2), num_examples=5)}
    strategy = FedAvg()
    strategy.use_privacy(private("none", noise_multiplier=5.0, clipping_norm=1e-3))
    instructions = strategy.configure_train(1, base, ["a", "b"])
    assert set(instructions["a"].config) == {"server_round", "local_epochs", "lr"}  # nothing new sent
    new, metrics = strategy.aggregate_train(1, replies)
    expected = aggregate(replies, {"a": 3.0, "b": 5.0}, base)  # the aggregation as it was before DP existed
    assert metrics == {} and all(torch.equal(new[n], expected[n]) for n in expected)

    def hash_of(*overrides: str) -> str:
        cfg = compose_train([*TINY, *isolated(tmp_path)[:4], *overrides], config_name="federate")
        return provenance.config_hash(federated_identity(OmegaConf.to_container(cfg, resolve=True)))

    assert hash_of() == hash_of("federated.dp.mode=none")
    assert hash_of() != hash_of("federated.dp.mode=server_fixed")  # the comparison can fail

    def one_round(*overrides: str) -> dict[str, torch.Tensor]:
        cfg = compose_train([*TINY, "federated.rounds=1", *isolated(tmp_path)[:4], *overrides],
                            config_name="federate")
        setup = build_federated(cfg)
        metrics = setup.simulation.run_round()
        assert not any(key.startswith("dp/") for key in metrics)
        return setup.simulation.state.global_arrays

    plain, off = one_round(), one_round("federated.dp.mode=none", "federated.dp.noise_multiplier=3.0")
    assert all(torch.equal(plain[n], off[n]) for n in plain)  # bit-identical


@pytest.mark.parametrize(("overrides", "named"), [
    (["federated.dp.mode=server_fixed", "federated.dp.noise_multiplier=-0.5"], "federated.dp.noise_multiplier"),
    (["federated.dp.mode=client_fixed", "federated.dp.clipping_norm=0"], "federated.dp.clipping_norm"),
    (["federated.dp.mode=gaussian"], "federated.dp.mode"),
    (["+federated.dp.epsilon=1.0"], "federated.dp.epsilon"),
    (["federated=local", "federated.dp.mode=local"], "federated.dp.mode"),
    (["federated.dp.mode=server_fixed", "federated.sparse_embeddings=true"], "federated.sparse_embeddings"),
])
def test_bad_privacy_settings_fail_with_one_line_naming_the_setting(tmp_path, overrides, named):
    cfg = compose_train([*TINY, *isolated(tmp_path)[:4], *overrides], config_name="federate")
    with pytest.raises(UserInputError) as error:
        build_federated(cfg)
    assert named in str(error.value) and "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------ a real run
def test_a_private_federated_run_logs_its_dp_metrics_every_round(tmp_path):
    seeded_store(tmp_path)
    cfg = compose_train([*TINY, "federated.rounds=2", "federated.dp.mode=server_fixed",
                         "federated.dp.noise_multiplier=0.5", "federated.dp.clipping_norm=1e-3",
                         *isolated(tmp_path)[:4]], config_name="federate")
    last = run_federation(cfg, functools.partial(build_federated, cfg))
    assert last[CLIPPED_FRACTION] == 1.0  # every real update is longer than 1e-3
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("m3oe-federated").experiment_id])
    for key in (CLIPPED_FRACTION, NOISE_STD):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2], key
    noise = [m.value for m in client.get_metric_history(run.info.run_id, NOISE_STD)]
    assert all(0.5 * 1e-3 / 3 <= std <= 0.5 * 1e-3 for std in noise)  # z·C·w_max, w_max in [1/3, 1]
