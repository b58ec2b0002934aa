"""What every entry point shares: building objects from config nodes, and clean failures.

Bad input must end in one line naming the file/line/setting and what to do, exit code 2, no stack
trace (``HYDRA_FULL_ERROR=1`` shows it). Hydra wraps exceptions raised inside ``instantiate``, so
:func:`build` unwraps our :class:`UserInputError` again.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import hydra
from omegaconf import DictConfig

from m3oe_lightning.errors import UserInputError

T = TypeVar("T")


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
