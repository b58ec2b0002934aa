"""MovieLens readers: both ML-1M layouts and ML-100K on tiny files, strict errors, and the real data."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from m3oe_lightning.data.paths import resolve_data_root
from m3oe_lightning.data.readers.movielens import (
    DOMAINS,
    RAW_COLUMNS,
    TASKS,
    load_movielens1m,
    load_movielens100k,
    ml100k_age_code,
    movielens1m_source_files,
    movielens100k_source_files,
    read_movielens1m,
    read_movielens100k,
    zip_regions,
)
from m3oe_lightning.errors import UserInputError

# --- tiny ML-1M files -----------------------------------------------------------------------------------

USERS = [
    "1::F::1::10::48067",
    "2::M::56::16::70072",
    "3::M::25::15::55117",
    "4::F::45::7::02460",
    "5::M::18::20::55455",
]
MOVIES = [
    "1::Toy Story (1995)::Animation|Children's|Comedy",
    "2::Jumanji (1995)::Adventure|Children's|Fantasy",
    "3::Am\u00e9lie (2001)::Comedy|Romance",
]
# (user, movie, rating): file order matters, user 3 deliberately comes before user 1's second rating
RATINGS = [(1, 1, 5), (1, 2, 3), (3, 3, 4), (1, 3, 1), (2, 1, 4), (2, 2, 5), (4, 3, 2), (5, 1, 5),
           (5, 2, 4), (4, 1, 3)]
RECON_HEADER = "ratings_dat_line,user_id,movie_id,rating,timestamp,split,click,like,rating_le3_unknown,source"


def _write_lines(path: Path, lines: list[str], encoding: str = "latin-1") -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def ratings_dat_lines(ratings=RATINGS) -> list[str]:
    return [f"{u}::{m}::{r}::97830{k:04d}" for k, (u, m, r) in enumerate(ratings)]


def recon_lines(ratings=RATINGS, hide_rating_le3: bool = True) -> list[str]:
    """The reconstruction's CSV: a rating <= 3 is left empty (as in the real file) with exact labels."""
    lines = [RECON_HEADER]
    for k, (u, m, r) in enumerate(ratings):
        hidden = hide_rating_le3 and r <= 3
        source = '"unknown:rating<=3 (train split, not in positives)"' if hidden else "amahuli00:test"
        lines.append(f"{k},{u},{m},{'' if hidden else r},{'' if hidden else 978300000 + k},train,"
                     f"{int(r >= 4)},{int(r == 5)},{int(hidden)},{source}")
    return lines


