"""MovieLens-1M and MovieLens-100K: raw files -> one frame -> :class:`EncodedDataset`.

The M3oE setting: one row per rating, domains are user age groups (``age_1-18`` = codes {1, 18},
``age_25`` = {25}, ``age_35plus`` = {35, 45, 50, 56}), tasks are ``click`` (rating >= 4) and ``like``
(rating == 5). Features: ``user_id, movie_id, gender, occupation, zip, genre`` (first listed genre) and
the domain as sparse ids, ``age`` as one dense value.

Three raw layouts are read, each into the same frame (file order; columns :data:`RAW_COLUMNS`):

* ML-1M as GroupLens ships it: ``ratings.dat``, ``users.dat``, ``movies.dat`` (``::``-separated);
* ML-1M label-complete reconstruction: ``ratings_reconstructed.csv.gz`` (exact ``click``/``like``,
  rating sometimes unknown) + ``users.dat`` + ``movies.dat``; used only when ``ratings.dat`` is absent;
* ML-100K: ``u.data``, ``u.user``, ``u.item``, ``u.genre``; integer ages are mapped onto ML-1M age codes
  so both datasets share domains.

Splits: ``random`` and ``ordered`` (:mod:`m3oe_lightning.data.splits`), and ``released``: 80/10/10 in the
row order of the released M3oE code's ``ml-1m.csv``. That file is the torch-rechub recipe
``merge(merge(ratings, movies), users)`` run with pandas < 2.2, whose inner merge grouped rows by key: by
movie (in order of first rating), then by user (in order of first appearance there). Its first 500 rows
(the repository's ``ml-1m-sample.csv``) equal that order rebuilt from ``ratings.dat`` exactly. Users stay
in contiguous blocks, as with ``ordered``, but which users land in val/test differs: ``ordered`` puts the
highest user ids there, ``released`` the users who appear last in the merged file.

Readers are strict: any malformed line is one :class:`UserInputError` naming the file and line. A rating
repeating an earlier one's (user, item) is handled by ``data.duplicates`` before the split (default
``drop``; see :mod:`m3oe_lightning.data.duplicates`).

The only ``data.*`` settings MovieLens accepts are the feature specification's (``+data.vocabulary=hashed``,
``data.hash_buckets``, ``data.dense_params``; :mod:`m3oe_lightning.data.spec`); without them the ids and the
age scale are fitted on the train rows, as always.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from m3oe_lightning.data.duplicates import DEFAULT_POLICY, handle_duplicates
from m3oe_lightning.data.encode import (
    FITTED,
    SPEC_SETTINGS,
    TableSpec,
    encode_table,
    feature_spec_settings,
    vocabulary_path,
    vocabulary_policy,
)
from m3oe_lightning.data.readers.frames import Where, lookup_rows, require_unique
from m3oe_lightning.data.schema import EncodedDataset
from m3oe_lightning.data.splits import (
    TRAINING_SPLITS,
    check_split_kind,
    merge_grouped_order,
    split_in_order,
    split_indices,
)
from m3oe_lightning.data.textio import (
    read_csv_with_header,
    read_separated,
    require_in_range,
)
from m3oe_lightning.errors import UserInputError

# --- dataset constants --------------------------------------------------------------------------------

ML1M_AGE_CODES: tuple[int, ...] = (1, 18, 25, 35, 45, 50, 56)
DOMAINS: tuple[str, ...] = ("age_1-18", "age_25", "age_35plus")
AGE_TO_DOMAIN: dict[int, int] = {1: 0, 18: 0, 25: 1, 35: 2, 45: 2, 50: 2, 56: 2}
TASKS: tuple[str, ...] = ("click", "like")
SPARSE_COLUMNS: tuple[str, ...] = ("user_id", "movie_id", "gender", "occupation", "zip", "genre")
DENSE_COLUMNS: tuple[str, ...] = ("age",)
RAW_COLUMNS: tuple[str, ...] = (*SPARSE_COLUMNS, "age", *TASKS)
# what scoring joins to a (user_id, movie_id) row, as training did: the user's and the movie's attributes
LOOKUPS: tuple[tuple[str, tuple[str, ...]], ...] = (("user_id", ("gender", "occupation", "zip", "age")),
                                                    ("movie_id", ("genre",)))

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
# SHA-256 of the official ml-1m.zip (5,917,549 bytes). GroupLens publishes only the MD5 below
# (ml-1m.zip.md5); this SHA-256 is the value pinned independently by several public projects (e.g. the
# Keras-RS MovieLens examples) for the archive with that MD5.
ML1M_SHA256 = "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"
ML1M_MD5 = "c4d9eecfca2ab87c1945afe126590906"

ML1M_MANUAL = "download ml-1m.zip from https://grouplens.org/datasets/movielens/1m/ and unzip it there"
ML1M_HOWTO = f"{ML1M_MANUAL}, or set data.download=true, or point data.root / M3OE_DATA_DIR at it"
ML100K_HOWTO = (
    "download ml-100k.zip from https://grouplens.org/datasets/movielens/100k/ and unzip it there, "
    "or point data.root / M3OE_DATA_DIR at it"
)

ML1M_RATINGS = "ratings.dat"
ML1M_RECONSTRUCTED = "ratings_reconstructed.csv.gz"
ML1M_USERS = "users.dat"
ML1M_MOVIES = "movies.dat"
ML100K_FILES: tuple[str, ...] = ("u.data", "u.user", "u.item", "u.genre")
_ML1M_ZIP_MEMBERS: tuple[str, ...] = (ML1M_MOVIES, ML1M_USERS, ML1M_RATINGS)  # ratings.dat last: see below

# --- locating files -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ml1mFiles:
    """The three ML-1M files to read; ``ratings`` is ``ratings.dat`` or the reconstruction."""

    ratings: Path
    users: Path
    movies: Path

    @property
    def reconstructed(self) -> bool:
        return self.ratings.name == ML1M_RECONSTRUCTED


def _candidate_dirs(root: Path, unzipped_name: str) -> list[Path]:
    """The folder itself, or the folder the GroupLens zip unpacks to inside it."""
    return [root, root / unzipped_name]


def _require_dir(root: Path, howto: str, dataset: str) -> None:
    if not root.is_dir():
        raise UserInputError(f"{dataset} data directory {root} does not exist; {howto}")


def _require_file(path: Path, howto: str) -> Path:
    if not path.is_file():
        raise UserInputError(f"missing {path}; {howto}")
    return path


def _find_ml1m_dir(root: Path) -> Path | None:
    for folder in _candidate_dirs(root, "ml-1m"):
        if (folder / ML1M_RATINGS).is_file() or (folder / ML1M_RECONSTRUCTED).is_file():
            return folder
    return None


def movielens1m_files(root: Path, *, download: bool = False) -> Ml1mFiles:
    """Locate the ML-1M files under ``root`` (or ``root/ml-1m``), downloading them first if allowed.

    ``ratings.dat`` wins over the reconstruction when both are present (it has the exact ratings).
    """
    root = Path(root)
    folder = _find_ml1m_dir(root)
    if folder is None and download:
        download_movielens1m(root)
        folder = _find_ml1m_dir(root)
    if folder is None:
        _require_dir(root, ML1M_HOWTO, "MovieLens-1M")
        raise UserInputError(
            f"no MovieLens-1M ratings in {root}: expected {ML1M_RATINGS} (or {ML1M_RECONSTRUCTED}) with "
            f"{ML1M_USERS} and {ML1M_MOVIES}; {ML1M_HOWTO}"
        )
    ratings = folder / ML1M_RATINGS
    if not ratings.is_file():
        ratings = folder / ML1M_RECONSTRUCTED
    return Ml1mFiles(
        ratings=ratings,
        users=_require_file(folder / ML1M_USERS, ML1M_HOWTO),
        movies=_require_file(folder / ML1M_MOVIES, ML1M_HOWTO),
    )


def movielens_settings(dataset: str, **options: Any) -> dict[str, Any]:
    """The feature-specification settings (the only ones MovieLens takes), checked; empty when none is given
    (the registry then keys the cache as before)."""
    unknown = sorted(set(options) - set(SPEC_SETTINGS))
    if unknown:
        raise UserInputError(f"unknown data settings for {dataset}: {unknown}; known: {', '.join(SPEC_SETTINGS)}")
    return feature_spec_settings(options, sparse=SPARSE_COLUMNS, dense=dict.fromkeys(DENSE_COLUMNS, "minmax"))


def spec_file(settings: Mapping[str, Any]) -> list[Path]:
    """The vocabulary file ``data.vocabulary`` names (relative to the working directory), if any."""
    path = vocabulary_path(settings.get("vocabulary", FITTED), Path.cwd())
    return [] if path is None else [path]


def movielens1m_source_files(root: Path, *, download: bool = False, **settings: Any) -> list[Path]:
    """The files whose contents key the ML-1M cache (pass ``download`` so a fresh root is fetched)."""
    files = movielens1m_files(root, download=download)
    return [files.ratings, files.users, files.movies, *spec_file(settings)]


def _find_ml100k_dir(root: Path) -> Path:
    root = Path(root)
    for folder in _candidate_dirs(root, "ml-100k"):
        if (folder / "u.data").is_file():
            return folder
    _require_dir(root, ML100K_HOWTO, "MovieLens-100K")
    raise UserInputError(f"no MovieLens-100K ratings in {root}: expected u.data with "
                         f"u.user, u.item and u.genre; {ML100K_HOWTO}")


def movielens100k_source_files(root: Path, **settings: Any) -> list[Path]:
    """The files whose contents key the ML-100K cache: ``u.data, u.user, u.item, u.genre``."""
    folder = _find_ml100k_dir(root)
    return [*(_require_file(folder / name, ML100K_HOWTO) for name in ML100K_FILES), *spec_file(settings)]


# --- shared validation helpers ------------------------------------------------------------------------


def _lines(path: Path, header_lines: int = 0) -> Where:
    """Row -> ``<path>, line N`` (1-based, after ``header_lines`` header lines)."""
    return lambda row: f"{path}, line {row + 1 + header_lines}"


def _labels_from_rating(rating: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The M3oE label definitions: click = rating > 3, like = rating > 4."""
    return (rating >= 4).astype(np.int8), (rating == 5).astype(np.int8)


