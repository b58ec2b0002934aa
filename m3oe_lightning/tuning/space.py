"""The search space: ``tune.space.<override path>=<spec>`` parsed, checked against the training config.

A parameter's name is the Hydra override path a trial sets (``optimizer.lr``), so a trial is an ordinary
training command plus ``path=value`` overrides. Specs:

- ``log:LOW:HIGH`` — a float drawn log-uniformly; ``float:LOW:HIGH`` — uniformly; ``int:LOW:HIGH`` — an
  integer, both ends included;
- ``choice:A,B,C`` — one of the values (each read as a Hydra override value: ``1e-3``, ``[64]``, ``relu``);
- a list ``[A,B,C]`` (on the command line or in YAML) — the same as ``choice:``; a grid axis.

Only choices can form a grid (``tune.sampler=grid``); ranges need TPE. Every check here runs before the
study is opened, so a bad space leaves the storage untouched.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf

from m3oe_lightning.errors import UserInputError

if TYPE_CHECKING:
    import optuna

SETTING = "tune.space"
RANGE_KINDS = ("log", "float", "int")
SCALARS = (str, int, float, bool, type(None))  # what Optuna stores as a categorical value
RESERVED_PREFIXES = ("tune.", "hydra.")
_MISSING = object()
_SPACE_ARG = re.compile(r"^\+{0,2}(tune\.space\.[^=~]+)=(.*)$", re.S)
GRAMMAR = "log:LOW:HIGH, float:LOW:HIGH, int:LOW:HIGH, choice:A,B,... or a list [A,B,...]"


@dataclass(frozen=True)
class Param:
    """One searched setting: a range (``low``..``high``) or a list of ``choices``."""

    path: str
    kind: str                       # log | float | int | choice
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()   # typed values (lists stay lists); Optuna sees :meth:`encoded` ones

    @property
    def setting(self) -> str:
        return f"{SETTING}.{self.path}"

    def encoded(self) -> list[Any]:
        """The choices as Optuna can store them: scalars as they are, a list or mapping as its override text."""
        return [value if isinstance(value, SCALARS) else override_text(value) for value in self.choices]

    def decode(self, stored: Any) -> Any:
        """The typed value of a choice Optuna returned (its :meth:`encoded` form)."""
        if self.kind != "choice":
            return stored
        for value, code in zip(self.choices, self.encoded()):
            if code == stored and type(code) is type(stored):
                return value
        return stored

    def suggest(self, trial: optuna.Trial) -> Any:
        """This trial's typed value (a retried trial gets its predecessor's fixed value back)."""
        if self.kind == "choice":
            return self.decode(trial.suggest_categorical(self.path, self.encoded()))
        if self.kind == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high))
        return trial.suggest_float(self.path, float(self.low), float(self.high), log=self.kind == "log")

    def describe(self) -> dict[str, Any]:
        """A JSON-able form: stored on the study, so a rerun with another space is refused."""
        if self.kind == "choice":
            return {"path": self.path, "kind": self.kind, "choices": [override_text(v) for v in self.choices]}
        return {"path": self.path, "kind": self.kind, "low": self.low, "high": self.high}


def override_text(value: Any) -> str:
    """``value`` as a Hydra override value reads it back: ``0.001``, ``[64,128]``, ``null``, ``'a b'``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        plain = re.fullmatch(r"[A-Za-z_][\w.\-/]*", value) and value not in ("null", "true", "false")
        return value if plain else "'" + value.replace("'", "\\'") + "'"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{override_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence):
        return "[" + ",".join(override_text(v) for v in value) + "]"
    raise TypeError(f"no override text for {value!r}")


def quote_space_arguments(arguments: Sequence[str]) -> list[str]:
    """Command-line ``tune.space.<path>=<spec>`` → ``++tune.space.<path>='<spec>'``.

    The space starts empty of the user's paths, so Hydra would want ``+``; and a spec such as
    ``choice:[64],[128]`` is no valid unquoted Hydra value. Quoted values are left as they are.
    """
    out = []
    for argument in arguments:
        match = _SPACE_ARG.match(argument)
        if match is None or match.group(2)[:1] in ("'", '"'):
            out.append(argument)
            continue
        path, spec = match.groups()
        out.append(f"++{path}=" + ("'" + spec.replace("'", "\\'") + "'"))
    return out


def parse_space(space: DictConfig | Mapping[str, Any] | None) -> list[Param]:
    """Every leaf of ``tune.space`` as a :class:`Param`, sorted by path; a spec that does not parse is refused."""
    tree = OmegaConf.to_container(space, resolve=True) if isinstance(space, DictConfig) else dict(space or {})
    leaves = _leaves(tree)
    if not leaves:
        raise UserInputError(f"{SETTING} is empty: name at least one setting to search, e.g. "
                             f"tune.space.optimizer.lr=log:1e-4:1e-1")
    return [parse_param(path, raw) for path, raw in sorted(leaves.items())]


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_leaves(value, f"{path}."))
        else:
            out[path] = value
    return out


