"""Using a trained model: m3oe-predict, the MLflow pyfunc model, a real `mlflow models serve`, the registry.

One real training run on a table written here (data=tabular) is shared by the module; every test scores
raw rows of that table with it and compares against the checkpoint's own test-step logits or metrics.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from m3oe_lightning.bench.processes import free_port, stop_group
from m3oe_lightning.config import build, compose
from m3oe_lightning.data.splits import split_indices
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.predict import predict
from m3oe_lightning.serving.bundle import best_checkpoint
from m3oe_lightning.train import train
from tests.helpers import compose_train, isolated, run_module

REGISTERED = "m3oe-tabular-test"
SEED = 5


def table(rows: int = 900) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    user = rng.integers(0, 60, rows)
    item = rng.integers(0, 25, rows)
    region = np.asarray(["EU", "UK", "US"])[rng.integers(0, 3, rows)]
    score = (user % 7) / 7 + (item % 5) / 5 + rng.normal(0, 0.3, rows)
    return pd.DataFrame({
        "user_id": user, "item": [f"i{k}" for k in item], "region": region,
        "age": rng.integers(18, 70, rows).astype(float), "price": rng.gamma(2.0, 10.0, rows).round(2),
        "rating": np.clip(np.round(1 + 3 * score), 1, 5).astype(int), "bought": (score > 1.1).astype(int),
    })


DATA = ["data=tabular", "data.path=rows.csv", "data.domain_column=region",
        "data.domains={EU: europe, UK: europe, US: america}", "data.tasks={click: 'rating >= 4', buy: bought}",
        "data.sparse_features=[user_id,item]", "data.dense_features={age: minmax, price: log1p}",
        f"data.split_seed={SEED}"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished run: its id, store, checkpoint, config, and the raw rows of its test split."""
    tmp = tmp_path_factory.mktemp("predict")
    frame = table()
    frame.to_csv(tmp / "rows.csv", index=False)
    overrides = [*DATA, f"data.root={tmp}", "model=mmoe", "trainer.max_epochs=2", "data.batch_size=128",
                 f"logger.register_model={REGISTERED}", *isolated(tmp)]
    cfg = compose_train(overrides)
    metrics = train(cfg)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    (run,) = MlflowClient(uri).search_runs(MlflowClient(uri).get_experiment_by_name("m3oe-lightning").experiment_id)
    test_rows = split_indices(len(frame), "random", SEED, (0.8, 0.1, 0.1))[2]
    test_frame = frame.iloc[test_rows].reset_index(drop=True)
    test_frame.to_csv(tmp / "test_rows.csv", index=False)
    return {"tmp": tmp, "uri": uri, "run": run, "cfg": cfg, "metrics": metrics, "test_frame": test_frame,
            "checkpoint_dir": Path(cfg.paths.checkpoint_dir) / run.info.run_id}


def predict_cfg(trained, **settings) -> OmegaConf:
    tmp = trained["tmp"]
    overrides = [f"logger.tracking_uri={trained['uri']}", f"paths.log_dir={tmp / 'logs'}",
                 *(f"{k}={v}" for k, v in settings.items())]
    return compose("predict", overrides)


def checkpoint_probabilities(trained) -> np.ndarray:
    """sigmoid(logits) of the best checkpoint's network on the encoded test split (the test step's input)."""
    cfg = trained["cfg"]
    datamodule = build(cfg.data)
    test = datamodule.load().test
    network = build(cfg.model, schema=datamodule.load().schema)
    state = torch.load(best_checkpoint(trained["checkpoint_dir"]), weights_only=True)["state_dict"]
    network.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    network.eval()
    with torch.no_grad():
        return torch.sigmoid(network(test.rows(slice(None)))).numpy()


