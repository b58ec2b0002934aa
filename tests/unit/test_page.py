"""PAGE: the DDPG agents (page_agents.py) and the PAGE strategy, without training any recommender."""

from __future__ import annotations

import copy

import pytest
import torch

from m3oe_lightning.data.readers.synthetic import make_synthetic
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.federated.factory import build_strategy
from m3oe_lightning.federated.messages import FitRes
from m3oe_lightning.federated.partition import partition, pooled_split
from m3oe_lightning.federated.simulation import ServerState
from m3oe_lightning.federated.strategies import PAGE
from m3oe_lightning.federated.strategies.page_agents import Actor, DDPGAgent, OUNoise, ReplayBuffer, soft_update
from tests.helpers import compose_train

CLIENTS = ["c0", "c1", "c2"]


# ------------------------------------------------------------------------------------------------ DDPG
def test_actor_output_is_in_minus_one_one():
    actor = Actor(3, 5, init_w=1.0, generator=torch.Generator().manual_seed(0))
    out = actor(torch.randn(256, 3) * 100)
    assert out.shape == (256, 5) and out.min() >= -1 and out.max() <= 1
    assert out.abs().max() > 0.9  # large states saturate: the tanh range is used, not a smaller one


def test_replay_buffer_stores_raw_actions_and_wraps_around():
    buffer = ReplayBuffer(capacity=3, state_dim=1, action_dim=2)
    for k in range(5):
        buffer.push(torch.tensor([k]), torch.tensor([-0.5, 0.25 * k - 0.5]), float(k), torch.tensor([k + 1]))
    assert len(buffer) == 3 and buffer.position == 2
    assert sorted(buffer.rewards.tolist()) == [2.0, 3.0, 4.0]
    assert torch.equal(buffer.actions[0], torch.tensor([-0.5, 0.25 * 3 - 0.5]))  # stored as given (raw)
    s, a, r, s2 = buffer.sample(8, torch.Generator().manual_seed(1))
    assert a.shape == (8, 2) and torch.equal(s2, s + 1)

    restored = ReplayBuffer(capacity=3, state_dim=1, action_dim=2)
    restored.load_state_dict(copy.deepcopy(buffer.state_dict()))
    assert torch.equal(restored.actions, buffer.actions) and restored.position == buffer.position


def test_an_update_changes_actor_and_critic_and_moves_targets_by_tau():
    agent = DDPGAgent(1, 2, actor_lr=1e-2, critic_lr=1e-2, tau=0.1, batch_size=4, seed=3)
    for k in range(6):
        agent.observe(torch.tensor([0.1 * k]), agent.random_action(), 1.0 + k, torch.tensor([0.1 * (k + 1)]))
    actor, critic = copy.deepcopy(agent.actor), copy.deepcopy(agent.critic)
    actor_target, critic_target = copy.deepcopy(agent.actor_target), copy.deepcopy(agent.critic_target)
    value_loss, policy_loss = agent.update()
    assert value_loss > 0 and agent.updates == 1
    for before, after in ((actor, agent.actor), (critic, agent.critic)):
        assert any(not torch.equal(p, q) for p, q in zip(before.parameters(), after.parameters()))
    for target_before, target_after, online in ((actor_target, agent.actor_target, agent.actor),
                                                (critic_target, agent.critic_target, agent.critic)):
        for t0, t1, s in zip(target_before.parameters(), target_after.parameters(), online.parameters()):
            assert torch.allclose(t1, 0.9 * t0 + 0.1 * s, atol=1e-7)


def test_soft_update_maths():
    source, target = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with torch.no_grad():
        for p in source.parameters():
            p.fill_(1.0)
        for p in target.parameters():
            p.fill_(3.0)
    soft_update(target, source, 0.25)
    assert all(torch.allclose(p, torch.full_like(p, 0.75 * 3 + 0.25 * 1)) for p in target.parameters())
    soft_update(target, source, 1.0)
    assert all(torch.equal(p, torch.ones_like(p)) for p in target.parameters())


def test_ou_noise_is_seeded_and_resumable():
    a, b, c = OUNoise(2, seed=7), OUNoise(2, seed=7), OUNoise(2, seed=8)
    first = [a.sample() for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(first, [b.sample() for _ in range(5)]))
    assert not torch.equal(first[-1], [c.sample() for _ in range(5)][-1])
    saved = copy.deepcopy(a.state_dict())
    expected = [a.sample() for _ in range(3)]
    again = OUNoise(2, seed=0)
    again.load_state_dict(saved)
    assert all(torch.equal(x, again.sample()) for x in expected)


