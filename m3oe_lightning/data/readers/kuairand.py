"""``data=kuairand_pure``: KuaiRand-Pure logs joined with user and video features, domains by ``tab``.

The official KuaiRand-Pure layout (https://kuairand.com, Zenodo record 10439422), in one folder::

    log_standard_4_08_to_4_21_pure.csv   log_standard_4_22_to_5_08_pure.csv   (log_random_4_22_to_5_08_pure.csv)
    user_features_pure.csv               video_features_basic_pure.csv

The M3oE setting (paper §3.1, Table 1): three domains from the log's ``tab`` field (which three is not
stated; ``data.tabs`` defaults to 0, 1, 2 -- the hypothesis in docs/m3oe.md §2.2, with tab 1 the
dominant domain), tasks ``click`` (``is_click``) and ``long_view`` (``long_view``), an 8:1:1 split. Rows of
other tabs are dropped (the count is printed). Which logs are read is ``data.logs`` (a glob in the folder;
the standard logs by default).

Features are chosen by name in ``data.sparse_features`` / ``data.dense_features`` from the log columns,
the user features, the basic video features, and two derived columns: ``hour`` (``hourmin // 100``) and
``first_tag`` (the first of a video's ``tag`` list). The log's feedback signals (``is_like``,
``play_time_ms``, ...) describe the same interaction as the labels and are refused as features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from m3oe_lightning.data.readers.frames import lookup_rows, require_unique, shown
from m3oe_lightning.data.readers.tabular import (
    RowOrigins,
    TableColumns,
    TaskRule,
    assign_domains,
    dense_scalings,
    encode_frame,
    read_checked,
    reject_unknown,
)
from m3oe_lightning.data.schema import EncodedDataset
from m3oe_lightning.data.splits import check_split_kind
from m3oe_lightning.data.textio import table_columns
from m3oe_lightning.errors import UserInputError

USER_FEATURES = "user_features_pure.csv"
VIDEO_FEATURES = "video_features_basic_pure.csv"
DEFAULT_LOGS = "log_standard_*_pure.csv"
TASKS: dict[str, str] = {"click": "is_click", "long_view": "long_view"}  # task -> log column
LOG_COLUMNS: tuple[str, ...] = (
    "user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow", "is_comment",
    "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms", "profile_stay_time",
    "comment_stay_time", "is_profile_enter", "is_rand", "tab",
)
FEEDBACK: frozenset[str] = frozenset({
    "is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view", "play_time_ms",
    "profile_stay_time", "comment_stay_time", "is_profile_enter",
})
DERIVED: dict[str, tuple[str, str]] = {"hour": ("log", "hourmin"), "first_tag": ("video", "tag")}
HOWTO = ("the KuaiRand-Pure logs are not in the shared data (100+ MB); download KuaiRand-Pure from "
         "https://kuairand.com (Zenodo record 10439422) and put its data/*.csv files in one folder, then point "
         "data.root (or M3OE_DATA_DIR) at its parent or the folder itself")

DEFAULT_SPARSE: tuple[str, ...] = (
    "user_id", "video_id", "user_active_degree", "is_live_streamer", "is_video_author",
    "follow_user_num_range", "fans_user_num_range", "friend_user_num_range", "register_days_range",
    *(f"onehot_feat{i}" for i in range(18)),
    "author_id", "video_type", "upload_type", "music_type", "first_tag", "hour",
)
DEFAULT_DENSE: dict[str, str] = {
    "follow_user_num": "log1p", "fans_user_num": "log1p", "friend_user_num": "log1p", "register_days": "log1p",
    "video_duration": "log1p",
}
KUAIRAND_DEFAULTS: dict[str, Any] = {
    "logs": DEFAULT_LOGS,
    "tabs": [0, 1, 2],
    "sparse_features": list(DEFAULT_SPARSE),
    "dense_features": dict(DEFAULT_DENSE),
}


def kuairand_settings(**options: Any) -> dict[str, Any]:
    """Check and complete the ``data.*`` settings of ``data=kuairand_pure``."""
    reject_unknown("kuairand_pure", options, KUAIRAND_DEFAULTS)
    s = {**KUAIRAND_DEFAULTS, **options}
    if not isinstance(s["logs"], str) or not s["logs"]:
        raise UserInputError(f"data.logs={s['logs']!r}: give a file name or glob inside the KuaiRand-Pure folder")
    tabs = s["tabs"]
    if isinstance(tabs, int):
        tabs = [tabs]
    if (not isinstance(tabs, list) or not tabs or len(set(tabs)) != len(tabs)
            or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= 14 for t in tabs)):
        raise UserInputError(f"data.tabs={s['tabs']!r}: give distinct tab numbers between 0 and 14, e.g. [0, 1, 2]")
    sparse = s["sparse_features"]
    if not isinstance(sparse, list) or not all(isinstance(c, str) for c in sparse) or len(set(sparse)) != len(sparse):
        raise UserInputError(f"data.sparse_features={sparse!r}: give a list of distinct column names")
    dense = dense_scalings(s["dense_features"])
    for name in [*sparse, *dense]:
        if name in FEEDBACK:
            raise UserInputError(f"{name!r} is a feedback signal of the same interaction as the labels; it cannot be "
                                 f"a feature (remove it from data.sparse_features / data.dense_features)")
    both = sorted(set(sparse) & set(dense))
    if both:
        raise UserInputError(f"{both} are in both data.sparse_features and data.dense_features; pick one")
    derived = sorted(set(DERIVED) & set(dense))
    if derived:
        raise UserInputError(f"{derived} are derived categorical features; list them in data.sparse_features")
    return {"logs": s["logs"], "tabs": list(tabs), "sparse_features": list(sparse), "dense_features": dense}


def kuairand_files(folder: Path, logs: str = DEFAULT_LOGS) -> tuple[list[Path], Path, Path]:
    """(log files, user features, video features) in ``folder``; missing files are one clear error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"KuaiRand-Pure data directory {folder} does not exist; {HOWTO}")
    users, videos = folder / USER_FEATURES, folder / VIDEO_FEATURES
    for path in (users, videos):
        if not path.is_file():
            raise UserInputError(f"missing {path}; {HOWTO}")
    log_files = sorted(p for p in folder.glob(logs) if p.is_file())
    if not log_files:
        raise UserInputError(f"no KuaiRand-Pure logs matching data.logs={logs!r} in {folder}; {HOWTO}")
    return log_files, users, videos


