"""PAGE's agents: plain-torch DDPG (Lillicrap et al., 2016) as in PAGE's released code.

The released code (``ivy-hjq/PAGE``, ``PAGE&baseline(Dap-FL)/utils`` and ``ddpg_page.py``, in the style
of the ``pytorch-ddpg`` code) is the specification (docs/page.md, §1.1 and §1.5); the one intended
difference is docs/page.md, Decision 2: the replay buffer stores the **raw** actor output (tanh output
plus exploration noise, clipped to [-1, 1]), never the learning rate / epochs / weights it is mapped to.

* :class:`Actor`: state → 40 → 30 → action, ReLU between layers, tanh on the output;
* :class:`Critic`: state → 40, concatenated with the action → 30 → 1;
* :class:`ReplayBuffer`: a ring buffer of ``(s, a_raw, r, s')``; uniform sampling with replacement
  (the released ``SequentialMemory`` also samples with replacement while it holds fewer rows than a batch);
* :class:`OUNoise`: Ornstein–Uhlenbeck process (θ, σ, μ, dt = 1e-2), seeded;
* :class:`DDPGAgent`: the four networks, two Adam optimisers, the buffer, the noise and a decaying ε.

No MLflow, no Lightning. Everything an agent is (weights, optimiser moments, buffer, noise state, ε,
RNG state) is in :meth:`DDPGAgent.state_dict`, which holds only tensors and Python scalars so that
the server state loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from m3oe_lightning.seeds import derive_seed

HIDDEN = (40, 30)


def _fanin_init(layer: nn.Linear, generator: torch.Generator) -> None:
    bound = 1.0 / math.sqrt(layer.weight.shape[1])  # pytorch-ddpg's fanin_init (size[0] of the transposed weight)
    nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


class Actor(nn.Module):
    """``state → 40 → 30 → action`` (ReLU, ReLU, tanh): actions in [-1, 1]."""

    def __init__(self, state_dim: int, action_dim: int, *, init_w: float = 3e-3,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        generator = generator or torch.Generator().manual_seed(0)
        self.fc1 = nn.Linear(state_dim, HIDDEN[0])
        self.fc2 = nn.Linear(HIDDEN[0], HIDDEN[1])
        self.fc3 = nn.Linear(HIDDEN[1], action_dim)
        _fanin_init(self.fc1, generator)
        _fanin_init(self.fc2, generator)
        nn.init.uniform_(self.fc3.weight, -init_w, init_w, generator=generator)
        nn.init.uniform_(self.fc3.bias, -init_w, init_w, generator=generator)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(state))))))


class Critic(nn.Module):
    """``Q(s, a)``: ``state → 40``, concatenated with the action, ``→ 30 → 1``."""

    def __init__(self, state_dim: int, action_dim: int, *, init_w: float = 3e-3,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        generator = generator or torch.Generator().manual_seed(0)
        self.fc1 = nn.Linear(state_dim, HIDDEN[0])
        self.fc2 = nn.Linear(HIDDEN[0] + action_dim, HIDDEN[1])
        self.fc3 = nn.Linear(HIDDEN[1], 1)
        _fanin_init(self.fc1, generator)
        _fanin_init(self.fc2, generator)
        nn.init.uniform_(self.fc3.weight, -init_w, init_w, generator=generator)
        nn.init.uniform_(self.fc3.bias, -init_w, init_w, generator=generator)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.fc1(state))
        return self.fc3(torch.relu(self.fc2(torch.cat([hidden, action], dim=-1))))


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """``θ_target ← (1 − τ)·θ_target + τ·θ_source`` (τ = 1: hard copy)."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            t.mul_(1.0 - tau).add_(s, alpha=tau)