# --- ML-1M readers ------------------------------------------------------------------------------------


def read_ml1m_users(path: Path) -> pd.DataFrame:
    """``users.dat`` -> ``user_id, gender, age, occupation, zip`` (age must be an ML-1M age code)."""
    df = read_separated(path, sep="::", names=["user_id", "gender", "age", "occupation", "zip"],
                        int_columns=["user_id", "age", "occupation"])
    bad = np.flatnonzero(~np.isin(df["age"].to_numpy(), ML1M_AGE_CODES))
    if bad.size:
        pos = int(bad[0])
        raise UserInputError(f"{path}, line {pos + 1}: age {df['age'].iloc[pos]} is not an ML-1M age code "
                             f"(one of {', '.join(map(str, ML1M_AGE_CODES))})")
    require_unique(df["user_id"].to_numpy(), _lines(path), "user_id")
    return df


def read_ml1m_movies(path: Path) -> pd.DataFrame:
    """``movies.dat`` (latin-1) -> ``movie_id, genre`` where genre is the first of the listed genres."""
    df = read_separated(path, sep="::", names=["movie_id", "title", "genres"], int_columns=["movie_id"])
    require_unique(df["movie_id"].to_numpy(), _lines(path), "movie_id")
    genre = df["genres"].str.split("|", n=1).str[0]
    return pd.DataFrame({"movie_id": df["movie_id"], "genre": genre})


