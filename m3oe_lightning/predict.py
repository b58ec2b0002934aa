"""Entry point: ``python -m m3oe_lightning.predict run=<model> input=<file> output=<file> [--evaluate]``
(console script ``m3oe-predict``, ``make predict``).

Scores a CSV/Parquet file of raw rows with a trained model — a run id, a ``runs:/`` or ``models:/`` URI, or a
checkpoint — chunk by chunk into ``output`` (``domain`` and ``p_<task>`` per row, in input order). Ids the
model never saw in training map to the reserved unknown id and are counted on screen. Bad input is one line
and no output file. See README, "Use a trained model".
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig

from m3oe_lightning.config import CONF_DIR, report_user_errors
from m3oe_lightning.errors import UserInputError, check_int

EVALUATE_FLAG = "--evaluate"


def predict(cfg: DictConfig) -> dict[str, float]:
    """Score ``cfg.input`` into ``cfg.output``; returns the metrics when ``cfg.evaluate`` (else empty)."""
    check_int("chunk_rows", cfg.chunk_rows)
    check_int("threads", cfg.threads, optional=True)
    for setting in ("input", "output"):
        if not str(cfg[setting]).strip():
            raise UserInputError(f"{setting}= is empty; name a CSV or Parquet file")
    source, target = Path(cfg.input).expanduser(), Path(cfg.output).expanduser()
    if source.resolve() == target.resolve():
        raise UserInputError(f"output={target} is the input file; write the scores to another file")
    from m3oe_lightning.data.encoders import Encoders
    from m3oe_lightning.serving.bundle import ENCODERS_DIR
    from m3oe_lightning.serving.files import check_files, score_file
    from m3oe_lightning.tracking.models import resolve

    with tempfile.TemporaryDirectory(prefix="m3oe-predict-") as workdir:
        found = resolve(str(cfg.run), cfg.logger.tracking_uri, Path(workdir), Path(cfg.paths.checkpoint_dir))
        # the files are checked against the encoders before torch and the network load (a bad file: ~1 s)
        check_files(Encoders.load(found.folder / ENCODERS_DIR), source, target, evaluate=bool(cfg.evaluate))
        import torch

        from m3oe_lightning.serving.scorer import Scorer

        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        scorer = Scorer.load(found.folder, found.weights)
        result = score_file(scorer, source, target, chunk_rows=int(cfg.chunk_rows), evaluate=bool(cfg.evaluate))
    print(f"scored {result.rows:,} rows of {source} with {found.described} -> {target}")
    for column, count in result.unseen.items():
        if count:
            print(f"  {column}: {count:,} of {result.rows:,} rows hold a value the model never saw in training "
                  f"(scored with the reserved unknown id)")
    for name, value in sorted(result.metrics.items()):
        print(f"  {name}: {value:.4f}")
    return result.metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def _hydra_main(cfg: DictConfig) -> None:
    report_user_errors(predict, cfg)


def main() -> None:
    """``--evaluate`` is the one flag that is not a Hydra override: it becomes ``evaluate=true``."""
    if EVALUATE_FLAG in sys.argv[1:]:
        sys.argv = [sys.argv[0], *(a for a in sys.argv[1:] if a != EVALUATE_FLAG), "evaluate=true"]
    _hydra_main()


if __name__ == "__main__":
    main()
