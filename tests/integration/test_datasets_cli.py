"""Each new dataset trains one tiny epoch through the training entry point; a bad schema is one clear error
line. KuaiRand and AliExpress run on the shared files laid out in tmp (see tests/unit/test_datasets_extra.py);
Open Bandit on the shared sample as it is.

In process (``report_user_errors(objective, cfg)``, what ``main`` runs once Hydra composed), each on a
pre-made empty store: what differs between datasets is their reading, not the command line (covered by
test_train_end_to_end.py and test_first_run.py), and a subprocess spends ~10 s importing torch."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from m3oe_lightning.train import objective
from tests.helpers import isolated, run_in_process, seeded_store
from tests.unit.test_datasets_extra import ALI_SAMPLES, KUAIRAND, OBD, SHARED, need, write_aliexpress, write_kuairand

TINY = ["trainer.max_epochs=1", "model.star_dim=32", "model.bottom_dim=32", "model.expert_dims=[16]",
        "model.tower_dims=[16]", "data.batch_size=4096"]


def write_ratings(folder: Path, *, bad_age_row: int | None = None) -> Path:
    """A small ratings table split into a CSV and a Parquet part."""
    n = 600
    frame = pd.DataFrame({
        "user_id": [i % 50 for i in range(n)],
        "item_id": [(7 * i) % 40 for i in range(n)],
        "region": [("EU", "UK", "US", "JP")[i % 4] for i in range(n)],
        "age": [18.0 + (i * 13) % 50 for i in range(n)],
        "rating": [1 + (i * 7 + i // 5) % 5 for i in range(n)],
    }).astype({"age": object})
    if bad_age_row is not None:
        frame.loc[bad_age_row, "age"] = "unknown"
    folder.mkdir(parents=True)
    frame.iloc[:300].to_csv(folder / "part-0.csv", index=False)
    frame.iloc[300:].astype({"age": str}).to_csv(folder / "part-1.csv", index=False)
    return folder


TABULAR = ["data=tabular", "data.domain_column=region", "data.domains={EU: europe, UK: europe, US: america}",
           "data.tasks={click: 'rating >= 4', like: 'rating == 5'}", "data.sparse_features=[user_id,item_id]",
           "data.dense_features={age: standard}"]


def train_entry(tmp_path: Path, capfd, *overrides: str):
    return run_in_process(objective, [*isolated(tmp_path), *TINY, *overrides], capfd)


def finished_metrics(tmp_path: Path) -> dict[str, float]:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["m3oe-lightning"], output_format="list")
    assert run.info.status == "FINISHED"
    return run.data.metrics


def setup_data(name: str, tmp_path: Path) -> list[str]:
    if name == "tabular":
        return [*TABULAR, f"data.path={write_ratings(tmp_path / 'ratings')}"]
    if name == "kuairand_pure":
        need(KUAIRAND)
        from tests.unit.test_datasets_extra import LOG_ROWS

        # 240 rows: the unit-test rows shifted to other real users/videos, labels varied
        rows = [(u + 10 * k, v + 10 * k, h, (c + k) % 2, (lv * k) % 2, t)
                for k in range(20) for (u, v, h, c, lv, t) in LOG_ROWS]
        write_kuairand(tmp_path / "data" / "kuairand", rows=rows, split_at=120)
        return ["data=kuairand_pure", f"data.root={tmp_path / 'data'}"]
    if name == "aliexpress":
        need(ALI_SAMPLES)
        write_aliexpress(tmp_path / "data" / "aliexpress")
        return ["data=aliexpress", f"data.root={tmp_path / 'data'}", "data.countries=[NL,ES]"]
    need(OBD)
    return ["data=open_bandit", f"data.root={SHARED}"]


DOMAINS = {
    "tabular": ("europe", "america"), "kuairand_pure": ("tab_0", "tab_1", "tab_2"), "aliexpress": ("NL", "ES"),
    "open_bandit": ("all", "men", "women"),
}
TASKS = {"tabular": ("click", "like"), "kuairand_pure": ("click", "long_view"), "aliexpress": ("click", "conversion"),
         "open_bandit": ("click",)}


@pytest.mark.slow
# MLflow's guess of a local dataset source's type (two registered kinds match a path); it changes nothing logged
@pytest.mark.filterwarnings("ignore:The specified dataset source can be interpreted in multiple ways")
@pytest.mark.parametrize("name", list(DOMAINS))
def test_dataset_trains_one_epoch_through_the_entry_point(tmp_path, capfd, name):
    data = setup_data(name, tmp_path)
    seeded_store(tmp_path)
    result = train_entry(tmp_path, capfd, *data)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = finished_metrics(tmp_path)
    assert "test/logloss_mean" in metrics
    for domain in DOMAINS[name]:
        for task in TASKS[name]:
            assert f"test/logloss/{domain}/{task}" in metrics


@pytest.mark.slow
def test_bad_schema_is_one_error_line_without_traceback(tmp_path, capfd):
    folder = write_ratings(tmp_path / "ratings", bad_age_row=457)  # part-1.csv, data row 157 -> line 159
    result = train_entry(tmp_path, capfd, *TABULAR, f"data.path={folder}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert f"{folder / 'part-1.csv'}, line 159: age (data.dense_features) must be a number, got 'unknown'" in line
    assert not list((tmp_path / "cache").glob("**/*.pt"))
