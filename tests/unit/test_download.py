"""ml-1m.zip download: verified before extraction, extracted atomically, offline via file:// URLs."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import zipfile
from pathlib import Path

import pytest

from m3oe_lightning.data import registry
from m3oe_lightning.data.readers import movielens
from m3oe_lightning.data.readers.movielens import download_movielens1m, load_movielens1m, read_movielens1m
from m3oe_lightning.errors import UserInputError

RATINGS = [(1, 1, 5), (1, 2, 3), (2, 1, 4), (2, 2, 1), (1, 3, 5), (1, 4, 2), (2, 3, 4), (2, 4, 5), (1, 5, 1),
           (2, 5, 3)]  # ten distinct (user, movie) pairs: enough rows for a train, a val and a test row
FILES = {
    "users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n",
    "movies.dat": "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Heat (1995)::Action|Crime\n"
                  "3::Casino (1995)::Drama\n4::Babe (1995)::Comedy\n5::Nixon (1995)::Drama\n",
    "ratings.dat": "".join(f"{u}::{m}::{r}::97830{k:04d}\n" for k, (u, m, r) in enumerate(RATINGS)),
}


def make_zip(tmp_path: Path, members: dict[str, str] | None = None) -> tuple[str, str]:
    """A GroupLens-shaped ml-1m.zip; returns its file:// URL and SHA-256."""
    path = tmp_path / "mirror" / "ml-1m.zip"
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ml-1m/", "")
        archive.writestr("ml-1m/README", "GroupLens README\n")
        for name, text in (members if members is not None else FILES).items():
            archive.writestr(f"ml-1m/{name}", text)
    return path.as_uri(), hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_verifies_and_extracts(tmp_path):
    url, sha = make_zip(tmp_path)
    dest = tmp_path / "data" / "movielens-1m"
    assert download_movielens1m(dest, url=url, sha256=sha) == dest
    # exactly the three files: no temp folder, no archive left behind
    assert sorted(p.name for p in dest.iterdir()) == ["movies.dat", "ratings.dat", "users.dat"]
    assert (dest / "ratings.dat").read_text() == FILES["ratings.dat"]
    frame = read_movielens1m(dest)
    assert frame["click"].tolist() == [int(r >= 4) for *_, r in RATINGS]
    assert frame["like"].tolist() == [int(r == 5) for *_, r in RATINGS]


def test_wrong_checksum_extracts_nothing(tmp_path):
    url, sha = make_zip(tmp_path)
    dest = tmp_path / "dest"
    wrong = "0" * 64
    with pytest.raises(UserInputError) as err:
        download_movielens1m(dest, url=url, sha256=wrong)
    message = str(err.value)
    assert "ml-1m.zip" in message and wrong in message and sha in message
    assert list(dest.iterdir()) == []


def test_archive_without_ratings_is_rejected_and_nothing_is_moved(tmp_path):
    url, sha = make_zip(tmp_path, {k: v for k, v in FILES.items() if k != "ratings.dat"})
    dest = tmp_path / "dest"
    with pytest.raises(UserInputError, match="has no ml-1m/ratings.dat"):
        download_movielens1m(dest, url=url, sha256=sha)
    assert list(dest.iterdir()) == []


def test_unreachable_url_is_a_user_error(tmp_path):
    missing = (tmp_path / "absent.zip").as_uri()
    with pytest.raises(UserInputError, match="cannot download .*absent.zip.*grouplens.org"):
        download_movielens1m(tmp_path / "dest", url=missing, sha256="0" * 64)


def test_load_with_download_fetches_only_when_missing(tmp_path, monkeypatch):
    url, sha = make_zip(tmp_path)
    calls: list[Path] = []

    def fake_download(dest: Path) -> Path:
        calls.append(dest)
        return download_movielens1m(dest, url=url, sha256=sha)

    monkeypatch.setattr(movielens, "download_movielens1m", fake_download)
    root = tmp_path / "fresh"
    ds = load_movielens1m(root, download=True, split="ordered")
    assert len(ds.train) + len(ds.val) + len(ds.test) == len(RATINGS)
    load_movielens1m(root, download=True)
    assert calls == [root]  # the second load found the files and did not download again


def test_default_source_is_grouplens_with_a_pinned_sha256():
    assert re.fullmatch(r"[0-9a-f]{64}", movielens.ML1M_SHA256)
    assert movielens.GROUPLENS_URL == "https://files.grouplens.org/datasets/movielens/ml-1m.zip"


def test_load_dataset_downloads_through_the_dataset_entry(tmp_path, monkeypatch):
    """The registry calls the entry's own ``download`` (no reader named there), only when files are absent."""
    url, sha = make_zip(tmp_path)
    calls: list[Path] = []

    def fake_download(dest: Path) -> None:
        calls.append(dest)
        download_movielens1m(dest, url=url, sha256=sha)

    entry = dataclasses.replace(registry.FILE_DATASETS["movielens1m"], download=fake_download)
    monkeypatch.setitem(registry.FILE_DATASETS, "movielens1m", entry)
    kwargs = dict(root=str(tmp_path / "root"), split="ordered", split_seed=0, download=True, cache_dir=None)
    first = registry.load_dataset("movielens1m", **kwargs)
    registry.load_dataset("movielens1m", **kwargs)
    assert calls == [tmp_path / "root" / "movielens-1m"]
    assert len(first.train) + len(first.val) + len(first.test) == len(RATINGS) and first.regions is not None