def parse_param(path: str, raw: Any) -> Param:
    """``raw`` (a spec string or a list) of the setting at ``path`` → a :class:`Param`."""
    setting = f"{SETTING}.{path}"
    if isinstance(raw, str) and raw.strip().startswith("["):
        raw = _value(raw.strip(), setting)
    if isinstance(raw, (list, tuple)):
        return _choice(path, list(raw), setting)
    if not isinstance(raw, str) or ":" not in raw:
        raise UserInputError(f"{setting}={raw!r} is not a search space; use {GRAMMAR}")
    kind, _, rest = raw.strip().partition(":")
    if kind == "choice":
        return _choice(path, [_value(text, setting) for text in split_top_level(rest, setting)], setting)
    if kind not in RANGE_KINDS:
        raise UserInputError(f"{setting}={raw!r}: unknown kind {kind!r}; use {GRAMMAR}")
    bounds = rest.split(":")
    if len(bounds) != 2:
        raise UserInputError(f"{setting}={raw!r}: a range is {kind}:LOW:HIGH")
    low, high = (_bound(text, kind, setting, raw) for text in bounds)
    if not low < high:
        raise UserInputError(f"{setting}={raw!r}: LOW must be below HIGH")
    if kind == "log" and low <= 0:
        raise UserInputError(f"{setting}={raw!r}: a log range needs LOW > 0")
    return Param(path, kind, low, high)


def _bound(text: str, kind: str, setting: str, raw: str) -> float:
    try:
        value = int(text) if kind == "int" else float(text)
    except ValueError:
        number = "an integer" if kind == "int" else "a number"
        raise UserInputError(f"{setting}={raw!r}: {text.strip()!r} is not {number}") from None
    if not math.isfinite(value):
        raise UserInputError(f"{setting}={raw!r}: the bounds must be finite")
    return value


def _choice(path: str, values: list[Any], setting: str) -> Param:
    if not values:
        raise UserInputError(f"{setting}: an empty list of values; give at least one")
    texts = [override_text(v) for v in values]
    if len(set(texts)) != len(texts):
        raise UserInputError(f"{setting}: a value is listed twice ({', '.join(texts)})")
    return Param(path, "choice", choices=tuple(values))


def split_top_level(text: str, setting: str) -> list[str]:
    """``a,[1,2],'x,y'`` → ``["a", "[1,2]", "'x,y'"]``: commas inside brackets or quotes do not split."""
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote and text[i - 1] != "\\" else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    if depth or quote or any(not p.strip() for p in parts):
        raise UserInputError(f"{setting}=choice:{text}: unbalanced brackets or quotes, or an empty value")
    return [p.strip() for p in parts]


def _value(text: str, setting: str) -> Any:
    try:
        value = OverridesParser.create().parse_override(f"v={text}").value()
    except HydraException as error:
        raise UserInputError(f"{setting}: {text!r} does not parse as a value ({error})") from None
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def check_against(params: Sequence[Param], cfg: DictConfig) -> None:
    """Each path must name one existing setting of the composed training config, and each value (or range)
    must have that setting's type: an unknown path or a grid value of the wrong type is refused."""
    for param in params:
        if param.path.startswith(RESERVED_PREFIXES):
            raise UserInputError(f"{param.setting}: tuning settings and Hydra's own cannot be searched")
        current = OmegaConf.select(cfg, param.path, default=_MISSING, throw_on_resolution_failure=False)
        if current is _MISSING:
            raise UserInputError(f"{param.setting}: the training config has no setting {param.path} (see "
                                 f"python -m m3oe_lightning.train --cfg job with the same overrides)")
        if isinstance(current, DictConfig):
            raise UserInputError(f"{param.setting}: {param.path} is a group of settings, not one value; "
                                 f"search one of its keys")
        current = OmegaConf.to_container(current) if isinstance(current, ListConfig) else current
        if param.kind == "choice":
            for value in param.choices:
                if not fits(value, current):
                    raise UserInputError(f"{param.setting}: {override_text(value)} is {type_name(value)}, but "
                                         f"{param.path} holds {type_name(current)} ({override_text(current)})")
        elif current is not None and not fits(1 if param.kind == "int" else 0.5, current):
            raise UserInputError(f"{param.setting}: a {param.kind} range, but {param.path} holds "
                                 f"{type_name(current)} ({override_text(current)})")


def fits(value: Any, current: Any) -> bool:
    """Whether ``value`` may replace ``current``: an int where a float is, else the same kind of value."""
    if current is None:
        return True
    if isinstance(current, bool) or isinstance(value, bool):
        return isinstance(current, bool) and isinstance(value, bool)
    if isinstance(current, float):
        return isinstance(value, (int, float))
    if isinstance(current, int):
        return isinstance(value, int)
    if isinstance(current, str):
        return isinstance(value, str)
    if isinstance(current, list):
        return isinstance(value, list)
    return type(value) is type(current)


def type_name(value: Any) -> str:
    names = {bool: "a bool", int: "an integer", float: "a float", str: "a string", list: "a list",
             dict: "a mapping", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def describe_space(params: Sequence[Param]) -> str:
    """The canonical JSON of a space (what a study stores and a rerun is compared with)."""
    return json.dumps([p.describe() for p in params], sort_keys=True)


def grid_of(params: Sequence[Param]) -> dict[str, list[Any]]:
    """Optuna's ``GridSampler`` search space; refused unless every parameter is a list of choices."""
    ranges = [p for p in params if p.kind != "choice"]
    if ranges:
        shown = ", ".join(f"{p.setting}={p.kind}:{p.low:g}:{p.high:g}" for p in ranges)
        raise UserInputError(f"tune.sampler=grid: {shown} is a range; give a list of values or use tune.sampler=tpe")
    return {p.path: p.encoded() for p in params}


def grid_size(params: Sequence[Param]) -> int:
    return math.prod(len(p.choices) for p in params)


def trial_overrides(params: Sequence[Param], values: Mapping[str, Any]) -> list[str]:
    """``path=value`` overrides of one trial (typed values as Hydra reads them back)."""
    return [f"{p.path}={override_text(values[p.path])}" for p in params]
