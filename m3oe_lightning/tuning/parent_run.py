"""The study's parent MLflow run: every trial's run nests under it (tag ``mlflow.parentRunId``).

One parent per study, kept across sittings: its id is a study attribute, so a resumed study adds its new
trials under the same parent (as a Hydra sweep's jobs nest under ``tracking.sweep.MLflowSweepRun``'s).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from m3oe_lightning.tracking import provenance
from m3oe_lightning.tuning.trial import STUDY_TAG, TRIAL_TAG

PARENT_KIND_TAG = "tune_parent"


class ParentRun:
    """The parent run of ``study`` in ``tracking_uri``, reopened when ``run_id`` still exists there."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str | None) -> None:
        self.tracking_uri, self.experiment, self.artifact_location = tracking_uri, experiment, artifact_location
        self.client = MlflowClient(tracking_uri)
        self.experiment_id = ""
        self.run_id = ""

    def open(self, study: str, run_id: str | None, tags: Mapping[str, str]) -> str:
        from m3oe_lightning.tracking import runs  # imports Lightning: only once a study really starts

        self.experiment_id = runs.ensure_experiment(self.tracking_uri, self.experiment, self.artifact_location)
        if run_id and self._reusable(run_id):
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            with runs.store_lock(self.tracking_uri):
                name = runs.unique_run_name(self.client, self.experiment_id, f"tune-{study}")
                run = self.client.create_run(self.experiment_id, run_name=name, tags={
                    PARENT_KIND_TAG: "true", STUDY_TAG: study, "sweep": study, "git_commit": provenance.git_commit()})
            self.run_id = run.info.run_id
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)
        return self.run_id

    def _reusable(self, run_id: str) -> bool:
        try:
            return self.client.get_run(run_id).info.experiment_id == self.experiment_id
        except MlflowException:
            return False

    def trial_run(self, study: str, number: int) -> Run | None:
        """The MLflow run trial ``number`` of ``study`` logged (found by its tags), newest first."""
        found = self.client.search_runs(
            [self.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
            filter_string=f"tags.{STUDY_TAG} = '{study}' and tags.{TRIAL_TAG} = '{number}' "
                          f"and tags.`mlflow.parentRunId` = '{self.run_id}'")
        return found[0] if found else None

    def close(self, status: str, tags: Mapping[str, str], artifacts: list[Path]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)
        for path in artifacts:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path), "tune")
        self.client.set_terminated(self.run_id, status)
