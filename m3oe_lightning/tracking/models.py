"""A run's trained model in MLflow: its scoring bundle, the pyfunc model ``mlflow models serve`` serves, the
registry, and the way back from a reference (run id, ``runs:/`` URI, checkpoint path) to a bundle.

* At the start of a run the encoders and ``network.json`` go beside its checkpoints and into its artifacts
  (``encoders/``, ``network.json``): even a killed run's checkpoint can score raw rows.
* At the end the best checkpoint's weights are packaged with them as an MLflow model (``model/``, a pyfunc
  "from code": :mod:`m3oe_lightning.tracking.pyfunc_model`; nothing pickled), with its signature and an input
  example, and registered under ``logger.register_model`` when that is set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m3oe_lightning.data.encoders import Encoders
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.serving import bundle as bundles
from m3oe_lightning.serving.columns import DOMAIN_COLUMN, probability_column

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient
# MLflow is imported where it is used: scoring a checkpoint file needs none of it

MODEL_ARTIFACT = "model"  # runs:/<id>/model
BUNDLE_ARTIFACT = "bundle"  # the pyfunc model's artifact key (model/artifacts/bundle/)
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
# what the model needs to load where `mlflow models serve` builds its own environment (not --env-manager
# local); m3oe-lightning itself is not on PyPI: serve with --env-manager local from the project's venv
REQUIREMENTS = ("torch", "lightning", "hydra-core", "omegaconf", "pandas", "pyarrow", "mlflow")


def save_bundle(run_id: str, client: MlflowClient, folder: Path, encoders: Encoders,
                model_config: Mapping[str, Any], label: str) -> None:
    """Encoders + ``network.json`` into the run's checkpoint folder and its artifacts."""
    bundles.write_bundle(folder, encoders, model_config, run_id=run_id, label=label)
    client.log_artifacts(run_id, str(folder / bundles.ENCODERS_DIR), bundles.ENCODERS_DIR)
    client.log_artifact(run_id, str(folder / bundles.NETWORK_FILE))