def write_ml1m(folder: Path, *, layout: str = "dat", users=USERS, movies=MOVIES, ratings=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _write_lines(folder / "users.dat", users)
    _write_lines(folder / "movies.dat", movies)
    if layout == "dat":
        _write_lines(folder / "ratings.dat", ratings if ratings is not None else ratings_dat_lines())
    else:
        text = "\n".join(ratings if ratings is not None else recon_lines()) + "\n"
        with gzip.open(folder / "ratings_reconstructed.csv.gz", "wt") as fh:
            fh.write(text)
    return folder


def expected_labels(ratings=RATINGS) -> tuple[np.ndarray, np.ndarray]:
    r = np.array([x[2] for x in ratings])
    return (r >= 4).astype(np.int8), (r == 5).astype(np.int8)


# --- ML-1M: both layouts ------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["dat", "csv"])
def test_ml1m_reader_keeps_file_order_and_joins_attributes(tmp_path, layout):
    frame = read_movielens1m(write_ml1m(tmp_path / "ml", layout=layout))
    assert list(frame.columns) == list(RAW_COLUMNS)
    assert frame["user_id"].tolist() == [u for u, _, _ in RATINGS]
    assert frame["movie_id"].tolist() == [m for _, m, _ in RATINGS]
    click, like = expected_labels()
    np.testing.assert_array_equal(frame["click"].to_numpy(), click)
    np.testing.assert_array_equal(frame["like"].to_numpy(), like)
    assert frame["click"].dtype == np.int8 and frame["like"].dtype == np.int8
    first = frame.iloc[2]  # user 3, movie 3
    assert (first["gender"], first["age"], first["occupation"], first["zip"]) == ("M", 25, 15, "55117")
    assert first["genre"] == "Comedy"  # first of "Comedy|Romance", title read as latin-1
    assert frame.loc[frame["movie_id"] == 1, "genre"].unique().tolist() == ["Animation"]
    assert frame["age"].tolist() == [1, 1, 25, 1, 56, 56, 45, 18, 18, 45]


def test_reconstruction_keeps_exact_labels_when_rating_is_unknown(tmp_path):
    folder = write_ml1m(tmp_path / "ml", layout="csv")
    frame = read_movielens1m(folder)
    assert movielens1m_source_files(folder)[0].name == "ratings_reconstructed.csv.gz"
    assert "1,1,2,,,train,0,0,1," in "\n".join(recon_lines())  # rating 3 is hidden in the fixture
    assert int(frame["click"].sum()) == 6 and int(frame["like"].sum()) == 3


def test_ratings_dat_wins_over_reconstruction(tmp_path):
    folder = write_ml1m(tmp_path / "ml", layout="csv")
    flipped = [(u, m, 6 - r) for u, m, r in RATINGS]  # different labels, so we can tell which was read
    _write_lines(folder / "ratings.dat", ratings_dat_lines(flipped))
    frame = read_movielens1m(folder)
    np.testing.assert_array_equal(frame["click"].to_numpy(), expected_labels(flipped)[0])
    assert movielens1m_source_files(folder)[0].name == "ratings.dat"


def test_ml1m_found_in_unzipped_subfolder(tmp_path):
    write_ml1m(tmp_path / "ml-1m")
    assert len(read_movielens1m(tmp_path)) == len(RATINGS)


def _replace_line(lines: list[str], line_no: int, text: str) -> list[str]:
    out = list(lines)
    out[line_no - 1] = text
    return out


DAT_CASES = {
    "field-count": ("ratings.dat", _replace_line(ratings_dat_lines(), 3, "3::3::4"),
                    ["line 3", "expected 4 fields"]),
    "non-integer-id": ("ratings.dat", _replace_line(ratings_dat_lines(), 2, "abc::2::3::978300000"),
                       ["line 2", "user_id must be an integer", "'abc'"]),
    "rating-range": ("ratings.dat", _replace_line(ratings_dat_lines(), 4, "1::3::6::978300000"),
                     ["line 4", "rating must be between 1 and 5", "6"]),
    "rating-zero": ("ratings.dat", _replace_line(ratings_dat_lines(), 1, "1::1::0::978300000"),
                    ["line 1", "rating"]),
    "empty-line": ("ratings.dat", _replace_line(ratings_dat_lines(), 5, ""), ["line 5", "empty line"]),
    "empty-file": ("ratings.dat", [], ["ratings.dat is empty"]),
    "unknown-user": ("ratings.dat", _replace_line(ratings_dat_lines(), 6, "99::2::5::978300000"),
                     ["line 6", "user_id 99 is not in", "users.dat"]),
    "unknown-movie": ("ratings.dat", _replace_line(ratings_dat_lines(), 7, "4::77::2::978300000"),
                      ["line 7", "movie_id 77 is not in", "movies.dat"]),
    "age-code": ("users.dat", _replace_line(USERS, 2, "2::M::17::16::70072"),
                 ["line 2", "age 17 is not an ML-1M age code"]),
    "user-fields": ("users.dat", _replace_line(USERS, 4, "4::F::45::7::02460::x"),
                    ["line 4", "expected 5 fields", "6 fields"]),
    "duplicate-user": ("users.dat", _replace_line(USERS, 5, "1::M::18::20::55455"),
                       ["line 5", "appears twice"]),
    "movie-id": ("movies.dat", _replace_line(MOVIES, 3, "3a::Am\u00e9lie (2001)::Comedy"),
                 ["line 3", "movie_id must be an integer"]),
}


@pytest.mark.parametrize("case", list(DAT_CASES))
def test_malformed_ml1m_dat_names_file_and_line(tmp_path, case):
    name, lines, expected = DAT_CASES[case]
    folder = write_ml1m(tmp_path / "ml")
    (folder / name).write_bytes(("\n".join(lines) + "\n").encode("latin-1") if lines else b"")
    with pytest.raises(UserInputError) as err:
        read_movielens1m(folder)
    message = str(err.value)
    assert str(folder / name) in message or name in message
    for part in expected:
        assert part in message, message


RECON_CASES = {
    "too-many-fields": (_replace_line(recon_lines(), 3, recon_lines()[2] + ",extra"),
                        ["line 3", "expected 10 comma-separated fields", "found 11"]),
    "non-integer-movie": (_replace_line(recon_lines(), 2, "0,1,x1,5,978300000,test,1,1,0,a"),
                          ["line 2", "movie_id must be an integer"]),
    "empty-user": (_replace_line(recon_lines(), 4, "2,,3,4,978300002,test,1,0,0,a"),
                   ["line 4", "user_id must be an integer", "empty field"]),
    "rating-range": (_replace_line(recon_lines(), 5, "3,3,3,9,978300003,test,1,1,0,a"),
                     ["line 5", "rating must be empty or an integer between 1 and 5"]),
    "label-not-binary": (_replace_line(recon_lines(), 2, "0,1,1,5,978300000,test,2,1,0,a"),
                         ["line 2", "click must be between 0 and 1"]),
    "labels-disagree": (_replace_line(recon_lines(), 2, "0,1,1,5,978300000,test,1,0,0,a"),
                        ["line 2", "disagree with rating 5"]),
    "like-without-click": (_replace_line(recon_lines(), 3, "1,1,2,,,train,0,1,1,a"),
                           ["line 3", "like=1 requires click=1"]),
    "missing-column": ([RECON_HEADER.replace(",like", ",liked")] + recon_lines()[1:],
                       ["line 1", "lacks column(s) like"]),
    "header-only": ([RECON_HEADER], ["has a header but no rows"]),
}


@pytest.mark.parametrize("case", list(RECON_CASES))
def test_malformed_reconstruction_names_file_and_line(tmp_path, case):
    lines, expected = RECON_CASES[case]
    folder = write_ml1m(tmp_path / "ml", layout="csv", ratings=lines)
    with pytest.raises(UserInputError) as err:
        read_movielens1m(folder)
    message = str(err.value)
    assert "ratings_reconstructed.csv.gz" in message
    for part in expected:
        assert part in message, message


def test_empty_gz_is_reported(tmp_path):
    folder = write_ml1m(tmp_path / "ml", layout="csv")
    with gzip.open(folder / "ratings_reconstructed.csv.gz", "wt") as fh:
        fh.write("")
    with pytest.raises(UserInputError, match="ratings_reconstructed.csv.gz is empty"):
        read_movielens1m(folder)


def test_missing_directory_says_how_to_get_the_data(tmp_path):
    missing = tmp_path / "nowhere" / "movielens-1m"
    with pytest.raises(UserInputError) as err:
        load_movielens1m(missing)
    message = str(err.value)
    assert str(missing) in message
    assert "https://grouplens.org/datasets/movielens/1m/" in message
    assert "data.download=true" in message and "M3OE_DATA_DIR" in message


def test_folder_without_ratings_is_reported(tmp_path):
    (tmp_path / "ml").mkdir()
    with pytest.raises(UserInputError, match="no MovieLens-1M ratings in .*ratings.dat"):
        movielens1m_source_files(tmp_path / "ml")


def test_missing_users_file_is_named(tmp_path):
    folder = write_ml1m(tmp_path / "ml")
    (folder / "users.dat").unlink()
    with pytest.raises(UserInputError) as err:
        read_movielens1m(folder)
    assert f"missing {folder / 'users.dat'}" in str(err.value)
    assert "grouplens.org" in str(err.value)


def test_load_movielens1m_domains_labels_and_schema(tmp_path):
    ds = load_movielens1m(write_ml1m(tmp_path / "ml"), split="ordered")
    schema = ds.schema
    assert schema.domains == DOMAINS == ("age_1-18", "age_25", "age_35plus")
    assert schema.tasks == TASKS == ("click", "like")
    assert [f.name for f in schema.sparse] == ["user_id", "movie_id", "gender", "occupation", "zip", "genre",
                                               "domain"]
    assert all(f.embed_dim == 16 for f in schema.sparse)
    assert [f.name for f in schema.dense] == ["age"]
    assert schema.input_dim == 113
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 1, 1)
    domain = torch.cat([ds.train.domain, ds.val.domain, ds.test.domain])
    # ages in file order: 1,1,25,1,56,56,45,18,18,45 -> age_1-18=0, age_25=1, age_35plus=2
    assert domain.tolist() == [0, 0, 1, 0, 2, 2, 2, 0, 0, 2]
    assert domain.dtype == torch.int64
    labels = torch.cat([ds.train.labels, ds.val.labels, ds.test.labels])
    click, like = expected_labels()
    assert labels.dtype == torch.float32 and labels.shape == (10, 2)
    assert labels[:, 0].tolist() == click.tolist() and labels[:, 1].tolist() == like.tolist()
    assert ds.train.dense.min() == 0.0 and ds.train.dense.max() == 1.0  # age 1..56 min-max on train
    regions = np.concatenate([ds.regions.of(s) for s in ("train", "val", "test")])
    # users' zips 48067, 70072, 55117, 02460, 55455 -> regions 4, 7, 5, 0, 5 (ratings in file order)
    assert regions.tolist() == ["4", "4", "5", "4", "7", "7", "0", "5", "5", "0"]