def read_rating_lines(path: Path, sep: str) -> pd.DataFrame:
    """``user item rating timestamp`` lines -> ``user_id, movie_id, click, like`` (rating must be 1..5)."""
    df = read_separated(path, sep=sep, names=["user_id", "movie_id", "rating", "timestamp"],
                        int_columns=["user_id", "movie_id", "rating", "timestamp"])
    rating = df["rating"].to_numpy()
    require_in_range(rating, 1, 5, path, "rating", header_lines=0)
    click, like = _labels_from_rating(rating)
    return pd.DataFrame({"user_id": df["user_id"], "movie_id": df["movie_id"], "click": click, "like": like})


def read_ml1m_ratings_dat(path: Path) -> pd.DataFrame:
    """``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``)."""
    return read_rating_lines(path, "::")


def _first_line(mask: np.ndarray) -> int | None:
    bad = np.flatnonzero(mask)
    return int(bad[0]) + 2 if bad.size else None  # + header line, 1-based


def _check_reconstructed_labels(df: pd.DataFrame, path: Path) -> None:
    """Labels are 0/1, a known rating is an integer 1..5 and agrees with them, and like implies click."""
    click, like = df["click"].to_numpy(), df["like"].to_numpy()
    require_in_range(click, 0, 1, path, "click", header_lines=1)
    require_in_range(like, 0, 1, path, "like", header_lines=1)
    rating = df["rating"].to_numpy(np.float64)
    known = ~np.isnan(rating)
    line = _first_line(known & ((rating < 1) | (rating > 5) | (rating != np.round(rating))))
    if line is not None:
        raise UserInputError(f"{path}, line {line}: rating must be empty or an integer between 1 and 5, "
                             f"got {rating[line - 2]}")
    want_click, want_like = _labels_from_rating(np.where(known, rating, 0))
    line = _first_line(known & ((click != want_click) | (like != want_like)))
    if line is not None:
        raise UserInputError(f"{path}, line {line}: click/like ({click[line - 2]}/{like[line - 2]}) "
                             f"disagree with rating {rating[line - 2]:g}")
    line = _first_line((like == 1) & (click == 0))
    if line is not None:
        raise UserInputError(f"{path}, line {line}: like=1 requires click=1")


