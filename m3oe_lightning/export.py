"""Entry point: ``python -m m3oe_lightning.export run=<model> [output=<file.onnx>]`` (console script
``m3oe-export``, ``make export RUN=<id>``).

Writes the trained network as ONNX over its encoded inputs (``sparse`` int64 ``[B, S]``, ``dense`` float32
``[B, D]``, ``domain`` int64 ``[B]`` -> ``logits`` ``[B, T]``; docs/serving.md), checks onnxruntime against
PyTorch on random encoded rows, and writes ``<output>.json`` beside it: the input layout (feature order,
vocabulary sizes, domains, tasks) a caller needs to build the inputs. Turning raw rows into those inputs is
what the run's encoders do (``m3oe-predict`` and the MLflow model use them).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig

from m3oe_lightning.config import CONF_DIR, report_user_errors
from m3oe_lightning.errors import check_int, check_number


def export(cfg: DictConfig) -> Path:
    """Export, verify and describe ``cfg.run``'s network; returns the ONNX file's path."""
    check_int("verify_rows", cfg.verify_rows)
    check_int("opset", cfg.opset, optional=True)
    check_number("atol", cfg.atol, low=0.0, low_open=True)
    import pandas as pd
    import torch

    from m3oe_lightning.serving.onnx_export import export_onnx, verify_onnx
    from m3oe_lightning.serving.scorer import Scorer
    from m3oe_lightning.tracking.models import resolve

    with tempfile.TemporaryDirectory(prefix="m3oe-export-") as workdir:
        found = resolve(str(cfg.run), cfg.logger.tracking_uri, Path(workdir), Path(cfg.paths.checkpoint_dir))
        scorer = Scorer.load(found.folder, found.weights)
    network, schema = scorer.network, scorer.encoders.schema
    name = Path(str(cfg.run)).stem if Path(str(cfg.run)).exists() else str(cfg.run).rstrip("/").split("/")[-1]
    target = Path(cfg.output) if cfg.output else Path(cfg.paths.log_dir) / "exports" / f"{name}.onnx"
    export_onnx(network, target, opset=cfg.opset)
    generator = torch.Generator().manual_seed(0)
    rows = int(cfg.verify_rows)
    domain = torch.arange(rows) % schema.num_domains
    sparse = torch.stack([torch.randint(0, f.vocab_size, (rows,), generator=generator) for f in schema.sparse], 1)
    if scorer.encoders.domain_feature is not None:  # the appended domain feature agrees with the row's domain
        ids, _ = scorer.encoders.domain_feature.ids(pd.Series(domain.numpy()))
        sparse[:, -1] = torch.from_numpy(ids)
    batch = {"sparse": sparse, "dense": torch.rand(rows, len(schema.dense), generator=generator), "domain": domain,
             "labels": torch.zeros(rows, schema.num_tasks)}
    difference = verify_onnx(network, target, batch, atol=float(cfg.atol))
    layout = {"inputs": {"sparse": {"dtype": "int64", "columns": [{"name": f.name, "vocab_size": f.vocab_size}
                                                                  for f in schema.sparse],
                                    "unknown_id": 0},
                         "dense": {"dtype": "float32", "columns": [f.name for f in schema.dense]},
                         "domain": {"dtype": "int64", "values": list(schema.domains)}},
              "output": {"name": "logits", "dtype": "float32", "tasks": list(schema.tasks),
                         "probability": "sigmoid(logits)"},
              "source": found.described, "verified_rows": rows, "max_abs_difference": difference}
    sidecar = target.with_name(target.name + ".json")
    partial = sidecar.with_name(f".{sidecar.name}.partial")
    partial.write_text(json.dumps(layout, indent=1))
    os.replace(partial, sidecar)
    print(f"exported {found.described} -> {target} (onnxruntime agrees with PyTorch on {rows:,} rows: max |diff| "
          f"{difference:.2e}); input layout: {sidecar}")
    return target


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    report_user_errors(export, cfg)


if __name__ == "__main__":
    main()
