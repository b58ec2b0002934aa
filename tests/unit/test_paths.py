"""Data root resolution: explicit, then M3OE_DATA_DIR, then ./data, then ../shared/data; each dataset is looked
for under each root in turn (the first root holding *its* files wins)."""

from __future__ import annotations

import pytest

from m3oe_lightning.data import paths
from m3oe_lightning.data.paths import candidate_roots, resolve_data_root
from m3oe_lightning.data.registry import FILE_DATASETS, load_dataset
from m3oe_lightning.errors import UserInputError


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



# --- each dataset is found on its own (issue #16) --------------------------------------------------------


def lay_out(tmp_path, monkeypatch):
    """cwd with ./data holding only the user's own CSV; ../shared/data holding MovieLens-100K's marker files."""
    work = tmp_path / "checkout"
    (work / "data").mkdir(parents=True)
    (work / "data" / "events.csv").write_text("user_id,item_id\n1,2\n")
    shared = tmp_path / "shared" / "data" / "movielens-100k"
    shared.mkdir(parents=True)
    for name in ("u.data", "u.user", "u.item", "u.genre"):
        (shared / name).write_text("")
    monkeypatch.chdir(work)
    monkeypatch.setattr(paths, "_REPO_ROOT", tmp_path / "elsewhere" / "repo")
    monkeypatch.delenv("M3OE_DATA_DIR", raising=False)
    return work, shared


def test_a_csv_in_data_does_not_hide_the_shared_datasets(tmp_path, monkeypatch):
    work, shared = lay_out(tmp_path, monkeypatch)
    spec = FILE_DATASETS["movielens100k"]
    assert spec.folder_for(None) == shared.resolve()
    (work / "data" / "movielens-100k").mkdir()  # an empty folder of the same name does not count either
    assert spec.folder_for(None) == shared.resolve()
    for name in ("u.data", "u.user", "u.item", "u.genre"):
        (work / "data" / "movielens-100k" / name).write_text("")
    assert spec.folder_for(None) == (work / "data" / "movielens-100k").resolve()  # ./data holds it: first
    monkeypatch.setenv("M3OE_DATA_DIR", str(tmp_path / "env"))  # set but without the dataset: looked past
    assert spec.folder_for(None) == (work / "data" / "movielens-100k").resolve()
    assert candidate_roots(None)[:2] == [tmp_path / "env", (work / "data").resolve()]
    assert candidate_roots(tmp_path / "given") == [tmp_path / "given"]  # an explicit root is the only place


def test_a_dataset_no_root_holds_names_every_place_looked(tmp_path, monkeypatch):
    work, _ = lay_out(tmp_path, monkeypatch)
    with pytest.raises(UserInputError) as err:
        load_dataset("movielens1m", root=None, split="random", split_seed=0, download=False, cache_dir=None)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"MovieLens-1M data directory {work / 'data' / 'movielens-1m'}")
    assert message.endswith(f"(looked for movielens-1m/ under {work / 'data'}, {tmp_path / 'shared' / 'data'}, "
                            f"{tmp_path / 'elsewhere' / 'shared' / 'data'})")