def test_exploration_is_clipped_and_epsilon_decays():
    agent = DDPGAgent(1, 2, ou_sigma=50.0, epsilon_decay=4, seed=0)
    actions = [agent.select_action(torch.tensor([0.3])) for _ in range(3)]
    assert all(a.min() >= -1 and a.max() <= 1 for a in actions)
    assert agent.epsilon == pytest.approx(0.25)
    greedy = agent.select_action(torch.tensor([0.3]), explore=False)
    assert torch.equal(greedy, agent.actor(torch.tensor([[0.3]]))[0].detach().clamp(-1, 1))
    assert agent.epsilon == pytest.approx(0.25)  # no decay without exploration


# ---------------------------------------------------------------------------------------------- PAGE
def fake_score(arrays):
    """A stand-in for the server validation set: AUC and logloss from the mean weight."""
    m = float(arrays["w"].mean())
    return {"auc_mean": 0.5 + 0.4 * float(torch.tanh(torch.tensor(m))), "logloss_mean": 0.7 / (1 + abs(m))}


def make_page(**kwargs) -> PAGE:
    settings = {"warmup": 1, "lr_min": 1e-3, "lr_max": 2e-2, "epochs_max": 4, "seed": 11,
                "agent": {"batch_size": 4, "epsilon_decay": 10}, **kwargs}
    page = PAGE(**settings)
    page.bind_server_evaluator(fake_score)
    return page


def replies_for(instructions, server_round, drop=()):
    out = {}
    for k, (cid, ins) in enumerate(sorted(instructions.items())):
        if cid in drop:
            continue
        w = ins.arrays["w"] + ins.config["lr"] * (k + 1) * ins.config["local_epochs"]
        out[cid] = FitRes(arrays={"w": w}, num_examples=10 * (k + 1),
                          metrics={"train_loss": 0.5, "score/received_auc": 0.5 + 0.01 * server_round,
                                   "score/trained_logloss": 0.6 - 0.01 * k})
    return out


def play(page: PAGE, rounds: range, arrays, drop=()):
    for r in rounds:
        instructions = page.configure_train(r, arrays, CLIENTS)
        new, _ = page.aggregate_train(r, replies_for(instructions, r, drop))
        arrays = new if new is not None else arrays
    return arrays


def test_page_weights_are_a_distribution_over_the_clients_that_replied():
    page = make_page()
    arrays = {"w": torch.zeros(4)}
    for r in (1, 2, 3):  # warm-up round, then the actor's weights
        instructions = page.configure_train(r, arrays, CLIENTS)
        replies = replies_for(instructions, r, drop={"c1"})
        weights = page.aggregation_weights(r, replies)
        assert set(weights) == {"c0", "c2"} and sum(weights.values()) == pytest.approx(1.0)
        assert all(w > 0 for w in weights.values())
        arrays, metrics = page.aggregate_train(r, replies)
        assert "page/weight/c1" not in metrics and "page/client/c1/reward" not in metrics
        assert metrics["page/weight/c0"] + metrics["page/weight/c2"] == pytest.approx(1.0)
    assert len(page.client_agents["c1"].buffer) == 0 and len(page.client_agents["c0"].buffer) == 3
    assert len(page.server_agent.buffer) == 3


def test_page_actions_are_in_range_and_buffers_hold_raw_actions():
    page = make_page(warmup=2, action_map="affine")  # the map that spreads actions over the range
    arrays = {"w": torch.zeros(4)}
    seen_lr = set()
    for r in range(1, 9):
        eps = page.client_agents["c0"].epsilon if page.client_agents else 1.0
        instructions = page.configure_train(r, arrays, CLIENTS)
        if r <= 2:  # warm-up: random actions, the actor (and ε) untouched
            assert page.client_agents["c0"].epsilon == eps
        for cid, ins in instructions.items():
            assert 1e-3 <= ins.config["lr"] <= 2e-2 and 1 <= ins.config["local_epochs"] <= 4
            assert ins.config["score_split"] == "val"
            seen_lr.add(round(ins.config["lr"], 6))
            state, raw = page._pending[cid]
            assert raw.shape == (2,) and raw.abs().max() <= 1
            assert page.map_client_action(raw) == (ins.config["lr"], ins.config["local_epochs"])
        arrays, metrics = page.aggregate_train(r, replies_for(instructions, r))
        assert metrics["page/warmup"] == float(r <= 2)  # chosen at configure time, returned with the round's
        assert metrics["page/client/c0/lr"] == instructions["c0"].config["lr"]
        buffer = page.client_agents["c0"].buffer
        stored = buffer.actions[(buffer.position - 1) % buffer.capacity]
        assert torch.equal(stored, page._pending["c0"][1])  # the raw action, not (lr, epochs)
        assert torch.equal(page.server_agent.buffer.actions[len(page.server_agent.buffer) - 1], page._server_action)
    assert len(seen_lr) > 3 and page.client_agents["c0"].updates == 6
    assert page.map_client_action(torch.tensor([-1.0, -1.0])) == (pytest.approx(1e-3), 1)
    assert page.map_client_action(torch.tensor([1.0, 1.0])) == (pytest.approx(2e-2), 4)
    log_page = make_page(lr_scale="log", action_map="affine")
    assert log_page.map_client_action(torch.tensor([0.0, 0.0]))[0] == pytest.approx((1e-3 * 2e-2) ** 0.5)