def _signature(encoders: Encoders):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    # a categorical value is matched by its text (7 and "7" are one id): such columns accept any type; numbers
    # must be numbers
    inputs = Schema([ColSpec("double" if kind == "double" else AnyType(), name, required=required)
                     for name, (kind, required) in encoders.input_columns().items()])
    outputs = Schema([ColSpec("string", DOMAIN_COLUMN),
                      *(ColSpec("double", probability_column(t)) for t in encoders.tasks)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(encoders: Encoders, rows: int = 3):
    """A few requests a model accepts: lookup keys and vocabulary values seen in training, typed as the
    signature says (what the MLflow UI shows and ``mlflow models serve`` can be tried with)."""
    import pandas as pd

    keys = {lookup.key: list(lookup.table[lookup.key][:rows]) for lookup in encoders.lookups}
    vocabularies = {v.column: list(v.values[:rows]) for v in encoders.sparse}
    domains = list(encoders.domain_of_value)[:rows]
    example: dict[str, list[Any]] = {}
    for name, (kind, required) in encoders.input_columns().items():
        if not required:
            continue
        values = keys.get(name) or vocabularies.get(name) or (domains if name == encoders.domain_column else [0])
        values = [values[i % len(values)] for i in range(rows)]
        example[name] = [int(float(v)) if kind == "long" else float(v) if kind == "double" else str(v)
                         for v in values]
    return pd.DataFrame(example)


def log_model(run_id: str, client: MlflowClient, folder: Path, weights: Path, *,
              register_as: str | None = None, artifact: str = MODEL_ARTIFACT) -> str:
    """Package ``folder``'s bundle with ``weights`` as the run's MLflow model (under ``artifact``); returns its
    ``runs:/`` URI."""
    import mlflow.pyfunc
    import torch

    state = bundles.network_state(weights)
    with tempfile.TemporaryDirectory(prefix="m3oe-model-") as tmp:
        staged = Path(tmp) / BUNDLE_ARTIFACT
        shutil.copytree(folder / bundles.ENCODERS_DIR, staged / bundles.ENCODERS_DIR)
        shutil.copy2(folder / bundles.NETWORK_FILE, staged / bundles.NETWORK_FILE)
        torch.save(state, staged / bundles.WEIGHTS_FILE)
        encoders = Encoders.load(staged / bundles.ENCODERS_DIR)
        model_dir = Path(tmp) / artifact
        with _quiet_mlflow():  # its input-example check prints a progress bar and an INFO line per run
            mlflow.pyfunc.save_model(
                path=str(model_dir), python_model=str(PYFUNC_CODE), artifacts={BUNDLE_ARTIFACT: str(staged)},
                signature=_signature(encoders), input_example=input_example(encoders),
                pip_requirements=list(REQUIREMENTS),
            )
        client.log_artifacts(run_id, str(model_dir), artifact)
    uri = f"runs:/{run_id}/{artifact}"
    if register_as:
        register(client, register_as, run_id, artifact)
    return uri


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    logger = logging.getLogger("mlflow")
    level, bar = logger.level, os.environ.get(PROGRESS_BAR_ENV)
    logger.setLevel(logging.WARNING)
    os.environ[PROGRESS_BAR_ENV] = "false"
    try:
        yield
    finally:
        logger.setLevel(level)
        if bar is None:
            os.environ.pop(PROGRESS_BAR_ENV, None)
        else:
            os.environ[PROGRESS_BAR_ENV] = bar


def register(client: MlflowClient, name: str, run_id: str, artifact: str = MODEL_ARTIFACT) -> int:
    """A new version of registered model ``name`` (created when missing) from the run's model."""
    from mlflow.exceptions import MlflowException

    try:
        try:
            client.create_registered_model(name)
        except MlflowException as error:
            if "already exists" not in str(error).lower() and "RESOURCE_ALREADY_EXISTS" not in str(error):
                raise
        source = f"{client.get_run(run_id).info.artifact_uri}/{artifact}"
        return int(client.create_model_version(name, source=source, run_id=run_id).version)
    except MlflowException as error:
        raise UserInputError(f"logger.register_model={name!r}: the registry refused it ({error.message})") from None


@dataclass(frozen=True)
class ResolvedModel:
    """A scoring bundle on disk and the weights to load into it."""

    folder: Path
    weights: Path
    described: str


def resolve(reference: str, tracking_uri: str, workdir: Path, checkpoint_root: Path | None = None) -> ResolvedModel:
    """``run=`` of ``m3oe-predict`` / ``m3oe-export``: a run id, a ``runs:/<id>/model`` or ``models:/…`` URI,
    an MLflow model folder, a run's checkpoint folder or a checkpoint file. Downloads go into ``workdir``.

    A run id whose checkpoint folder is under ``checkpoint_root`` (this machine trained it) scores from there,
    without MLflow; otherwise its model is downloaded from the store.
    """
    text = str(reference).strip()
    path = Path(text).expanduser()
    if path.exists():
        return _local(path)
    if _RUN_ID.match(text):
        local = None if checkpoint_root is None else Path(checkpoint_root) / text
        if local is not None and bundles.is_bundle(local) and bundles.best_checkpoint(local) is not None:
            return _local(local, described=f"run {text}")
        text = f"runs:/{text}/{MODEL_ARTIFACT}"
    if not text.startswith(("runs:/", "models:/")):
        raise UserInputError(f"run={reference!r} is neither a file or folder nor a run id or runs:/ / models:/ URI")
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    try:
        with _quiet_mlflow():
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=str(workdir),
                                                             tracking_uri=tracking_uri))
    except (MlflowException, OSError) as error:
        message = getattr(error, "message", str(error)).splitlines()[0]
        raise UserInputError(f"run={reference}: not found in {tracking_uri} ({message}); check the run id, "
                             f"logger.tracking_uri, and that the run finished (its model is logged at its end)"
                             ) from None
    return _local(local, described=text)


def _local(path: Path, described: str | None = None) -> ResolvedModel:
    described = described or str(path)
    if path.is_file():  # a checkpoint: the bundle is its folder
        if not bundles.is_bundle(path.parent):
            raise UserInputError(f"run={path}: no network.json beside it, so its encoders are missing (a run trained "
                                 f"before encoders were saved with checkpoints cannot score raw rows)")
        return ResolvedModel(folder=path.parent, weights=path, described=described)
    if (path / "MLmodel").is_file():
        path = path / "artifacts" / BUNDLE_ARTIFACT
    if not bundles.is_bundle(path):
        raise UserInputError(f"run={path}: holds no network.json (not a run's checkpoint folder or model)")
    weights = path / bundles.WEIGHTS_FILE
    if not weights.is_file():
        found = bundles.best_checkpoint(path)
        if found is None:
            raise UserInputError(f"run={path}: no checkpoint in it (best-*.ckpt or last.ckpt)")
        weights = found
    return ResolvedModel(folder=path, weights=weights, described=described)
