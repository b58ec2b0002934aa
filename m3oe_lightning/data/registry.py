"""Dataset names → builders of an :class:`EncodedDataset`, with the on-disk cache in front.

``data=<name>`` in Hydra selects one of these; the datamodule calls :func:`load_dataset`. A dataset on
disk lives in a folder (``folder``, or one of ``also``) under the data root, or the root itself holds its
files. A dataset with ``settings`` accepts dataset-specific ``data.*`` options: ``settings(**options)``
checks them and fills in defaults, and the result goes to ``build`` and ``source_files`` and keys the
cache. A dataset without it accepts no extra option. MovieLens takes only the feature specification's
(:data:`~m3oe_lightning.data.encode.SPEC_SETTINGS`); with none given its settings are empty and its cache key
is as before. Each entry also says what the
generic code here must not know by name: how to fetch the files (``download``), whether its rows
carry a region (``has_regions``: the reader fills :attr:`EncodedDataset.regions`) and which key marks a
repeated interaction (``duplicate_key``: the reader then applies ``data.duplicates``, see
:mod:`m3oe_lightning.data.duplicates`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m3oe_lightning.data.cache import cached
from m3oe_lightning.data.duplicates import DEFAULT_POLICY, SETTING, check_policy
from m3oe_lightning.data.paths import candidate_roots, find_dataset_folder, resolve_data_root
from m3oe_lightning.data.readers import aliexpress, kuairand, movielens, open_bandit, synthetic, tabular
from m3oe_lightning.data.schema import EncodedDataset
from m3oe_lightning.errors import UserInputError


@dataclass(frozen=True)
class FileDataset:
    """A dataset read from files: its folder name, a marker file set, a builder and its source files.

    ``folder=None`` marks a reader whose files a setting names (``data=tabular``'s ``data.path``): it gets
    ``data.root`` when set, else the working directory, as the base of relative paths. ``download(folder)``
    (when set) fetches the files into ``folder`` for ``data.download=true``.
    """

    folder: str | None
    markers: tuple[tuple[str, ...], ...]  # any one of these file sets marks a folder holding the data
    build: Callable[..., EncodedDataset]  # build(folder, *, split, split_seed, **settings)
    source_files: Callable[..., list[Path]]  # source_files(folder, **settings)
    download: Callable[[Path], object] | None = None  # download(folder); what it returns is ignored
    settings: Callable[..., dict[str, Any]] | None = None  # None: no dataset options accepted
    also: tuple[str, ...] = ()  # other folder names (relative to the root) the data may live in
    has_regions: bool = False  # the encoded rows carry regions (federated.partition=region)
    # duplicate_key(settings): how the reader names the key it checks for data.duplicates ("(user, item)"),
    # or None when these settings check none; build() then takes duplicates=<policy>
    duplicate_key: Callable[[Mapping[str, Any]], str | None] | None = None
    duplicate_hint: str = ""  # what to set so that duplicate_key is not None (appended to the refusal)

    def holds_data(self, folder: Path) -> bool:
        """Whether ``folder`` holds one of the marker file sets."""
        return any(all((folder / m).exists() for m in marker) for marker in self.markers)

    def find(self, root: Path) -> Path | None:
        """The folder under ``root`` holding the files (``root``, ``root/<folder>``, ``root/<also...>``)."""
        assert self.folder is not None
        for candidate in (root, root / self.folder, *(root / a for a in self.also)):
            if self.holds_data(candidate):
                return candidate
        return None

    def locate(self, root: Path) -> Path:
        """:meth:`find`, or ``root/<folder>`` (where the reader reports the files missing)."""
        assert self.folder is not None
        return self.find(root) or root / self.folder

    def folder_for(self, root: str | Path | None) -> Path:
        """The dataset's folder: under the first candidate root that holds its files (each dataset on its
        own), else ``<data root>/<folder>``, where the reader says what is missing."""
        if self.folder is None:
            return Path(root).expanduser().resolve() if root not in (None, "") else Path.cwd()
        return find_dataset_folder(root, self.find) or self.locate(resolve_data_root(root))

    def found(self, root: str | Path | None) -> bool:
        """Whether some candidate root holds the files (always true for a reader whose files a setting names)."""
        return self.folder is None or find_dataset_folder(root, self.find) is not None


FILE_DATASETS: dict[str, FileDataset] = {
    "movielens1m": FileDataset(
        folder="movielens-1m",
        markers=(("ratings.dat", "users.dat", "movies.dat"),
                 ("ratings_reconstructed.csv.gz", "users.dat", "movies.dat")),
        build=movielens.load_movielens1m,
        source_files=movielens.movielens1m_source_files,
        download=movielens.download_movielens1m,
        settings=functools.partial(movielens.movielens_settings, "movielens1m"),
        has_regions=True,
        duplicate_key=movielens.duplicate_key,
    ),
    "movielens100k": FileDataset(
        folder="movielens-100k",
        markers=(("u.data", "u.user", "u.item"),),
        build=movielens.load_movielens100k,
        source_files=movielens.movielens100k_source_files,
        settings=functools.partial(movielens.movielens_settings, "movielens100k"),
        has_regions=True,
        duplicate_key=movielens.duplicate_key,
    ),
    "tabular": FileDataset(
        folder=None,
        markers=(),
        build=tabular.load_tabular,
        source_files=tabular.tabular_source_files,
        settings=tabular.tabular_settings,
        duplicate_key=tabular.tabular_duplicate_key,
        duplicate_hint="; name the columns that identify one interaction with +data.duplicate_key=[user_id,item_id]",
    ),
    "kuairand_pure": FileDataset(
        folder="kuairand",
        also=("KuaiRand-Pure/data", "KuaiRand-Pure", "kuairand-pure"),
        markers=((kuairand.USER_FEATURES, kuairand.VIDEO_FEATURES),),
        build=kuairand.load_kuairand_pure,
        source_files=kuairand.kuairand_source_files,
        settings=kuairand.kuairand_settings,
    ),
    "aliexpress": FileDataset(
        folder="aliexpress",
        also=("AliExpress",),
        markers=tuple((f"AliExpress_{c}/train.csv",) for c in aliexpress.COUNTRIES),
        build=aliexpress.load_aliexpress,
        source_files=aliexpress.aliexpress_source_files,
        settings=aliexpress.aliexpress_settings,
    ),
    "open_bandit": FileDataset(
        folder="open-bandit-dataset-sample",
        also=("open_bandit_dataset", "open-bandit-dataset", "obd"),
        markers=tuple((f"{p}/{c}/{c}.csv",) for p in open_bandit.POLICIES for c in open_bandit.CAMPAIGNS),
        build=open_bandit.load_open_bandit,
        source_files=open_bandit.open_bandit_source_files,
        settings=open_bandit.open_bandit_settings,
    ),
}


@dataclass(frozen=True)
class GeneratedDataset:
    """A dataset made from its settings alone: ``build(split=, split_seed=, **settings)``.

    ``build_memmap`` (for ``data.storage=memmap``) writes the table chunk by chunk into memory-mapped
    files: ``build_memmap(folder=, split=, split_seed=, chunk_rows=, block_rows=, **settings)``.
    """

    build: Callable[..., EncodedDataset]
    build_memmap: Callable[..., EncodedDataset] | None = None
    has_regions: bool = False


GENERATED_DATASETS: dict[str, GeneratedDataset] = {
    "synthetic": GeneratedDataset(build=synthetic.make_synthetic, build_memmap=synthetic.make_synthetic_memmap,
                                  has_regions=True),
}
STORAGES: tuple[str, ...] = ("memory", "memmap")


def dataset_names() -> list[str]:
    return sorted([*FILE_DATASETS, *GENERATED_DATASETS])


def memmap_datasets() -> list[str]:
    """The datasets ``data.storage=memmap`` can write."""
    return sorted(name for name, spec in GENERATED_DATASETS.items() if spec.build_memmap is not None)


def region_datasets() -> list[str]:
    """The datasets whose rows carry a region (in memory: a memmap table keeps none)."""
    specs: dict[str, FileDataset | GeneratedDataset] = {**FILE_DATASETS, **GENERATED_DATASETS}
    return sorted(name for name, spec in specs.items() if spec.has_regions)


def source_uri(name: str, root: str | Path | None, **options: Any) -> str:
    """Where dataset ``name`` comes from, for provenance: its folder, the user's file, or ``generated:<name>``."""
    if name in GENERATED_DATASETS or name not in FILE_DATASETS:
        return f"generated:{name}"
    spec = FILE_DATASETS[name]
    folder = spec.folder_for(root)
    path = options.get("path")
    return str((folder / str(path)).resolve()) if spec.folder is None and path else str(folder)