def test_page_ablations_fix_lr_epochs_and_weights():
    page = make_page(learn_lr=False, learn_epochs=False, learn_weights=False, warmup=0)
    instructions = page.configure_train(1, {"w": torch.zeros(2)}, CLIENTS)
    assert {(i.config["lr"], i.config["local_epochs"]) for i in instructions.values()} == {(2e-2, 4)}
    weights = page.aggregation_weights(1, replies_for(instructions, 1, drop={"c2"}))
    assert weights == {"c0": 0.5, "c1": 0.5}
    assert make_page(paper_parity=True).score_split == "test"


def test_page_state_round_trips_through_the_saved_server_state(tmp_path):
    page = make_page(warmup=1)
    arrays = play(page, range(1, 5), {"w": torch.zeros(4)})
    path = tmp_path / "server_state.pt"
    ServerState(server_round=4, global_arrays=arrays, strategy_state=page.state_dict()).save(path)

    restored = make_page(warmup=1)
    restored.load_state_dict(ServerState.load(path).strategy_state)
    for r in (5, 6):  # identical next actions, rewards and buffers
        a, b = page.configure_train(r, arrays, CLIENTS), restored.configure_train(r, arrays, CLIENTS)
        assert {c: i.config for c, i in a.items()} == {c: i.config for c, i in b.items()}
        assert torch.equal(page._server_action, restored._server_action)
        new_a, metrics_a = page.aggregate_train(r, replies_for(a, r))
        new_b, metrics_b = restored.aggregate_train(r, replies_for(b, r))
        assert torch.equal(new_a["w"], new_b["w"]) and metrics_a == metrics_b
        arrays = new_a
    for cid in CLIENTS:
        assert torch.equal(page.client_agents[cid].buffer.actions, restored.client_agents[cid].buffer.actions)
        assert page.client_agents[cid].epsilon == restored.client_agents[cid].epsilon


def test_page_config_composes_and_bad_settings_fail_with_one_clear_error():
    cfg = compose_train(["federated=page"], config_name="federate")
    page = build_strategy(cfg.federated, cfg.seed)
    assert type(page) is PAGE and page.name == cfg.federated.name == "page" and cfg.federated.rounds == 20
    assert (page.warmup, page.epochs_max, page.lr_max, page.server_noise) == (3, 3, 2e-2, False)
    assert page.agent_settings["epsilon_decay"] == 20 and cfg.federated.local_split[1] > 0
    bad = (("federated.lr_min=0.5", "lr_min=0.5"), ("federated.warmup=-1", "warmup=-1"),
           ("federated.lr_scale=cubic", "lr_scale='cubic'"), ("federated.epochs_max=0", "epochs_max=0"))
    for override, message in bad:
        with pytest.raises(UserInputError, match=message):
            build_strategy(compose_train(["federated=page", override], config_name="federate").federated, 0)


def test_page_prepare_checks_validation_rows_binds_its_server_set_and_tags_parity_runs():
    dataset = make_synthetic(split="random", split_seed=0, rows=900, num_users=30, num_items=20, seed=0)
    no_val = partition(dataset, partition="domain", local_split=[0.8, 0.0, 0.2])
    bound = []

    def evaluator_for(federation):
        def evaluator_of(name):  # the factory's contract: a scorer on the pooled split of that name
            bound.append(len(pooled_split(federation, name)))
            return fake_score
        return evaluator_of

    with pytest.raises(UserInputError, match="without validation rows"):
        PAGE(warmup=1).prepare(no_val, evaluator_for(no_val))
    leaky = PAGE(paper_parity=True)
    leaky.prepare(no_val, evaluator_for(no_val))  # the released code's variant scores on the test sets instead
    assert bound == [len(no_val.global_test)] and leaky.server_evaluate is fake_score
    assert leaky.run_tags() == {"page_parity": "true: PAGE's states and rewards come from the TEST splits "
                                               "(leaky, as the released code)"}
    assert len(leaky.notices()) == 1 and "paper_parity=true" in leaky.notices()[0]

    federation = partition(dataset, partition="domain")
    page = PAGE()
    page.prepare(federation, evaluator_for(federation))
    assert bound[-1] == sum(len(c.data.val) for c in federation.clients)  # the union of the clients' val splits
    assert page.run_tags() == {} and page.notices() == []
    with pytest.raises(UserInputError, match="min_clients=5 but only 3"):
        PAGE(min_clients=5).prepare(federation, evaluator_for(federation))