def read_ml1m_ratings_reconstructed(path: Path) -> pd.DataFrame:
    """``ratings_reconstructed.csv.gz`` -> ``user_id, movie_id, click, like`` using its exact labels."""
    df = read_csv_with_header(path, required=["user_id", "movie_id", "rating", "click", "like"],
                              int_columns=["user_id", "movie_id", "click", "like"],
                              optional_float_columns=["rating"], category_columns=["split", "source"])
    _check_reconstructed_labels(df, path)
    return pd.DataFrame({
        "user_id": df["user_id"].to_numpy(np.int64),
        "movie_id": df["movie_id"].to_numpy(np.int64),
        "click": df["click"].to_numpy(np.int8),
        "like": df["like"].to_numpy(np.int8),
    })


# --- joining ratings with users and movies ------------------------------------------------------------


def _take(column: pd.Series, rows: np.ndarray) -> pd.Series | np.ndarray:
    """Broadcast a small per-user/per-movie column to ratings: strings as a categorical (cheap codes)."""
    if column.dtype.kind in "iuf":
        return column.to_numpy()[rows]
    cat = pd.Categorical(column.astype(str))
    return pd.Categorical.from_codes(cat.codes[rows], cat.categories)


def join_ratings(
    ratings: pd.DataFrame,
    users: pd.DataFrame,
    movies: pd.DataFrame,
    *,
    ratings_path: Path,
    users_path: Path,
    movies_path: Path,
    header_lines: int,
) -> pd.DataFrame:
    """One frame in ratings order with :data:`RAW_COLUMNS` (user and movie attributes attached)."""
    user_ids = ratings["user_id"].to_numpy(np.int64)
    movie_ids = ratings["movie_id"].to_numpy(np.int64)
    where = _lines(ratings_path, header_lines)
    urow = lookup_rows(user_ids, users["user_id"].to_numpy(), where, column="user_id", table=users_path,
                       rows_are="rating")
    mrow = lookup_rows(movie_ids, movies["movie_id"].to_numpy(), where, column="movie_id", table=movies_path,
                       rows_are="rating")
    return pd.DataFrame({
        "user_id": user_ids,
        "movie_id": movie_ids,
        "gender": _take(users["gender"], urow),
        "occupation": _take(users["occupation"], urow),
        "zip": _take(users["zip"], urow),
        "genre": _take(movies["genre"], mrow),
        "age": users["age"].to_numpy(np.int64)[urow],
        "click": ratings["click"].to_numpy(np.int8),
        "like": ratings["like"].to_numpy(np.int8),
    })