def test_predict_on_the_test_split_equals_the_checkpoint_and_its_test_metrics(trained):
    tmp = trained["tmp"]
    out = tmp / "scores.csv"
    arguments = [f"run={trained['run'].info.run_id}", f"input={tmp / 'test_rows.csv'}", f"output={out}",
                 f"logger.tracking_uri={trained['uri']}", f"paths.log_dir={tmp / 'logs'}", "--evaluate"]
    result = run_module("m3oe_lightning.predict", arguments, cwd=tmp)
    assert result.returncode == 0, result.stderr
    scores = pd.read_csv(out)
    assert list(scores.columns) == ["domain", "p_click", "p_buy"]
    np.testing.assert_allclose(scores[["p_click", "p_buy"]].to_numpy(), checkpoint_probabilities(trained),
                               rtol=0, atol=1e-6)
    expected_domain = trained["test_frame"]["region"].map({"EU": "europe", "UK": "europe", "US": "america"})
    assert scores["domain"].tolist() == expected_domain.tolist()
    line = next(x for x in result.stdout.splitlines() if x.strip().startswith("auc_mean:"))
    assert float(line.split(":")[1]) == pytest.approx(trained["metrics"]["test/auc_mean"], abs=1e-4)


def test_parquet_in_small_chunks_from_a_checkpoint_path_keeps_input_order(trained):
    tmp = trained["tmp"]
    trained["test_frame"].to_parquet(tmp / "test_rows.parquet", index=False)
    checkpoint = best_checkpoint(trained["checkpoint_dir"])
    predict(predict_cfg(trained, run=checkpoint, input=tmp / "test_rows.parquet", output=tmp / "s.parquet",
                        chunk_rows=7))
    scores = pd.read_parquet(tmp / "s.parquet")
    assert len(scores) == len(trained["test_frame"])
    np.testing.assert_allclose(scores[["p_click", "p_buy"]].to_numpy(), checkpoint_probabilities(trained),
                               rtol=0, atol=1e-6)