def kuairand_source_files(folder: Path, **settings: Any) -> list[Path]:
    s = kuairand_settings(**settings)
    logs, users, videos = kuairand_files(folder, s["logs"])
    return [*logs, users, videos]


def _source_of(feature: str, user_columns: list[str], video_columns: list[str]) -> tuple[str, str]:
    """(table, column) a feature is read from: ``log``, ``user`` or ``video`` (derived ones from their base)."""
    if feature in DERIVED:
        return DERIVED[feature]
    if feature in LOG_COLUMNS:
        return "log", feature
    if feature in user_columns:
        return "user", feature
    if feature in video_columns:
        return "video", feature
    raise UserInputError(
        f"KuaiRand-Pure feature {feature!r} is not a log column, a column of {USER_FEATURES} or "
        f"{VIDEO_FEATURES}, nor a derived feature ({', '.join(DERIVED)})"
    )


def _lookup(ids: np.ndarray, table: TableColumns, id_column: str, *, logs: RowOrigins,
            feature_file: Path) -> np.ndarray:
    """Row of each log id in the (unique-id) feature table; an unknown id is an error at its log line."""
    table_ids = table.numbers[id_column].astype(np.int64)
    require_unique(table_ids, table.origins.where, id_column)
    return lookup_rows(ids, table_ids, logs.where, column=id_column, table=feature_file, rows_are="log")


def _integers(values: np.ndarray, origins: RowOrigins, column: str) -> np.ndarray:
    """Integral float64 values as int64; a fraction, an empty field or a value beyond int64 names its line."""
    bad = np.flatnonzero(np.isnan(values) | (values != np.round(values)))
    if bad.size:
        pos = int(bad[0])
        raise UserInputError(f"{origins.where(pos)}: {column} must be an integer, got {shown(values[pos])}")
    bad = np.flatnonzero(np.abs(values) >= 2.0**63)  # a cast would wrap or saturate silently
    if bad.size:
        pos = int(bad[0])
        raise UserInputError(f"{origins.where(pos)}: {column} {shown(values[pos])} does not fit a 64-bit integer")
    return values.astype(np.int64)


def _gather(values: Any, rows: np.ndarray) -> Any:
    if isinstance(values, pd.Categorical):
        return pd.Categorical.from_codes(values.codes[rows], dtype=values.dtype)
    return values[rows]


def _first_tag(tags: pd.Categorical) -> pd.Categorical:
    """``"20,43"`` -> ``"20"`` on the distinct values only."""
    heads = pd.Index([str(c).split(",")[0].strip() for c in tags.categories])
    codes, uniques = pd.factorize(heads) if len(heads) else (np.empty(0, np.int64), pd.Index([]))
    old = tags.codes.astype(np.int64)
    new = np.where(old >= 0, codes[np.maximum(old, 0)] if len(codes) else -1, -1)
    return pd.Categorical.from_codes(new, categories=pd.Index(np.asarray(uniques, dtype=object)))


