"""The Flower run config: what ``flwr run --run-config`` carries to the ServerApp and every node.

Both sides compose the ``federate`` Hydra config from it: the key ``hydra-overrides`` (a shell-quoted string
of Hydra overrides, e.g. ``"data=synthetic federated=page federated.rounds=5"``) is composed onto
``conf/federate.yaml``, so the server and every node run the same settings.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

from m3oe_lightning.config import compose
from m3oe_lightning.errors import UserInputError, check_number

# The run config (pyproject.toml [tool.flwr.app.config] holds the same defaults; `flwr run` only accepts
# overrides of keys listed there, and Python-API simulations get an empty run config, hence the copy here).
RUN_CONFIG_DEFAULTS: dict[str, str | float] = {
    "hydra-overrides": "",   # Hydra overrides for conf/federate.yaml, shell-quoted, space-separated
    "node-timeout": 600.0,   # seconds the server waits for a node per training client (and their answers)
    "round-timeout": 3600.0,  # seconds to wait for replies in a round when federated.client_timeout is null
}


def overrides_from(run_config: Mapping[str, Any], base: Sequence[str] = ()) -> list[str]:
    """``base`` (given when the app was made) followed by the run config's ``hydra-overrides`` (later wins)."""
    extra = run_config.get("hydra-overrides", RUN_CONFIG_DEFAULTS["hydra-overrides"])
    if not isinstance(extra, str):
        raise UserInputError(f"run config hydra-overrides={extra!r}: use a string of Hydra overrides")
    return [*base, *shlex.split(extra)]


def compose_federate(overrides: Sequence[str]) -> DictConfig:
    """The ``federate`` config as ``python -m m3oe_lightning.federate <overrides>`` would compose it.

    The Hydra runtime is set too, because the config interpolates ``${hydra:...}`` (the output dir).
    """
    return compose("federate", overrides, runtime=True)


def seconds_setting(run_config: Mapping[str, Any], key: str) -> float:
    """A run-config timeout in seconds (``flwr run --run-config``), checked."""
    value = run_config.get(key, RUN_CONFIG_DEFAULTS[key])
    check_number(f"run config {key}", value, low=0, low_open=True)
    return float(value)
