"""What every entry point shares: the config folder, composing and building from it, clean failures.

Bad input must end in one line naming the file/line/setting and what to do, exit code 2, no stack
trace (``HYDRA_FULL_ERROR=1`` shows it). Hydra wraps exceptions raised inside ``instantiate``, so
:func:`build` unwraps our :class:`UserInputError` again.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import hydra
from hydra import compose as compose_config
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, open_dict

from m3oe_lightning.errors import UserInputError

T = TypeVar("T")

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def compose(name: str, overrides: Sequence[str] = (), *, runtime: bool = False) -> DictConfig:
    """Config ``name`` (``train`` / ``federate``) with ``overrides``, as its entry point composes it.

    ``runtime=True`` also sets Hydra's runtime (``${hydra:...}`` interpolations such as the output dir
    then resolve, and ``HydraConfig.get()`` works) for code that runs an entry point's body without
    ``@hydra.main``: the Flower apps, tests. An override that does not compose is a user error.
    """
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose_config(config_name=name, overrides=list(overrides), return_hydra_config=runtime)
    except HydraException as error:
        raise UserInputError(f"cannot compose {name} with {list(overrides)}: {error}") from None
    finally:
        GlobalHydra.instance().clear()
    if runtime:
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def build(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with plain containers, re-raising our user errors unwrapped.

    ``kwargs`` are runtime objects (a schema, callbacks): they are passed to the constructor as they
    are, not merged into the config (Hydra would turn a dataclass into a config node).
    """
    try:
        factory = hydra.utils.instantiate(node, _convert_="all", _partial_=True)
        return factory(**kwargs)
    except UserInputError:
        raise
    except Exception as error:  # a constructor rejecting its settings is a settings problem
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, UserInputError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        target = node.get("_target_", "?")
        raise UserInputError(f"cannot build {target}: {error.__cause__ or error}") from error


def report_user_errors(fn: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Run ``fn(cfg)``; a :class:`UserInputError` becomes one line on stderr and exit code 2."""
    try:
        return fn(cfg)
    except UserInputError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