# ------------------------------------------------------------------------------------ action mapping
@pytest.mark.parametrize(("raw", "affine", "released"), [
    # PAGE's Synthetic ranges: lr in [1e-3, 0.1], epochs up to 20 (released epoch scale int(20 / 0.1) = 200)
    ([0.0, 0.0], (1e-3 + 0.5 * 0.099, 1 + round(0.5 * 19)), (0.1, 20)),   # an untrained actor: FedAvg's setting
    ([-0.9, -0.9], (1e-3 + 0.05 * 0.099, 1 + round(0.05 * 19)), (0.05, 10)),
    ([-1.0, -0.999], (1e-3, 1), (1e-3, 1)),                            # u = 0.0005 clipped up to lr_min
    ([1.0, 1.0], (0.1, 20), (0.1, 20)),
])
def test_both_action_maps_against_hand_computed_actions(raw, affine, released):
    for action_map, expected in (("affine", affine), ("released", released)):
        page = PAGE(lr_min=1e-3, lr_max=0.1, epochs_max=20, action_map=action_map)
        lr, epochs = page.map_client_action(torch.tensor(raw))
        assert lr == pytest.approx(expected[0]) and epochs == expected[1], action_map


def test_released_map_warms_up_uniformly_in_the_lr_range_and_transformed_replay_stores_what_was_applied():
    page = make_page(action_map="released", replay="transformed", warmup=40, lr_max=0.1, epochs_max=20)
    arrays = {"w": torch.zeros(4)}
    lrs = []
    for r in range(1, 31):
        instructions = page.configure_train(r, arrays, CLIENTS)
        lrs += [i.config["lr"] for i in instructions.values()]
        arrays, _ = page.aggregate_train(r, replies_for(instructions, r))
        buffer = page.client_agents["c0"].buffer
        stored = buffer.actions[(buffer.position - 1) % buffer.capacity]
        state, raw = page._pending["c0"]
        assert torch.allclose(stored, page.client_unit(raw))  # u after the clip, not the actor's raw output
        assert stored.min() >= 1e-3 and stored.max() <= 0.1
        server = page.server_agent.buffer.actions[len(page.server_agent.buffer) - 1]
        assert server.sum() == pytest.approx(1.0)  # the weights applied
    assert all(1e-3 <= lr <= 0.1 for lr in lrs)
    assert 0.03 < sum(lrs) / len(lrs) < 0.07  # uniform over [1e-3, 0.1] (mean 0.05), not piled on lr_max
    assert sum(lr == pytest.approx(0.1) for lr in lrs) < 5


def test_action_map_settings_compose_keep_old_hashes_at_their_defaults_and_refuse_bad_values():
    from omegaconf import OmegaConf

    from m3oe_lightning.federated.factory import federated_identity
    from m3oe_lightning.tracking.provenance import config_hash

    def identity(*overrides):
        cfg = compose_train(["federated=page", *overrides], config_name="federate")
        return config_hash(federated_identity(OmegaConf.to_container(cfg, resolve=True)))

    # runs from before the switches (the affine map, raw replay) keep their hashes; the released default is new
    assert identity("federated.action_map=affine") == identity("federated.action_map=affine", "federated.replay=raw")
    assert identity("federated.action_map=affine") not in (identity(), identity("federated.replay=transformed"))
    assert identity() == identity("federated.action_map=released")
    assert build_strategy(compose_train(["federated=page"], config_name="federate").federated, 1).action_map \
        == "released"
    assert build_strategy(compose_train(["federated=page", "federated.action_map=affine"],
                                        config_name="federate").federated, 1).action_map == "affine"
    for bad, message in ((dict(action_map="clip"), "federated.action_map='clip': use one of affine, released"),
                         (dict(replay="mapped"), "federated.replay='mapped': use one of raw, transformed"),
                         (dict(action_map="released", lr_scale="log"), "the released action map is linear")):
        with pytest.raises(UserInputError, match=message):
            PAGE(**bad)