class ReplayBuffer:
    """Ring buffer of transitions ``(state, raw action, reward, next state)`` (docs/page.md, Decision 2:
    raw actions)."""

    def __init__(self, capacity: int, state_dim: int, action_dim: int) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity {capacity} must be ≥ 1")
        self.capacity, self.state_dim, self.action_dim = int(capacity), int(state_dim), int(action_dim)
        self.states = torch.zeros(self.capacity, self.state_dim)
        self.actions = torch.zeros(self.capacity, self.action_dim)
        self.rewards = torch.zeros(self.capacity)
        self.next_states = torch.zeros(self.capacity, self.state_dim)
        self.size = 0
        self.position = 0

    def __len__(self) -> int:
        return self.size

    def push(self, state: torch.Tensor, action: torch.Tensor, reward: float, next_state: torch.Tensor) -> None:
        i = self.position
        self.states[i] = torch.as_tensor(state, dtype=torch.float32).reshape(self.state_dim)
        self.actions[i] = torch.as_tensor(action, dtype=torch.float32).reshape(self.action_dim)
        self.rewards[i] = float(reward)
        self.next_states[i] = torch.as_tensor(next_state, dtype=torch.float32).reshape(self.state_dim)
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        if self.size == 0:
            raise ValueError("sampling an empty replay buffer")
        index = torch.randint(0, self.size, (int(batch_size),), generator=generator)
        return self.states[index], self.actions[index], self.rewards[index], self.next_states[index]

    def state_dict(self) -> dict[str, Any]:
        n = self.size
        return {"states": self.states[:n].clone(), "actions": self.actions[:n].clone(),
                "rewards": self.rewards[:n].clone(), "next_states": self.next_states[:n].clone(),
                "size": n, "position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        n = int(state["size"])
        for key in ("states", "actions", "rewards", "next_states"):
            getattr(self, key).zero_()
            getattr(self, key)[:n] = state[key]
        self.size, self.position = n, int(state["position"])


class OUNoise:
    """Ornstein–Uhlenbeck noise ``x ← x + θ(μ − x)dt + σ√dt·N(0, 1)`` with its own generator."""

    def __init__(self, size: int, *, theta: float = 0.15, sigma: float = 0.2, mu: float = 0.0, dt: float = 1e-2,
                 seed: int = 0) -> None:
        self.size, self.theta, self.sigma, self.mu, self.dt = int(size), theta, sigma, mu, dt
        self.generator = torch.Generator().manual_seed(int(seed))
        self.x = torch.zeros(self.size)

    def sample(self) -> torch.Tensor:
        gauss = torch.randn(self.size, generator=self.generator)
        self.x = self.x + self.theta * (self.mu - self.x) * self.dt + self.sigma * math.sqrt(self.dt) * gauss
        return self.x.clone()

    def state_dict(self) -> dict[str, Any]:
        return {"x": self.x.clone(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.x = state["x"].clone()
        self.generator.set_state(state["generator"])


class DDPGAgent:
    """One DDPG learner (the released ``DDPG`` class with ``nb_agents=1``).

    Args:
        state_dim / action_dim: sizes of the observation and of the action.
        actor_lr / critic_lr: Adam learning rates.
        tau: soft target update rate.
        gamma: discount.
        batch_size: transitions per update.
        capacity: replay buffer size.
        ou_theta / ou_sigma / ou_mu: exploration noise.
        epsilon_decay: ε (the noise scale) starts at 1 and loses ``1/epsilon_decay`` per noisy action
            (released code: 500, i.e. over 500 rounds); ≤ 0: no decay (Dap-FL).
        init_w: range of the last layers' initial weights.
        seed: seeds network initialisation, noise, random actions and buffer sampling.
    """

    def __init__(self, state_dim: int, action_dim: int, *, actor_lr: float = 1e-4, critic_lr: float = 1e-3,
                 tau: float = 0.01, gamma: float = 0.99, batch_size: int = 32, capacity: int = 1000,
                 ou_theta: float = 0.15, ou_sigma: float = 0.2, ou_mu: float = 0.0, epsilon_decay: float = 500.0,
                 init_w: float = 3e-3, seed: int = 0) -> None:
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        self.tau, self.gamma, self.batch_size = float(tau), float(gamma), int(batch_size)
        self.depsilon = 1.0 / float(epsilon_decay) if epsilon_decay and epsilon_decay > 0 else 0.0
        self.epsilon = 1.0
        init = torch.Generator().manual_seed(int(seed))
        self.actor = Actor(self.state_dim, self.action_dim, init_w=init_w, generator=init)
        self.actor_target = Actor(self.state_dim, self.action_dim, init_w=init_w, generator=init)
        self.critic = Critic(self.state_dim, self.action_dim, init_w=init_w, generator=init)
        self.critic_target = Critic(self.state_dim, self.action_dim, init_w=init_w, generator=init)
        soft_update(self.actor_target, self.actor, 1.0)   # targets start as copies (hard_update)
        soft_update(self.critic_target, self.critic, 1.0)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=actor_lr)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=critic_lr)
        self.buffer = ReplayBuffer(capacity, self.state_dim, self.action_dim)
        self.noise = OUNoise(self.action_dim, theta=ou_theta, sigma=ou_sigma, mu=ou_mu,
                             seed=derive_seed(seed, "noise"))
        self.generator = torch.Generator().manual_seed(derive_seed(seed, "actions"))  # random actions, buffer sampling
        self.updates = 0

    # ----------------------------------------------------------------------------------- acting
    def random_action(self, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
        """A warm-up action: uniform in [low, high]^action_dim, inside the actor's own space [-1, 1]."""
        return low + torch.rand(self.action_dim, generator=self.generator) * (high - low)

    @torch.no_grad()
    def select_action(self, state: torch.Tensor, *, explore: bool = True) -> torch.Tensor:
        """``clip(actor(s) + ε·OU, −1, 1)``; ε decays by ``1/epsilon_decay`` per exploring call."""
        action = self.actor(torch.as_tensor(state, dtype=torch.float32).reshape(1, -1))[0]
        if explore:
            action = action + max(self.epsilon, 0.0) * self.noise.sample()
            self.epsilon = max(self.epsilon - self.depsilon, 0.0)
        return action.clamp(-1.0, 1.0)

    def observe(self, state: torch.Tensor, raw_action: torch.Tensor, reward: float, next_state: torch.Tensor) -> None:
        self.buffer.push(state, raw_action, reward, next_state)

    # ---------------------------------------------------------------------------------- learning
    def update(self) -> tuple[float, float]:
        """One critic and one actor step on a sampled batch, then soft target updates: (value loss, policy loss)."""
        if len(self.buffer) == 0:
            return float("nan"), float("nan")
        s, a, r, s2 = self.buffer.sample(self.batch_size, self.generator)
        with torch.no_grad():
            target_q = r.unsqueeze(1) + self.gamma * self.critic_target(s2, self.actor_target(s2))
        value_loss = nn.functional.mse_loss(self.critic(s, a), target_q)
        self.critic_optim.zero_grad()
        value_loss.backward()
        self.critic_optim.step()

        policy_loss = -self.critic(s, self.actor(s)).mean()
        self.actor_optim.zero_grad()
        policy_loss.backward()
        self.actor_optim.step()

        soft_update(self.actor_target, self.actor, self.tau)
        soft_update(self.critic_target, self.critic, self.tau)
        self.updates += 1
        return value_loss.detach().item(), policy_loss.detach().item()

    # ------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "actor_target": self.actor_target.state_dict(),
                "critic": self.critic.state_dict(), "critic_target": self.critic_target.state_dict(),
                "actor_optim": self.actor_optim.state_dict(), "critic_optim": self.critic_optim.state_dict(),
                "buffer": self.buffer.state_dict(), "noise": self.noise.state_dict(),
                "generator": self.generator.get_state(), "epsilon": self.epsilon, "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in ("actor", "actor_target", "critic", "critic_target", "actor_optim", "critic_optim",
                     "buffer", "noise"):
            getattr(self, name).load_state_dict(state[name])
        self.generator.set_state(state["generator"])
        self.epsilon, self.updates = float(state["epsilon"]), int(state["updates"])
