"""Data root resolution: explicit, then M3OE_DATA_DIR, then ./data, then ../shared/data."""

from __future__ import annotations

from m3oe_lightning.data import paths
from m3oe_lightning.data.paths import resolve_data_root


def test_explicit_root_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("M3OE_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "given") == tmp_path / "given"
    assert resolve_data_root(str(tmp_path / "given")) == tmp_path / "given"


def test_env_then_local_then_shared(tmp_path, monkeypatch):
    work = tmp_path / "checkout"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(paths, "_REPO_ROOT", tmp_path / "elsewhere" / "repo")
    monkeypatch.setenv("M3OE_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("M3OE_DATA_DIR")
    assert resolve_data_root(None) == work / "data"  # nothing exists: where a download would go
    (tmp_path / "elsewhere" / "shared" / "data").mkdir(parents=True)
    assert resolve_data_root(None) == tmp_path / "elsewhere" / "shared" / "data"
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert resolve_data_root(None) == tmp_path / "shared" / "data"  # ../shared/data from the cwd
    (work / "data").mkdir()
    assert resolve_data_root(None) == work / "data"