def test_zip_regions_are_the_first_digit_or_other():
    zips = pd.Series(["48067", "T8H1N", "02460", "", "V3N4P", "98101-1234", None], dtype=object)
    assert list(zip_regions(zips)) == ["4", "_other", "0", "_other", "_other", "9", "_other"]


def test_unknown_split_kind_names_the_setting(tmp_path):
    with pytest.raises(UserInputError, match="data.split"):
        load_movielens1m(write_ml1m(tmp_path / "ml"), split="sideways")


# --- ML-100K --------------------------------------------------------------------------------------------

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western"]


def _item(movie_id: int, title: str, flags_set: list[int]) -> str:
    flags = ["1" if g in flags_set else "0" for g in range(19)]
    return "|".join([str(movie_id), title, "01-Jan-1995", "", "http://us.imdb.com/x", *flags])


def write_ml100k(folder: Path, *, data=None, user=None, item=None, genre=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    genre_lines = [f"{g}|{k}" for k, g in enumerate(GENRES)]
    _write_lines(folder / "u.genre", genre if genre is not None else genre_lines)
    _write_lines(folder / "u.user", user if user is not None else [
        "1|24|M|technician|85711", "2|53|F|other|94043", "3|17|M|writer|32067", "4|35|M|technician|43537",
        "5|56|F|other|15213"])
    _write_lines(folder / "u.item", item if item is not None else [
        _item(1, "Toy Story (1995)", [3, 4, 5]), _item(2, "GoldenEye (1995)", [1, 2, 16]),
        _item(3, "Caf\u00e9 Society (1995)", []), _item(4, "Heat (1995)", [0])])
    _write_lines(folder / "u.data", data if data is not None else [
        "1\t1\t5\t881250949", "2\t2\t3\t891717742", "3\t3\t4\t878887116", "4\t4\t1\t880606923",
        "5\t1\t4\t886397596", "1\t2\t2\t884182806", "2\t3\t5\t881171488", "3\t4\t4\t891628467",
        "4\t1\t5\t886324817", "5\t2\t3\t883603013"])
    return folder


def test_ml100k_age_mapping_onto_ml1m_codes():
    ages = np.array([1, 7, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 73])
    codes = [1, 1, 1, 18, 18, 25, 25, 35, 35, 45, 45, 50, 50, 56, 56]
    assert ml100k_age_code(ages).tolist() == codes


def test_ml100k_reader_joins_and_maps(tmp_path):
    frame = read_movielens100k(write_ml100k(tmp_path / "k"))
    assert list(frame.columns) == list(RAW_COLUMNS)
    assert frame["user_id"].tolist() == [1, 2, 3, 4, 5, 1, 2, 3, 4, 5]
    by_user = frame.drop_duplicates("user_id").set_index("user_id")
    assert by_user["age"].to_dict() == {1: 18, 2: 50, 3: 1, 4: 35, 5: 56}
    assert by_user.loc[2, "occupation"] == "other" and by_user.loc[2, "gender"] == "F"
    genre = frame.drop_duplicates("movie_id").set_index("movie_id")["genre"].to_dict()
    assert genre == {1: "Animation", 2: "Action", 3: "unknown", 4: "unknown"}
    assert frame["click"].tolist() == [1, 0, 1, 0, 1, 0, 1, 1, 1, 0]
    assert frame["like"].tolist() == [1, 0, 0, 0, 0, 0, 1, 0, 1, 0]
    ds = load_movielens100k(tmp_path / "k", split="ordered")
    domain = torch.cat([ds.train.domain, ds.val.domain, ds.test.domain])
    assert domain.tolist() == [0, 2, 0, 2, 2, 0, 2, 0, 2, 2]  # ages 24, 53, 17, 35, 56 -> codes 18/50/1/35/56


ML100K_CASES = {
    "item-field-count": ("u.item", [_item(1, "A", [1]), "2|B|01-Jan-1995||url|0|1"], ["u.item, line 2",
                                                                                       "expected 24 fields"]),
    "item-flag": ("u.item", [_item(1, "A", [1]).rsplit("|", 1)[0] + "|2"], ["u.item, line 1", "genre flag"]),
    "data-rating": ("u.data", ["1\t1\t5\t1", "1\t2\t9\t1"],
                    ["u.data, line 2", "rating must be between 1 and 5"]),
    "data-id": ("u.data", ["1\t1\t5\t1", "1\t2\t5\t1", "x\t2\t5\t1"],
                ["u.data, line 3", "user_id must be an integer"]),
    "user-age": ("u.user", ["1|abc|M|technician|85711"], ["u.user, line 1", "age must be an integer"]),
    "genre-index": ("u.genre", ["unknown|0", "Action|2"], ["u.genre, line 2", "expected genre index 1"]),
    "unknown-item": ("u.data", ["1\t1\t5\t1", "1\t99\t5\t1"], ["u.data, line 2", "movie_id 99 is not in"]),
}


@pytest.mark.parametrize("case", list(ML100K_CASES))
def test_malformed_ml100k_names_file_and_line(tmp_path, case):
    name, lines, expected = ML100K_CASES[case]
    folder = write_ml100k(tmp_path / "k")
    _write_lines(folder / name, lines)
    with pytest.raises(UserInputError) as err:
        read_movielens100k(folder)
    for part in expected:
        assert part in str(err.value), str(err.value)


def test_ml100k_missing_file_is_named(tmp_path):
    folder = write_ml100k(tmp_path / "k")
    (folder / "u.item").unlink()
    with pytest.raises(UserInputError, match="missing .*u.item; download ml-100k.zip"):
        movielens100k_source_files(folder)


# --- the real shared data (always present in CI) --------------------------------------------------------


def test_real_movielens100k():
    root = resolve_data_root(None) / "movielens-100k"
    frame = read_movielens100k(root)
    assert len(frame) == 100_000
    assert frame["user_id"].nunique() == 943 and frame["movie_id"].nunique() == 1682
    assert int(frame["click"].sum()) == 55_375 and int(frame["like"].sum()) == 21_201
    ds = load_movielens100k(root)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (80_000, 10_000, 10_000)
    domain = torch.cat([ds.train.domain, ds.val.domain, ds.test.domain])
    assert torch.bincount(domain).tolist() == [26_551, 35_444, 38_005]
    assert ds.schema.sparse[0].vocab_size <= 944 and ds.schema.input_dim == 113


def test_real_movielens1m_reconstruction_counts():
    root = resolve_data_root(None) / "movielens-1m"
    start = time.perf_counter()
    frame = read_movielens1m(root)
    elapsed = time.perf_counter() - start
    assert len(frame) == 1_000_209
    domains = frame["age"].map({1: 0, 18: 0, 25: 1, 35: 2, 45: 2, 50: 2, 56: 2}).to_numpy()
    assert np.bincount(domains).tolist() == [210_747, 395_556, 393_906]
    assert int(frame["click"].sum()) == 575_281 and int(frame["like"].sum()) == 226_310
    assert frame["user_id"].nunique() == 6040 and frame["movie_id"].nunique() == 3706
    assert elapsed < 10.0, f"reading ML-1M took {elapsed:.1f}s"


# --- issue #16: repeated ratings, ids beyond int64, a byte-order mark -----------------------------------


def stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_repeated_ratings_are_dropped_with_one_warning_line(tmp_path, capsys):
    """``cat u.data u.data``: every second copy is dropped before the split (default data.duplicates=drop)."""
    folder = write_ml100k(tmp_path / "ml")
    once = read_movielens100k(folder)
    capsys.readouterr()
    data = folder / "u.data"
    data.write_bytes(data.read_bytes() * 2)
    frame = read_movielens100k(folder)
    pd.testing.assert_frame_equal(frame, once)  # the first occurrences, in file order
    (line,) = stderr_lines(capsys)
    assert line == (f"warning: {data}: 10 duplicate (user, item) rows dropped (data.duplicates=drop; "
                    f"error|keep to choose)")
    ds = load_movielens100k(folder, split="ordered")
    assert len(ds.train) + len(ds.val) + len(ds.test) == 10


def test_repeated_ratings_with_error_or_keep(tmp_path, capsys):
    lines = ratings_dat_lines()
    lines.insert(4, "3::3::1::978300999")  # repeats line 3's (user 3, movie 3) with another rating
    folder = write_ml1m(tmp_path / "ml", ratings=lines)
    with pytest.raises(UserInputError) as err:
        read_movielens1m(folder, duplicates="error")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{folder / 'ratings.dat'}, line 5: (user, item) (3, 3) repeats ")
    assert message.endswith("line 3 (1 duplicate (user, item) rows; data.duplicates=error, drop or keep to go on)")
    assert len(read_movielens1m(folder, duplicates="keep")) == len(RATINGS) + 1
    assert stderr_lines(capsys) == []  # keep: silently as the file is


def test_reconstruction_repeats_name_their_csv_line(tmp_path):
    lines = recon_lines()
    lines.append(lines[2])  # line 3 (user 1, movie 2) again, as line 12
    folder = write_ml1m(tmp_path / "ml", layout="recon", ratings=lines)
    with pytest.raises(UserInputError, match=r"ratings_reconstructed\.csv\.gz, line 12: \(user, item\) \(1, 2\) "
                                             r"repeats .*line 3 "):
        read_movielens1m(folder, duplicates="error")


@pytest.mark.parametrize("column, value", [
    ("user_id", "1180591620717411303424"), ("movie_id", "9223372036854775808"),
    ("timestamp", "1180591620717411303424"), ("timestamp", "-9223372036854775809"),
], ids=["user-2^70", "movie-2^63", "timestamp-2^70", "timestamp-below"])
def test_ids_beyond_int64_name_file_line_and_column(tmp_path, column, value):
    fields = {"user_id": "1", "movie_id": "2", "rating": "3", "timestamp": "978300760"}
    fields[column] = value
    lines = ratings_dat_lines()
    lines[6] = "::".join(fields.values())
    folder = write_ml1m(tmp_path / "ml", ratings=lines)
    with pytest.raises(UserInputError) as err:
        read_movielens1m(folder)
    assert str(err.value) == (f"{folder / 'ratings.dat'}, line 7: {column} {value} does not fit a 64-bit integer "
                              f"(-9223372036854775808 to 9223372036854775807)")


def test_a_byte_order_mark_is_not_part_of_the_first_field(tmp_path):
    folder = write_ml1m(tmp_path / "ml")
    for name in ("users.dat", "ratings.dat"):
        (folder / name).write_bytes(b"\xef\xbb\xbf" + (folder / name).read_bytes())
    assert len(read_movielens1m(folder)) == len(RATINGS)