DUPLICATE_KEY = "(user, item)"


def duplicate_key(settings: Mapping[str, Any]) -> str:
    """The key a repeated rating is recognised by (the registry's hook; MovieLens has no settings)."""
    return DUPLICATE_KEY


def drop_duplicate_ratings(frame: pd.DataFrame, policy: str, ratings_path: Path, header_lines: int) -> pd.DataFrame:
    """Apply ``data.duplicates`` to ratings repeating an earlier (user_id, movie_id), in file order."""
    keep = handle_duplicates([frame["user_id"].to_numpy(), frame["movie_id"].to_numpy()], policy=policy,
                             where=_lines(ratings_path, header_lines), source=str(ratings_path),
                             key_name=DUPLICATE_KEY)
    return frame if keep is None else frame.loc[keep].reset_index(drop=True)


def read_movielens1m(root: Path, *, duplicates: str = DEFAULT_POLICY) -> pd.DataFrame:
    """All 1,000,209 ML-1M ratings (either layout) as one frame in file order."""
    files = movielens1m_files(root)
    if files.reconstructed:
        ratings, header_lines = read_ml1m_ratings_reconstructed(files.ratings), 1
    else:
        ratings, header_lines = read_ml1m_ratings_dat(files.ratings), 0
    frame = join_ratings(ratings, read_ml1m_users(files.users), read_ml1m_movies(files.movies),
                         ratings_path=files.ratings, users_path=files.users, movies_path=files.movies,
                         header_lines=header_lines)
    return drop_duplicate_ratings(frame, duplicates, files.ratings, header_lines)


# --- ML-100K readers ----------------------------------------------------------------------------------


def ml100k_age_code(age: np.ndarray) -> np.ndarray:
    """Integer age -> ML-1M age code (<18: 1, 18-24: 18, 25-34: 25, 35-44: 35, 45-49: 45, 50-55: 50,
    >=56: 56), so ML-100K rows fall into the same three age domains."""
    codes = np.asarray(ML1M_AGE_CODES, dtype=np.int64)
    return codes[np.digitize(np.asarray(age), codes[1:], right=False)]


def read_ml100k_genres(path: Path) -> list[str]:
    """``u.genre`` (``name|index``) -> genre names in flag order; indexes must be 0, 1, 2, ..."""
    df = read_separated(path, sep="|", names=["genre", "index"], int_columns=["index"])
    bad = np.flatnonzero(df["index"].to_numpy() != np.arange(len(df)))
    if bad.size:
        pos = int(bad[0])
        raise UserInputError(f"{path}, line {pos + 1}: expected genre index {pos}, "
                             f"got {df['index'].iloc[pos]}")
    return df["genre"].astype(str).tolist()


def read_ml100k_items(path: Path, genres: list[str]) -> pd.DataFrame:
    """``u.item`` (latin-1, 5 fields + one 0/1 flag per genre) -> ``movie_id, genre`` (first flag set;
    ``unknown`` if none is set)."""
    flags = [f"g{i}" for i in range(len(genres))]
    df = read_separated(path, sep="|", names=["movie_id", "title", "release", "video_release", "url", *flags],
                        int_columns=["movie_id", *flags])
    matrix = df[flags].to_numpy(np.int64)
    for j in range(len(flags)):
        require_in_range(matrix[:, j], 0, 1, path, f"genre flag {genres[j]!r}", header_lines=0)
    require_unique(df["movie_id"].to_numpy(), _lines(path), "movie_id")
    names = np.asarray(genres, dtype=object)
    first = np.where(matrix.any(axis=1), names[matrix.argmax(axis=1)], "unknown")
    return pd.DataFrame({"movie_id": df["movie_id"], "genre": first.astype(str)})


