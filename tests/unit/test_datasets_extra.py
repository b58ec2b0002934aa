"""KuaiRand-Pure, AliExpress and Open Bandit readers on the real shared files (KuaiRand: on logs written here
in the official schema against the real feature files; AliExpress: the real samples laid out by country)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from m3oe_lightning.data.paths import resolve_data_root
from m3oe_lightning.data.readers.aliexpress import aliexpress_settings, load_aliexpress
from m3oe_lightning.data.readers.kuairand import (
    LOG_COLUMNS,
    USER_FEATURES,
    VIDEO_FEATURES,
    kuairand_settings,
    load_kuairand_pure,
    read_kuairand_pure,
)
from m3oe_lightning.data.readers.open_bandit import load_open_bandit, open_bandit_settings
from m3oe_lightning.data.registry import FILE_DATASETS, dataset_names, load_dataset, region_datasets
from m3oe_lightning.errors import UserInputError

SHARED = resolve_data_root(None)
KUAIRAND = SHARED / "kuairand"
ALI_SAMPLES = SHARED / "ali-ccp-aliexpress-samples"
OBD = SHARED / "open-bandit-dataset-sample"


def need(path: Path) -> None:
    """The shared data is part of every checkout's surroundings (CI included): missing data is a failure."""
    assert path.exists(), f"shared data {path} is not here (expected ../shared/data beside the checkout)"


def sizes(ds) -> list[int]:
    return [len(ds.train), len(ds.val), len(ds.test)]


# --- KuaiRand-Pure --------------------------------------------------------------------------------------

# (user_id, video_id, hourmin, is_click, long_view, tab): real ids of the shared feature files
LOG_ROWS = [
    (0, 0, 400, 1, 1, 1), (1, 5, 1230, 0, 0, 1), (0, 5, 2359, 1, 0, 0), (2, 1, 0, 0, 0, 2),
    (3, 2, 815, 1, 1, 4), (1, 0, 1001, 1, 0, 1), (4, 3, 1500, 0, 0, 0), (5, 4, 1745, 1, 1, 2),
    (6, 6, 900, 0, 0, 1), (7, 7, 1100, 1, 0, 6), (8, 8, 1300, 0, 1, 0), (9, 9, 2200, 1, 1, 2),
]


def log_line(user, video, hourmin, click, long_view, tab, **override) -> str:
    row = dict.fromkeys(LOG_COLUMNS, 0)
    row.update(user_id=user, video_id=video, date=20220421, hourmin=hourmin, time_ms=1650485801301,
               is_click=click, long_view=long_view, play_time_ms=5000, duration_ms=20000, tab=tab, **override)
    return ",".join(str(row[c]) for c in LOG_COLUMNS)


