"""``make clean-checkpoints``: keep the best checkpoint of every FINISHED run (and what scores with it: its
encoders and ``network.json``), delete the rest of its files.

A finished run's ``last.ckpt`` (and the kept ``last.ckpt.prev``) only serve a resume, which a finished run
never needs; its ``best-*.ckpt`` is what scoring and export load. Unfinished runs (RUNNING, FAILED, KILLED)
keep everything, so they can still be resumed, and a run another process holds is never touched. Nothing is
deleted without ``--apply``: the default prints what would go and how much space it frees.

    python -m m3oe_lightning.tracking.clean [--checkpoint-dir logs/checkpoints] [--apply]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from m3oe_lightning.serving.bundle import ENCODERS_DIR, NETWORK_FILE
from m3oe_lightning.tracking.runs import STATE_SUFFIX

BEST_PREFIX = "best-"


def removable(checkpoint_root: Path) -> list[Path]:
    """The files a clean-up deletes: everything but ``best-*.ckpt`` and the scoring bundle (``encoders/``,
    ``network.json``) in the folders of FINISHED runs."""
    out: list[Path] = []
    for state_file in sorted(checkpoint_root.glob(f"*{STATE_SUFFIX}")):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        folder = checkpoint_root / str(state.get("run_id"))
        if state.get("status") != "FINISHED" or not folder.is_dir():
            continue
        out += [f for f in sorted(folder.rglob("*")) if f.is_file() and not f.name.startswith(BEST_PREFIX)
                and f.name != NETWORK_FILE and ENCODERS_DIR not in f.relative_to(folder).parts[:1]]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m m3oe_lightning.tracking.clean", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("logs/checkpoints"))
    parser.add_argument("--apply", action="store_true", help="delete (default: only list what would go)")
    args = parser.parse_args(argv)
    files = removable(args.checkpoint_dir)
    size = sum(f.stat().st_size for f in files)
    for f in files:
        if args.apply:
            f.unlink()
        print(("deleted " if args.apply else "would delete ") + str(f))
    verb = "freed" if args.apply else "would free (rerun with --apply, or make clean-checkpoints APPLY=1)"
    print(f"{len(files)} file(s), {size / 2**20:.1f} MiB {verb}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