def read_ml100k_users(path: Path) -> pd.DataFrame:
    """``u.user`` (``id|age|gender|occupation|zip``) -> ML-1M-style users (age as an age code)."""
    df = read_separated(path, sep="|", names=["user_id", "age", "gender", "occupation", "zip"],
                        int_columns=["user_id", "age"])
    require_in_range(df["age"].to_numpy(), 1, 120, path, "age", header_lines=0)
    require_unique(df["user_id"].to_numpy(), _lines(path), "user_id")
    df["age"] = ml100k_age_code(df["age"].to_numpy())
    return df[["user_id", "gender", "age", "occupation", "zip"]]


def read_ml100k_ratings(path: Path) -> pd.DataFrame:
    """``u.data`` (tab-separated ``user item rating timestamp``)."""
    return read_rating_lines(path, "\t")


def read_movielens100k(root: Path, *, duplicates: str = DEFAULT_POLICY) -> pd.DataFrame:
    """All 100,000 ML-100K ratings as one frame in file order (same columns as ML-1M)."""
    data, user, item, genre = movielens100k_source_files(root)
    movies = read_ml100k_items(item, read_ml100k_genres(genre))
    frame = join_ratings(read_ml100k_ratings(data), read_ml100k_users(user), movies,
                         ratings_path=data, users_path=user, movies_path=item, header_lines=0)
    return drop_duplicate_ratings(frame, duplicates, data, 0)


# --- public builders ----------------------------------------------------------------------------------


OTHER_REGION = "_other"


def zip_regions(zips: pd.Series) -> pd.Categorical:
    """Region of each row: the zip code's first character when it is a digit (a US zip prefix), else
    :data:`OTHER_REGION` (ML-100K's Canadian postcodes start with a letter). Works on the distinct zips."""
    zips = pd.Categorical(zips)
    per_zip = [first if (first := str(z)[:1]).isdigit() else OTHER_REGION for z in zips.categories]
    names, of_zip = np.unique(np.asarray([*per_zip, OTHER_REGION], dtype=str), return_inverse=True)
    codes = np.where(zips.codes < 0, len(per_zip), zips.codes)  # a missing zip has no digit either
    return pd.Categorical.from_codes(of_zip[codes], names)


def table_spec(name: str, settings: Mapping[str, Any] | None = None, **extras: object) -> TableSpec:
    """How MovieLens rows are encoded; ``settings`` (:func:`movielens_settings`) may fix ids and the age scale."""
    settings = settings or {}
    return TableSpec(name=name, sparse=SPARSE_COLUMNS, dense=DENSE_COLUMNS, tasks=TASKS, domains=DOMAINS,
                     domain_column="age", domain_of_value=AGE_TO_DOMAIN, extras=extras, region_column="region",
                     lookups=LOOKUPS,
                     label_rules=(("click", "rating", ">=", 4.0), ("like", "rating", "==", 5.0)),
                     vocabulary=vocabulary_policy(settings, Path.cwd()),
                     dense_params=dict(settings.get("dense_params", {})))


RELEASED = "released"  # the split kind of the released code's file order (module docstring)
SPLITS: tuple[str, ...] = (RELEASED,)  # beside the kinds every reader has


def released_order(frame: pd.DataFrame) -> np.ndarray:
    """Row order of the released code's ``ml-1m.csv``: ratings merged with movies, then with users, each
    inner merge grouping rows by its key as pandas < 2.2 did (``frame`` in ratings file order)."""
    return merge_grouped_order(frame["movie_id"].to_numpy(), frame["user_id"].to_numpy())


def _encode(frame: pd.DataFrame, name: str, split: str, split_seed: int, settings: Mapping[str, Any],
            **extras: object) -> EncodedDataset:
    advice = "the ratings file is far too short; replace it with the original"
    if split == RELEASED:
        train, val, test = split_in_order(released_order(frame), nonempty=TRAINING_SPLITS, advice=advice)
    else:
        train, val, test = split_indices(len(frame), split, split_seed, nonempty=TRAINING_SPLITS, advice=advice)
    frame = frame.assign(region=zip_regions(frame["zip"]))
    spec = table_spec(name, settings, split=split, split_seed=split_seed, **extras)
    return encode_table(frame, train, val, test, spec)