def write_kuairand(folder: Path, rows=LOG_ROWS, split_at: int = 7, lines: list[str] | None = None) -> Path:
    """The official folder: the real feature files (linked) and two standard logs written here."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (USER_FEATURES, VIDEO_FEATURES):
        (folder / name).symlink_to(KUAIRAND / name)
    body = lines if lines is not None else [log_line(*r) for r in rows]
    header = ",".join(LOG_COLUMNS)
    (folder / "log_standard_4_08_to_4_21_pure.csv").write_text("\n".join([header, *body[:split_at]]) + "\n")
    (folder / "log_standard_4_22_to_5_08_pure.csv").write_text("\n".join([header, *body[split_at:]]) + "\n")
    return folder


@pytest.fixture
def kuairand_dir(tmp_path):
    need(KUAIRAND / USER_FEATURES)
    return write_kuairand(tmp_path / "kuairand")


def test_kuairand_domains_tasks_and_dropped_tabs(kuairand_dir, capsys):
    ds = load_kuairand_pure(kuairand_dir, split="ordered")
    assert "dropped 2 of 12 rows whose tab is not in data.tabs (4, 6)" in capsys.readouterr().out
    assert ds.schema.domains == ("tab_0", "tab_1", "tab_2") and ds.schema.tasks == ("click", "long_view")
    kept = [r for r in LOG_ROWS if r[5] in (0, 1, 2)]
    domain = torch.cat([ds.train.domain, ds.val.domain, ds.test.domain])
    labels = torch.cat([ds.train.labels, ds.val.labels, ds.test.labels])
    assert domain.tolist() == [r[5] for r in kept]  # tab t is domain index t with the default tabs
    assert labels.tolist() == [[float(r[3]), float(r[4])] for r in kept]
    names = [f.name for f in ds.schema.sparse]
    assert names[:2] == ["user_id", "video_id"] and names[-3:] == ["first_tag", "hour", "domain"]
    assert [f.name for f in ds.schema.dense] == ["follow_user_num", "fans_user_num", "friend_user_num",
                                                 "register_days", "video_duration"]


def test_kuairand_joins_user_and_video_features(kuairand_dir):
    table, _, _, assignment = read_kuairand_pure(kuairand_dir, **kuairand_settings())
    users = pd.read_csv(KUAIRAND / USER_FEATURES).set_index("user_id")
    videos = pd.read_csv(KUAIRAND / VIDEO_FEATURES).set_index("video_id")
    for row, (user, video, hourmin, *_rest) in enumerate(LOG_ROWS):
        assert table.text["user_active_degree"][row] == users.loc[user, "user_active_degree"]
        assert table.text["fans_user_num_range"][row] == users.loc[user, "fans_user_num_range"]
        assert table.numbers["register_days"][row] == users.loc[user, "register_days"]
        assert table.text["author_id"][row] == str(videos.loc[video, "author_id"])
        assert table.text["first_tag"][row] == str(videos.loc[video, "tag"]).split(",")[0]
        assert table.text["hour"][row] == f"{hourmin // 100:02d}"
        assert np.isclose(table.numbers["video_duration"][row], videos.loc[video, "video_duration"], equal_nan=True)
    assert table.text["first_tag"][1] == "20"  # video 5 has tag "20,43"
    assert assignment.dropped == 2


def test_kuairand_tabs_are_configurable(kuairand_dir):
    ds = load_kuairand_pure(kuairand_dir, tabs=[1, 2, 4])  # 8 rows: each split gets one
    assert ds.schema.domains == ("tab_1", "tab_2", "tab_4") and sum(sizes(ds)) == 8
    with pytest.raises(UserInputError, match=r"data\.tabs: domain 'tab_5' \(tab = 5\) has no rows"):
        load_kuairand_pure(kuairand_dir, tabs=[1, 5])


def test_kuairand_errors_name_file_and_line(tmp_path):
    need(KUAIRAND / USER_FEATURES)
    lines = [log_line(*r) for r in LOG_ROWS]
    lines[9] = log_line(99_999_999, 0, 400, 1, 1, 1)  # second file, its line 4
    folder = write_kuairand(tmp_path / "a", lines=lines)
    with pytest.raises(UserInputError, match=r"log_standard_4_22_to_5_08_pure\.csv, line 4: user_id 99999999 is not "
                                             r"in .*user_features_pure\.csv"):
        load_kuairand_pure(folder)
    lines = [log_line(*r) for r in LOG_ROWS]
    lines[2] = log_line(0, 5, 2359, 2, 0, 0)
    folder = write_kuairand(tmp_path / "b", lines=lines)
    with pytest.raises(UserInputError, match=r"log_standard_4_08_to_4_21_pure\.csv, line 4: label is_click .* got 2"):
        load_kuairand_pure(folder)


def test_kuairand_without_logs_says_where_to_get_them(tmp_path):
    need(KUAIRAND / USER_FEATURES)
    with pytest.raises(UserInputError, match=r"no KuaiRand-Pure logs matching data\.logs='log_standard_\*_pure\.csv'"):
        load_kuairand_pure(KUAIRAND)  # the shared folder: features only
    with pytest.raises(UserInputError, match="is a feedback signal"):
        kuairand_settings(dense_features={"play_time_ms": "log1p"})
    with pytest.raises(UserInputError, match="not a log column"):
        load_kuairand_pure(write_kuairand(tmp_path / "k"), sparse_features=["user_id", "shoe_size"])


# --- AliExpress -----------------------------------------------------------------------------------------


def write_aliexpress(folder: Path) -> Path:
    """The real samples in the official per-country layout: train rows 1-50 / 51-100 and test rows 1-10 /
    11-20 become NL / ES."""
    need(ALI_SAMPLES / "aliexpress_train_sample.csv")
    train = (ALI_SAMPLES / "aliexpress_train_sample.csv").read_text().splitlines()
    test = (ALI_SAMPLES / "aliexpress_test_sample.csv").read_text().splitlines()
    for k, country in enumerate(("NL", "ES")):
        sub = folder / f"AliExpress_{country}"
        sub.mkdir(parents=True)
        (sub / "train.csv").write_text("\n".join([train[0], *train[1 + 50 * k: 51 + 50 * k]]) + "\n")
        (sub / "test.csv").write_text("\n".join([test[0], *test[1 + 10 * k: 11 + 10 * k]]) + "\n")
    return folder


def test_aliexpress_official_split_and_countries(tmp_path):
    folder = write_aliexpress(tmp_path / "aliexpress")
    ds = load_aliexpress(folder, countries=["NL", "ES"])
    assert ds.schema.domains == ("NL", "ES") and ds.schema.tasks == ("click", "conversion")
    assert sizes(ds) == [90, 10, 20]  # val = 10% of the 100 train.csv rows; test = the 20 test.csv rows
    assert torch.bincount(ds.test.domain).tolist() == [10, 10]
    assert len(ds.schema.sparse) == 17 and len(ds.schema.dense) == 63  # categorical_1..16 + domain
    train = pd.read_csv(ALI_SAMPLES / "aliexpress_train_sample.csv")
    test = pd.read_csv(ALI_SAMPLES / "aliexpress_test_sample.csv")
    got = torch.cat([ds.train.labels, ds.val.labels]).sum(0).tolist()
    assert got == [float(train.click.sum()), float(train.conversion.sum())]
    assert ds.test.labels.sum(0).tolist() == [float(test.click.sum()), float(test.conversion.sum())]
    assert sizes(load_aliexpress(folder, countries=["NL", "ES"], split="random")) == [96, 12, 12]


def test_aliexpress_errors(tmp_path):
    folder = write_aliexpress(tmp_path / "aliexpress")
    with pytest.raises(UserInputError, match=r"missing .*AliExpress_FR/train\.csv .*AliExpress_ES, AliExpress_NL"):
        load_aliexpress(folder)  # default countries include FR
    with pytest.raises(UserInputError, match="not a split kind for aliexpress"):
        load_aliexpress(folder, countries=["NL"], split="sideways")
    lines = (folder / "AliExpress_ES" / "test.csv").read_text().splitlines()
    fields = lines[3].split(",")
    fields[20] = "n/a"  # numerical_4
    lines[3] = ",".join(fields)
    (folder / "AliExpress_ES" / "test.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserInputError, match=r"AliExpress_ES/test\.csv, line 4: numerical_4 .* got 'n/a'"):
        load_aliexpress(folder, countries=["NL", "ES"])


# --- Open Bandit ----------------------------------------------------------------------------------------


def obd_frame(policy: str, campaign: str) -> pd.DataFrame:
    return pd.read_csv(OBD / policy / campaign / f"{campaign}.csv")


def test_open_bandit_campaigns_are_domains_with_one_task():
    need(OBD)
    ds = load_open_bandit(OBD)
    assert ds.schema.domains == ("all", "men", "women") and ds.schema.tasks == ("click",)
    assert sum(sizes(ds)) == 30_000 and ds.train.labels.shape[1] == 1
    domain = torch.cat([ds.train.domain, ds.val.domain, ds.test.domain])
    labels = torch.cat([ds.train.labels, ds.val.labels, ds.test.labels])[:, 0]
    assert torch.bincount(domain).tolist() == [10_000] * 3
    clicks = [int(obd_frame("random", c).click.sum()) for c in ("all", "men", "women")]
    assert [int(labels[domain == d].sum()) for d in range(3)] == clicks
    names = [f.name for f in ds.schema.sparse]
    assert names == ["item", "position", "user_feature_0", "user_feature_1", "user_feature_2", "user_feature_3",
                     "item_feature_1", "item_feature_2", "item_feature_3", "hour", "domain"]
    assert ds.schema.sparse[0].vocab_size == 80 + 34 + 46 + 1  # items are per campaign
    # affinity = the user's affinity to the shown item: positive exactly where the file says so
    dense = torch.cat([ds.train.dense, ds.val.dense, ds.test.dense])
    shown = []
    for c in ("all", "men", "women"):
        f = obd_frame("random", c)
        affinity = f.filter(like="user-item_affinity_").to_numpy()
        shown.append(affinity[np.arange(len(f)), f.item_id.to_numpy()])  # column k is item k
    assert int((dense[:, 1] > 0).sum()) == int((np.concatenate(shown) > 0).sum()) > 0


def test_open_bandit_policies_and_chronological_split():
    need(OBD)
    both = load_open_bandit(OBD, policies=["random", "bts"])
    assert sum(sizes(both)) == 60_000 and [f.name for f in both.schema.sparse][-2:] == ["policy", "domain"]
    ordered = load_open_bandit(OBD, split="ordered")
    frames = [obd_frame("random", c).assign(d=k) for k, c in enumerate(("all", "men", "women"))]
    times = pd.concat(frames, ignore_index=True)
    times = times.assign(t=pd.to_datetime(times.timestamp, utc=True)).sort_values("t", kind="stable")
    expected = np.bincount(times.d.to_numpy()[27_000:], minlength=3)
    assert torch.bincount(ordered.test.domain, minlength=3).tolist() == expected.tolist()
    with pytest.raises(UserInputError, match=r"data\.policies=\['greedy'\]"):
        open_bandit_settings(policies=["greedy"])


# --- registry -------------------------------------------------------------------------------------------


def test_registry_knows_the_new_datasets_and_finds_shared_folders(tmp_path):
    assert {"tabular", "kuairand_pure", "aliexpress", "open_bandit"} <= set(dataset_names())
    assert FILE_DATASETS["open_bandit"].locate(SHARED) == OBD
    assert FILE_DATASETS["kuairand_pure"].locate(SHARED) == KUAIRAND
    need(OBD)
    kwargs = dict(root=str(SHARED), split="random", split_seed=3, download=False, cache_dir=tmp_path / "c")
    first = load_dataset("open_bandit", **kwargs, campaigns=["men", "women"])
    second = load_dataset("open_bandit", **kwargs, campaigns=["men", "women"])
    assert first.schema.domains == ("men", "women") and torch.equal(first.test.sparse, second.test.sparse)
    assert first.regions is None and second.regions is None  # Open Bandit rows have no region (also cached)
    assert len(list((tmp_path / "c").glob("open_bandit-*.pt"))) == 1
    with pytest.raises(UserInputError, match="unknown data settings for open_bandit"):
        load_dataset("open_bandit", **kwargs, campain=["men"])


def test_datasets_that_declare_regions_are_those_whose_rows_carry_them():
    assert region_datasets() == ["movielens100k", "movielens1m", "synthetic"]
    assert load_dataset("synthetic", root=None, split="random", split_seed=0, download=False, cache_dir=None,
                        rows=100, num_users=10, num_items=5).regions is not None
    assert not any(FILE_DATASETS[name].has_regions for name in ("tabular", "kuairand_pure", "aliexpress",
                                                                 "open_bandit"))


def test_aliexpress_refuses_an_empty_validation_split():
    with pytest.raises(UserInputError, match=r"^data\.val_fraction=0: use a number in \(0, 1\)"):
        aliexpress_settings(val_fraction=0)