def read_kuairand_pure(folder: Path, **settings: Any) -> tuple[TableColumns, list[str], dict[str, str], Any]:
    """Logs joined with features: (columns over all log rows, sparse names, dense scalings, domain assignment)."""
    s = kuairand_settings(**settings)
    log_files, users_path, videos_path = kuairand_files(folder, s["logs"])
    user_columns, video_columns = table_columns(users_path), table_columns(videos_path)
    sources = {f: _source_of(f, user_columns, video_columns) for f in [*s["sparse_features"], *s["dense_features"]]}
    wanted: dict[str, dict[str, str]] = {"log": {}, "user": {}, "video": {}}  # column -> "text" | "numbers"
    for feature, (table, column) in sources.items():
        kind = "numbers" if feature in s["dense_features"] or feature == "hour" else "text"
        wanted[table][column] = kind if wanted[table].get(column, kind) == kind else "both"

    def columns_of(table: str, kind: str) -> list[str]:
        return [c for c, k in wanted[table].items() if k in (kind, "both")]

    # logs: ids, tab and labels always; features as asked
    why = "data.sparse_features/dense_features"
    log_needed = {c: "the KuaiRand-Pure log schema" for c in ("user_id", "video_id", "tab", *TASKS.values())}
    log_needed.update({c: why for c in wanted["log"]})
    logs = read_checked(
        log_files, needed=log_needed, text=["tab", *columns_of("log", "text")],
        numbers={"user_id": "user id", "video_id": "video id",
                 **{c: "data.dense_features" for c in columns_of("log", "numbers") if c != "hourmin"},
                 **({"hourmin": "hour"} if "hourmin" in wanted["log"] else {})},
        rules=[TaskRule(task=task, column=column) for task, column in TASKS.items()],
    )
    user_ids = _integers(logs.numbers["user_id"], logs.origins, "user_id")
    video_ids = _integers(logs.numbers["video_id"], logs.origins, "video_id")
    users = read_checked(
        [users_path], needed={"user_id": "the user features", **{c: why for c in wanted["user"]}},
        text=columns_of("user", "text"),
        numbers={"user_id": "user id", **{c: "data.dense_features" for c in columns_of("user", "numbers")}},
    )
    videos = read_checked(
        [videos_path], needed={"video_id": "the video features", **{c: why for c in wanted["video"]}},
        text=columns_of("video", "text"),
        numbers={"video_id": "video id", **{c: "data.dense_features" for c in columns_of("video", "numbers")}},
    )
    urow = _lookup(user_ids, users, "user_id", logs=logs.origins, feature_file=users_path)
    vrow = _lookup(video_ids, videos, "video_id", logs=logs.origins, feature_file=videos_path)

    text: dict[str, pd.Categorical] = {}
    numbers: dict[str, np.ndarray] = {}
    for feature, (table, column) in sources.items():
        if feature == "hour":
            hour = _integers(logs.numbers["hourmin"], logs.origins, "hourmin") // 100
            bad = np.flatnonzero((hour < 0) | (hour > 23))
            if bad.size:
                raise UserInputError(f"{logs.origins.where(int(bad[0]))}: hourmin must be HHMM (0..2359), got "
                                     f"{int(logs.numbers['hourmin'][bad[0]])}")
            text["hour"] = pd.Categorical.from_codes(hour, categories=[f"{h:02d}" for h in range(24)])
            continue
        source = {"log": logs, "user": users, "video": videos}[table]
        rows = {"log": None, "user": urow, "video": vrow}[table]
        if feature in s["dense_features"]:
            values = source.numbers[column]
            numbers[feature] = values if rows is None else values[rows]
        else:
            values = source.text[column]
            if feature == "first_tag":
                values = _first_tag(values)
            text[feature] = values if rows is None else _gather(values, rows)
    tabs = {str(t): f"tab_{t}" for t in s["tabs"]}
    assignment = assign_domains(logs.text["tab"], tabs, column="tab", origins=logs.origins, strict=False,
                                label="kuairand_pure", setting="data.tabs")
    table = TableColumns(text=text, numbers=numbers, labels=logs.labels, origins=logs.origins)
    return table, list(s["sparse_features"]), dict(s["dense_features"]), assignment


def load_kuairand_pure(folder: Path, *, split: str = "random", split_seed: int = 2022,
                       **settings: Any) -> EncodedDataset:
    """KuaiRand-Pure as an encoded dataset (domains ``tab_<t>``, tasks click and long_view)."""
    check_split_kind(split)
    table, sparse, dense, assignment = read_kuairand_pure(Path(folder), **settings)
    return encode_frame(name="kuairand_pure", table=table, domains=assignment, sparse=sparse, dense=dense,
                        tasks=list(TASKS), split=split, split_seed=split_seed,
                        extras={"log_files": len(table.origins.locators), "domain_column": "tab"})


__all__ = ["USER_FEATURES", "VIDEO_FEATURES", "kuairand_settings", "kuairand_source_files", "load_kuairand_pure"]