def plain(value: Any) -> Any:
    """Config containers (OmegaConf's DictConfig/ListConfig included) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (isinstance(value, Sequence) and not isinstance(value, (str, bytes))):
        return [plain(v) for v in value]
    return value


def _duplicate_policy(name: str, spec: FileDataset | None, settings: Mapping[str, Any], duplicates: Any) -> str | None:
    """The ``data.duplicates`` policy to hand the reader (``None``: it checks no key). A policy other than the
    default for a dataset that checks none is refused: silently ignoring ``error`` would promise a check."""
    policy = check_policy(duplicates)
    key = spec.duplicate_key(settings) if spec is not None and spec.duplicate_key is not None else None
    if key is None and policy != DEFAULT_POLICY:
        hint = spec.duplicate_hint if spec is not None else ""
        raise UserInputError(f"{SETTING}={policy}: data={name} checks no duplicate rows{hint}")
    return None if key is None else policy


def load_dataset(name: str, *, root: str | Path | None, split: str, split_seed: int, download: bool,
                 cache_dir: Path | None, storage: str = "memory", chunk_rows: int = 262_144,
                 block_rows: int = 1 << 16, memmap_dir: str | Path | None = None,
                 duplicates: str = DEFAULT_POLICY, **options: Any) -> EncodedDataset:
    """Build (or load from the cache) dataset ``name``; bad names and paths fail with one line.

    ``storage="memmap"`` writes (once) and opens a memory-mapped table under ``memmap_dir`` (default
    ``cache_dir``) instead of holding tensors; only :func:`memmap_datasets` support it. ``duplicates`` is
    ``data.duplicates`` (:mod:`m3oe_lightning.data.duplicates`); it keys the cache where the reader applies it.
    """
    if storage != "memory":
        if storage not in STORAGES:
            raise UserInputError(f"data.storage={storage!r}: use one of {', '.join(STORAGES)}")
        build_memmap = GENERATED_DATASETS[name].build_memmap if name in GENERATED_DATASETS else None
        if build_memmap is None:
            raise UserInputError(f"data.storage=memmap is available for {memmap_datasets()} only, not data={name}")
        _duplicate_policy(name, None, {}, duplicates)
        folder = memmap_dir if memmap_dir not in (None, "") else cache_dir
        if folder is None:
            raise UserInputError("data.storage=memmap needs a folder: set data.memmap_dir (or data.cache_dir)")
        return build_memmap(folder=Path(folder), split=split, split_seed=split_seed,
                            chunk_rows=chunk_rows, block_rows=block_rows, **plain(options))
    if name in GENERATED_DATASETS:
        _duplicate_policy(name, None, {}, duplicates)
        return GENERATED_DATASETS[name].build(split=split, split_seed=split_seed, **options)
    if name not in FILE_DATASETS:
        raise UserInputError(f"data.name={name!r} is not a known dataset; choose one of {dataset_names()}")
    spec = FILE_DATASETS[name]
    if spec.settings is None:
        if options:
            raise UserInputError(f"unknown data settings for {name}: {sorted(options)}")
        settings: dict[str, Any] = {}
    else:
        settings = spec.settings(**plain(options))
    policy = _duplicate_policy(name, spec, settings, duplicates)
    reader_options = {**settings, **({} if policy is None else {"duplicates": policy})}
    found = spec.found(root)
    folder = spec.folder_for(root)
    if download and spec.download is not None and spec.folder is not None and not spec.holds_data(folder):
        # a download never writes into a read-only shared folder: it goes under the explicit root
        # (or ./data), where the data roots are looked through next time
        target = Path(root) if root is not None else Path("data")
        folder = target / spec.folder
        spec.download(folder)
        found = True
    build = functools.partial(spec.build, folder, split=split, split_seed=split_seed, **reader_options)
    config: dict[str, Any] = {"dataset": name, "split": split, "split_seed": split_seed}
    if settings:  # absent for datasets without options
        config["settings"] = settings
    if policy is not None:  # what the reader did with repeated rows changes the table
        config["duplicates"] = policy
    try:
        if cache_dir is None:
            return build()
        return cached(build, cache_dir=cache_dir, source_files=spec.source_files(folder, **settings), config=config)
    except UserInputError as error:
        if found or root not in (None, ""):
            raise
        looked = ", ".join(str(r) for r in candidate_roots(root))
        raise UserInputError(f"{error} (looked for {spec.folder}/ under {looked})") from None