def load_movielens1m(root: Path, *, split: str = "random", split_seed: int = 2022,
                     download: bool = False, duplicates: str = DEFAULT_POLICY, **settings: Any) -> EncodedDataset:
    """ML-1M as an encoded dataset; ``root`` holds the files (or an ``ml-1m/`` folder with them)."""
    check_split_kind(split, also=SPLITS)
    settings = movielens_settings("movielens1m", **settings)
    files = movielens1m_files(Path(root), download=download)
    layout = "reconstruction" if files.reconstructed else "ratings.dat"
    return _encode(read_movielens1m(Path(root), duplicates=duplicates), "movielens1m", split, split_seed,
                   settings, layout=layout)


def load_movielens100k(root: Path, *, split: str = "random", split_seed: int = 2022,
                       duplicates: str = DEFAULT_POLICY, **settings: Any) -> EncodedDataset:
    """ML-100K as an encoded dataset with ML-1M's domains, tasks and feature columns."""
    check_split_kind(split, also=SPLITS)
    settings = movielens_settings("movielens100k", **settings)
    return _encode(read_movielens100k(Path(root), duplicates=duplicates), "movielens100k", split, split_seed,
                   settings)


# --- download -----------------------------------------------------------------------------------------


def _fetch(url: str, target: Path) -> str:
    """Stream ``url`` into ``target`` and return the SHA-256 of what was written."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, target.open("wb") as out:  # noqa: S310
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise UserInputError(f"cannot download {url} ({exc}); {ML1M_MANUAL}, or point data.root / "
                             f"M3OE_DATA_DIR at a copy") from exc
    return digest.hexdigest()


def _zip_member(archive: zipfile.ZipFile, name: str) -> str:
    """``ml-1m/<name>`` or, for repackaged archives, any member with that base name."""
    members = archive.namelist()
    if f"ml-1m/{name}" in members:
        return f"ml-1m/{name}"
    for member in members:
        if not member.endswith("/") and member.rsplit("/", 1)[-1] == name:
            return member
    raise UserInputError(f"{archive.filename} has no ml-1m/{name}; it is not the MovieLens-1M archive")


def _extract(zip_path: Path, into: Path) -> None:
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for name in _ML1M_ZIP_MEMBERS:
                with archive.open(_zip_member(archive, name)) as src, (into / name).open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile as exc:
        raise UserInputError(f"{zip_path} is not a valid zip archive ({exc})") from exc


def download_movielens1m(dest: Path, url: str = GROUPLENS_URL, sha256: str = ML1M_SHA256) -> Path:
    """Fetch ``ml-1m.zip``, check its SHA-256, and put ``ratings.dat, users.dat, movies.dat`` in ``dest``.

    Everything happens in a temp folder inside ``dest``: the archive is verified *before* anything is
    extracted, and extracted files are moved into place with ``os.replace`` only once all three exist,
    ``ratings.dat`` last (its presence is what marks the folder as ML-1M). A failed download leaves
    ``dest`` as it was. ``file://`` URLs work too (used by the offline tests).
    """
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=".ml-1m-download-", dir=dest))
    except OSError as exc:
        raise UserInputError(f"cannot write MovieLens-1M into {dest} ({exc}); set data.root to a writable "
                             f"folder") from exc
    try:
        zip_path = workdir / "ml-1m.zip"
        actual = _fetch(url, zip_path)
        if actual != sha256.lower():
            raise UserInputError(
                f"ml-1m.zip from {url} has SHA-256 {actual}, expected {sha256.lower()}; nothing was "
                f"extracted. Retry the download, or {ML1M_MANUAL}"
            )
        staged = workdir / "extracted"
        staged.mkdir()
        _extract(zip_path, staged)
        for name in _ML1M_ZIP_MEMBERS:
            os.replace(staged / name, dest / name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return dest