def test_unseen_ids_are_counted_on_screen(trained, capsys):
    tmp = trained["tmp"]
    rows = trained["test_frame"].head(5).assign(user_id=[10_001, 10_002, 1, 2, 3])
    rows.to_csv(tmp / "unseen.csv", index=False)
    predict(predict_cfg(trained, run=f"runs:/{trained['run'].info.run_id}/model", input=tmp / "unseen.csv",
                        output=tmp / "u.csv"))  # the MLflow model, downloaded from the store
    out = capsys.readouterr().out
    assert "user_id: 2 of 5 rows hold a value the model never saw in training" in out
    assert f"with runs:/{trained['run'].info.run_id}/model" in out
    predict(predict_cfg(trained, run=trained["checkpoint_dir"], input=tmp / "unseen.csv", output=tmp / "u2.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(tmp / "u.csv"), pd.read_csv(tmp / "u2.csv"))  # model == checkpoint


def test_pyfunc_model_loads_and_scores_without_unpickling_and_is_registered(trained, monkeypatch):
    import pickle

    import mlflow.pyfunc

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for name in ("load", "loads", "Unpickler"):  # cloudpickle loads through these too
        monkeypatch.setattr(pickle, name, refuse)
    run_id = trained["run"].info.run_id
    mlflow.set_tracking_uri(trained["uri"])
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    scored = model.predict(trained["test_frame"].drop(columns=["rating", "bought"]))
    monkeypatch.undo()
    np.testing.assert_allclose(scored[["p_click", "p_buy"]].to_numpy(), checkpoint_probabilities(trained),
                               rtol=0, atol=1e-6)
    inputs = {c["name"]: c for c in json.loads(model.metadata.to_dict()["signature"]["inputs"])}
    assert inputs["user_id"]["required"] and not inputs["rating"]["required"]
    (version,) = MlflowClient(trained["uri"]).search_model_versions(f"name='{REGISTERED}'")
    assert version.run_id == run_id
    model_files = {p.suffix for p in (trained["checkpoint_dir"]).rglob("*") if p.is_file()}
    assert ".pkl" not in model_files and ".pickle" not in model_files


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.mark.slow
def test_mlflow_models_serve_answers_like_predict(trained):
    tmp, run_id, port = trained["tmp"], trained["run"].info.run_id, free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", f"runs:/{run_id}/model", "--env-manager",
                               "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                              env={**os.environ, "MLFLOW_TRACKING_URI": trained["uri"],  # it runs venv's uvicorn
                                   "PATH": f"{mlflow_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}"}, cwd=tmp,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()[-3000:]
                assert time.monotonic() < deadline, "mlflow models serve did not come up in 120 s"
                time.sleep(0.5)
        request = trained["test_frame"].drop(columns=["rating", "bought"])
        status, answer = post(f"http://127.0.0.1:{port}/invocations",
                              {"dataframe_split": json.loads(request.to_json(orient="split", index=False))})
        assert status == 200, answer
        served = pd.DataFrame(answer["predictions"])
        np.testing.assert_allclose(served[["p_click", "p_buy"]].to_numpy(), checkpoint_probabilities(trained),
                                   rtol=0, atol=1e-6)
        bad = request.head(2).assign(region=["EU", "MARS"])
        status, answer = post(f"http://127.0.0.1:{port}/invocations",
                              {"dataframe_split": json.loads(bad.to_json(orient="split", index=False))})
        assert status == 400 and "request row 2: region='MARS' belongs to no domain" in answer["message"]
    finally:
        stop_group(server)


# --- bad input: one line naming the file, row and column (or the run), and no output file -------------------


def bad_rows(trained, name: str, change) -> Path:
    path = trained["tmp"] / name
    change(trained["test_frame"].head(6).copy()).to_csv(path, index=False)
    return path


BAD_FILES = {
    "missing_column": (lambda f: f.drop(columns=["item"]), r"missing_column.csv, line 1: no column 'item'"),
    "extra_column": (lambda f: f.assign(comment="x"), r"column 'comment' is not read by this tabular model"),
    "wrong_type": (lambda f: f.assign(price=["1.5", "cheap", "2", "3", "4", "5"]),
                   r"wrong_type.csv, line 3: price='cheap' is not a number"),
    "unknown_domain": (lambda f: f.assign(region=["EU", "UK", "US", "EU", "MARS", "US"]),
                       r"unknown_domain.csv, line 6: region='MARS' belongs to no domain the model knows"),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_input_file_is_one_line_and_leaves_no_output(trained, case):
    change, message = BAD_FILES[case]
    out = trained["tmp"] / f"{case}.out.csv"
    with pytest.raises(UserInputError, match=message):
        predict(predict_cfg(trained, run=trained["run"].info.run_id, input=bad_rows(trained, f"{case}.csv", change),
                            output=out, chunk_rows=2))
    assert not out.exists()
    assert not list(trained["tmp"].glob(f".{out.name}.partial*"))


@pytest.mark.bad_input
def test_an_unknown_run_or_a_checkpoint_without_encoders_is_one_line(trained, tmp_path):
    rows = trained["tmp"] / "test_rows.csv"
    with pytest.raises(UserInputError, match="run=0123456789abcdef0123456789abcdef: not found in sqlite"):
        predict(predict_cfg(trained, run="0123456789abcdef0123456789abcdef", input=rows, output=tmp_path / "o.csv"))
    lone = tmp_path / "old" / "best.ckpt"
    lone.parent.mkdir()
    lone.write_bytes(best_checkpoint(trained["checkpoint_dir"]).read_bytes())
    with pytest.raises(UserInputError, match="no network.json beside it, so its encoders are missing"):
        predict(predict_cfg(trained, run=lone, input=rows, output=tmp_path / "o.csv"))
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.bad_input
def test_bad_input_through_the_entry_point_keeps_an_older_output(trained):
    tmp = trained["tmp"]
    out = tmp / "kept.csv"
    out.write_text("an older result\n")
    source = bad_rows(trained, "cli_bad.csv", lambda f: f.assign(region=["EU", "UK", "US", "EU", "MARS", "US"]))
    result = run_module("m3oe_lightning.predict", [f"run={trained['run'].info.run_id}", f"input={source}",
                                                   f"output={out}", f"logger.tracking_uri={trained['uri']}",
                                                   f"paths.log_dir={tmp / 'logs'}"], cwd=tmp)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {source}, line 6: region='MARS' belongs to no domain the model knows (EU, UK, US -> europe, america)"]
    assert out.read_text() == "an older result\n"


def test_a_federated_run_logs_its_global_model_to_score_raw_rows(tmp_path):
    import mlflow.pyfunc

    from m3oe_lightning.data.readers.synthetic import synthetic_table
    from m3oe_lightning.federate import federate
    from m3oe_lightning.tracking.federation import GLOBAL_WEIGHTS

    overrides = ["data=synthetic", "data.rows=3000", "data.batch_size=256", "model=mmoe", "federated=fedavg",
                 "federated.partition=dirichlet", "federated.num_clients=3", "federated.rounds=1", "seed=7",
                 *isolated(tmp_path)[:4]]
    with pytest.raises(UserInputError, match="logger.client_model='client9' is not a client among client0, "):
        federate(compose_train([*overrides, "logger.client_model=client9"], config_name="federate"))
    federate(compose_train([*overrides, "logger.client_model=client1"], config_name="federate"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("m3oe-federated").experiment_id])
    rows = synthetic_table(rows=200, seed=0).frame  # the generator's raw rows (the run's own settings)
    mlflow.set_tracking_uri(uri)
    mlflow_model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    served = mlflow_model.predict(rows[["user_id", "item_id", "domain", "x0", "x1"]])
    folder = tmp_path / "logs" / "checkpoints" / run.info.run_id
    cfg = compose_train(overrides, config_name="federate")
    dataset = build(cfg.data).load()
    network = build(cfg.model, schema=dataset.schema)
    network.load_state_dict(torch.load(folder / GLOBAL_WEIGHTS, weights_only=True))
    network.eval()
    batch, _ = dataset.encoders.encode(rows, str)
    with torch.no_grad():
        expected = torch.sigmoid(network(batch)).numpy()
    np.testing.assert_allclose(served[["p_t0", "p_t1"]].to_numpy(), expected, rtol=0, atol=1e-6)
    # logger.client_model: that client's personalized model (after one FedAvg round: its own local fit)
    personal = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/client_model")
    network.load_state_dict(torch.load(folder / "client_client1_weights.pt", weights_only=True))
    with torch.no_grad():
        own = torch.sigmoid(network(batch)).numpy()
    scored = personal.predict(rows[["user_id", "item_id", "domain", "x0", "x1"]])[["p_t0", "p_t1"]].to_numpy()
    np.testing.assert_allclose(scored, own, rtol=0, atol=1e-6)
    assert np.abs(own - expected).max() > 1e-4  # not the global model


def test_export_writes_an_onnx_graph_that_scores_like_the_checkpoint(trained, capsys, caplog):
    from m3oe_lightning.export import export
    from m3oe_lightning.serving.onnx_export import onnx_logits

    tmp, run_id = trained["tmp"], trained["run"].info.run_id
    target = tmp / "exported" / "model.onnx"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)  # as Hydra configures it: the exporter must stay quiet even then
    try:
        export(compose("export", [f"run={run_id}", f"output={target}", "verify_rows=512",
                                  f"logger.tracking_uri={trained['uri']}", f"paths.log_dir={tmp / 'logs'}"]))
    finally:
        root.setLevel(level)
    out = capsys.readouterr()
    assert "onnxruntime agrees with PyTorch on 512 rows" in out.out
    assert "INFO" not in out.out + out.err + caplog.text  # no exporter chatter
    layout = json.loads(target.with_name("model.onnx.json").read_text())
    assert [c["name"] for c in layout["inputs"]["sparse"]["columns"]] == ["user_id", "item", "domain"]
    assert layout["inputs"]["domain"]["values"] == ["europe", "america"] and layout["output"]["tasks"] == ["click",
                                                                                                          "buy"]
    test = build(trained["cfg"].data).load().test
    probabilities = 1 / (1 + np.exp(-onnx_logits(target, test.rows(slice(None)))))
    np.testing.assert_allclose(probabilities, checkpoint_probabilities(trained), rtol=0, atol=1e-5)
