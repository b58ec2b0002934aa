"""What every entry point shares: the config folder, composing and building from it, clean failures.

Bad input must end in one line naming the file/line/setting and what to do, exit code 2, no stack
trace (``HYDRA_FULL_ERROR=1`` shows it). Hydra wraps exceptions raised inside ``instantiate``, so
:func:`build` unwraps our :class:`UserInputError` again.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import hydra
from hydra import compose as compose_config
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from m3oe_lightning.errors import Interrupted, UserInputError

T = TypeVar("T")

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def folder_name(value: str) -> str:
    """``${folder_name:${task_name}}``: a setting used in a folder path, with path separators neutralised.

    A resolver, because Hydra creates its output folder before any of our code sees the config; the
    settings check then refuses such a name in one line (``training.system.validate``).
    """
    text = re.sub(r"[/\\]", "_", str(value))
    return "_" if text in ("", ".", "..") else text


# Config groups each entry point does not compose (so its --help does not offer them).
NOT_COMPOSED = {"train": ("federated", "experiment/federated", "shared"),
                "federate": ("trainer", "callbacks", "debug", "experiment/paper",
                             "experiment/diagnose", "experiment/automl", "protocol", "shared"),
                "tune": ("federated", "experiment/federated", "shared")}
# Entry points that compose only these groups (a trained model brings its own data and model settings).
ONLY_COMPOSED = {"predict": ("logger", "paths"), "export": ("logger", "paths")}


def config_groups(entry: str) -> str:
    """``--help``'s list of ``group: option, …`` for one entry point (Hydra's own lists every group)."""
    root = Path(CONF_DIR)
    lines = []
    for folder in sorted(p for p in root.rglob("*") if p.is_dir() and p.name != "hydra"):
        group = folder.relative_to(root).as_posix()
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        only = ONLY_COMPOSED.get(entry)
        if only is not None and group not in only:
            continue
        if options and not group.startswith("hydra") and group not in NOT_COMPOSED.get(entry, ()):
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


OmegaConf.register_new_resolver("folder_name", folder_name, replace=True)
OmegaConf.register_new_resolver("config_groups", config_groups, replace=True)


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


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`Interrupted` while the body runs (previous handlers restored after).

    Lightning's own SIGTERM handler (installed by every Trainer) chains to this one, so a ``kill`` during
    ``fit`` still ends the run: Lightning alone would stop with ``SystemExit(0)`` and a sweep would report
    success.
    """
    def raise_interrupted(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield
        return
    previous = {sig: signal.signal(sig, raise_interrupted) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def report_user_errors(fn: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Run ``fn(cfg)``: a :class:`UserInputError` becomes one line on stderr and exit code 2; SIGTERM/SIGINT
    one line and exit code 128 + the signal's number (the tracked run was marked KILLED on the way out)."""
    try:
        with signals_interrupt():
            return fn(cfg)
    except UserInputError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as stop:
        print(f"interrupted by {signal.Signals(stop.signum).name}: the run is marked KILLED", file=sys.stderr)
        sys.exit(128 + stop.signum)


def exits_on_interrupt(hydra_main: Callable[[], Any]) -> Callable[[], None]:
    """An ``@hydra.main`` entry whose sweep's launching process (``-m``) stopped by SIGTERM/SIGINT ends with
    one line and exit code 128 + the signal's number, not a traceback (:class:`MLflowSweepRun` has marked the
    sweep's unfinished runs KILLED by then). A single run and each job exit through :func:`report_user_errors`.
    """
    @functools.wraps(hydra_main)
    def main() -> None:
        try:
            hydra_main()
        except (Interrupted, KeyboardInterrupt) as stop:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            signum = stop.signum if isinstance(stop, Interrupted) else int(signal.SIGINT)
            print(f"interrupted by {signal.Signals(signum).name}: the sweep stopped; its unfinished runs are "
                  f"marked KILLED", file=sys.stderr)
            sys.exit(128 + signum)

    return main
