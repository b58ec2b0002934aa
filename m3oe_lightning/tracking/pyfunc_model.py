"""The MLflow pyfunc model of a trained network, logged "from code": MLflow copies this file into the model
and runs it when the model is loaded (``mlflow.pyfunc.load_model``, ``mlflow models serve``), so nothing of
the model is pickled. Its one artifact, ``bundle``, is a scoring bundle (m3oe_lightning/serving/bundle.py).

Serving needs ``m3oe-lightning`` importable in the serving environment (``--env-manager local`` in the
project's venv).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class ScoringModel(PythonModel):
    """Raw rows (a DataFrame in the training data's format) -> ``domain`` and ``p_<task>`` per row."""

    def load_context(self, context: Any) -> None:
        from m3oe_lightning.serving.scorer import Scorer

        self.scorer = Scorer.load(Path(context.artifacts["bundle"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from m3oe_lightning.errors import UserInputError

        frame = pd.DataFrame(model_input)
        try:
            return self.scorer.score(frame, lambda row: f"request row {row + 1}", source="the request").frame
        except UserInputError as error:  # a bad request: HTTP 400 with the one line, not a 500
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from None


mlflow.models.set_model(ScoringModel())
