"""The README's one-row example, then ``make report``'s module: the row is found by its preset's study tag,
the report goes to logs/reports/ (never over the committed one) and says the data are not the paper's."""

from __future__ import annotations

from m3oe_lightning.reports import paper
from tests.helpers import REPO_ROOT, isolated, run_module, seeded_store


def test_a_single_paper_row_reports_into_logs_and_labels_its_data(tmp_path, monkeypatch, capsys):
    seeded_store(tmp_path)
    run = run_module("m3oe_lightning.train", [*isolated(tmp_path), "experiment=paper/mmoe_mdmt", "data=synthetic",
                                             "data.rows=800", "trainer.max_epochs=1"], cwd=REPO_ROOT, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    committed = (REPO_ROOT / "experiments" / "movielens" / "README.md").read_bytes()
    # the report's module in process, from the folder a user runs it in (its default output is relative)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    paper.main(["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    written = (tmp_path / "logs" / "reports" / "movielens" / "README.md").read_text()
    assert "MMOE-MDMT" in written and "NOT the paper's dataset" in written
    assert "not the paper's MovieLens-1M" in capsys.readouterr().err
    assert (REPO_ROOT / "experiments" / "movielens" / "README.md").read_bytes() == committed
