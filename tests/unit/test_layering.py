"""The import layering of ``m3oe_lightning``, read from the source (docs/design.md, "Layering").

Each module's imports of our own code are resolved to the *unit* they land in: a top-level package
(``data``, ``models``, ...) or a top-level module (``errors``, ``config``, ``train``, ...). Every import
counts, wherever it sits: module level, function bodies, ``if TYPE_CHECKING:`` blocks, absolute or
relative. The rule is then one lookup in :data:`RANK`, so it reads in one screen and a new unit has to
be placed in it before any import of it passes.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "m3oe_lightning"
PACKAGE_DIR = Path(__file__).resolve().parents[2] / PACKAGE
ROOT_UNIT = "__init__"  # m3oe_lightning/__init__.py: every import of ours runs it, so it imports nothing of ours

# unit -> rank. A module may import its own unit or a unit of strictly LOWER rank, nothing else; units of
# equal rank (siblings) never import each other.
RANK: dict[str, int] = {
    ROOT_UNIT: -1,
    "errors": 0,                                    # imports nothing of ours
    "config": 1, "metric_keys": 1, "seeds": 1,      # utilities for everyone; they may import errors only
    "data": 2,                                      # the library, bottom to top ...
    "models": 3,
    "training": 4,
    "federated": 5,                                 # ... nothing in it imports tracking, reports or bench
    "serving": 6,                                   # a trained model scoring raw rows, ONNX (no MLflow)
    "tracking": 7,                                  # above the library
    "reports": 8, "bench": 8, "tuning": 8,          # may import tracking and the library
    "train": 9, "federate": 9, "flower_app": 9, "predict": 9, "export": 9, "tune": 9, "site_node": 9,
    "__main__": 9,                                  # entry points: nobody imports them
}
ENTRY_POINTS = frozenset({"train", "federate", "flower_app", "predict", "export", "tune", "site_node", "__main__"})
ALLOWED = frozenset({("__main__", "train")})  # `python -m m3oe_lightning` is the training entry point


def unit_of(module: str) -> str | None:
    """The unit a dotted module name of ours belongs to; ``None`` for third-party modules."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT_UNIT


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """``(line, dotted name)`` for every import in ``tree``, relative ones resolved against ``module``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            if base == PACKAGE:  # `from m3oe_lightning import metric_keys`: the names are the units
                for alias in node.names:
                    name = alias.name
                    known = name in RANK or (PACKAGE_DIR / name).is_dir() or (PACKAGE_DIR / f"{name}.py").is_file()
                    yield node.lineno, f"{PACKAGE}.{name}" if known else PACKAGE
            else:
                yield node.lineno, base


def violations(module: str, source: str, is_package: bool = False, where: str | None = None) -> list[str]:
    """One line per import of ``source`` (the text of ``module``) that breaks the rule in :data:`RANK`."""
    where = where or module
    importer = unit_of(module)
    assert importer is not None, f"{module} is not one of ours"
    found = []
    for line, target in imported_modules(ast.parse(source), module, is_package):
        unit = unit_of(target)
        if unit is None or unit == importer or (importer, unit) in ALLOWED:
            continue
        if importer not in RANK or unit not in RANK:
            found.append(f"{where}:{line}: {target}: unit {importer if importer not in RANK else unit!r} "
                         "has no rank: place it in RANK (tests/unit/test_layering.py)")
        elif unit in ENTRY_POINTS:
            found.append(f"{where}:{line}: imports the entry point {target}")
        elif RANK[unit] >= RANK[importer]:
            found.append(f"{where}:{line}: {importer} (rank {RANK[importer]}) imports {target} "
                         f"({unit}, rank {RANK[unit]})")
    return found


def module_of(path: Path) -> tuple[str, bool]:
    """The dotted name of a source file and whether it is a package ``__init__``."""
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def test_no_module_imports_upward_or_an_entry_point():
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(files) > 50, f"found only {len(files)} modules under {PACKAGE_DIR}"
    found = []
    for path in files:
        module, is_package = module_of(path)
        found += violations(module, path.read_text(), is_package, where=str(path.relative_to(PACKAGE_DIR.parent)))
    assert not found, "layering violations (docs/design.md, \"Layering\"):\n" + "\n".join(found)


def test_the_checker_catches_what_it_must_and_nothing_else():
    # upward, from a function body, through a relative import
    assert violations("m3oe_lightning.data.schema", "def f():\n    from ..training import module\n")
    # upward through `from m3oe_lightning import <unit>` and through a plain `import`
    assert violations("m3oe_lightning.models.mmoe", "from m3oe_lightning import federated\n")
    assert violations("m3oe_lightning.models.mmoe", "import m3oe_lightning.training.module\n")
    # the library never imports tracking; siblings never import each other; nobody imports an entry point
    assert violations("m3oe_lightning.federated.client", "from m3oe_lightning.tracking import runs\n")
    assert violations("m3oe_lightning.reports.paper", "from m3oe_lightning.bench import flops\n")
    assert violations("m3oe_lightning.seeds", "from m3oe_lightning.config import build\n")
    assert violations("m3oe_lightning.bench.scaling", "from m3oe_lightning import train\n")
    assert violations("m3oe_lightning.flower_app", "from m3oe_lightning.federate import federate\n")
    assert violations("m3oe_lightning.federated", "from .. import federate\n", is_package=True)
    # a unit nobody placed in RANK is reported, not waved through
    assert violations("m3oe_lightning.models.mlp", "from m3oe_lightning.newthing import x\n")
    # allowed: downward, within a unit (relative too), utilities, the package root, third party, __main__
    allowed = ("from m3oe_lightning.data.schema import Batch\nfrom m3oe_lightning import metric_keys as keys\n"
               "from m3oe_lightning.errors import UserInputError\nfrom . import base\nimport torch\n"
               "from m3oe_lightning import __version__\n")
    assert violations("m3oe_lightning.training.module", allowed) == []
    assert violations("m3oe_lightning.federated.strategies", "from .base import Strategy\n", is_package=True) == []
    assert violations("m3oe_lightning.config", "from m3oe_lightning.errors import UserInputError\n") == []
    assert violations("m3oe_lightning.__main__", "from m3oe_lightning.train import main\n") == []
