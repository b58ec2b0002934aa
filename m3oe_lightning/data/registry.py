"""Dataset names → builders of an :class:`EncodedDataset`, with the on-disk cache in front.

``data=<name>`` in Hydra selects one of these; the datamodule calls :func:`load_dataset`. A dataset on
disk lives in a folder (``folder``) under the data root, or the root itself holds its files.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m3oe_lightning.data import movielens, synthetic
from m3oe_lightning.data.cache import cached
from m3oe_lightning.data.paths import resolve_data_root
from m3oe_lightning.data.schema import EncodedDataset
from m3oe_lightning.errors import UserInputError


@dataclass(frozen=True)
class FileDataset:
    """A dataset read from files: its folder name, a marker file set, a builder and its source files."""

    folder: str
    markers: tuple[tuple[str, ...], ...]  # any one of these file sets marks a folder holding the data
    build: Callable[..., EncodedDataset]
    source_files: Callable[[Path], list[Path]]
    supports_download: bool = False

    def locate(self, root: Path) -> Path:
        """The folder holding the files: ``root`` itself or ``root/<folder>``."""
        for candidate in (root, root / self.folder):
            if any(all((candidate / m).exists() for m in marker) for marker in self.markers):
                return candidate
        return root / self.folder


FILE_DATASETS: dict[str, FileDataset] = {
    "movielens1m": FileDataset(
        folder="movielens-1m",
        markers=(("ratings.dat", "users.dat", "movies.dat"),
                 ("ratings_reconstructed.csv.gz", "users.dat", "movies.dat")),
        build=movielens.load_movielens1m,
        source_files=movielens.movielens1m_source_files,
        supports_download=True,
    ),
    "movielens100k": FileDataset(
        folder="movielens-100k",
        markers=(("u.data", "u.user", "u.item"),),
        build=movielens.load_movielens100k,
        source_files=movielens.movielens100k_source_files,
    ),
}
GENERATED_DATASETS: dict[str, Callable[..., EncodedDataset]] = {"synthetic": synthetic.make_synthetic}


def dataset_names() -> list[str]:
    return sorted([*FILE_DATASETS, *GENERATED_DATASETS])


def load_dataset(name: str, *, root: str | Path | None, split: str, split_seed: int, download: bool,
                 cache_dir: Path | None, **options: Any) -> EncodedDataset:
    """Build (or load from the cache) dataset ``name``; bad names and paths fail with one line."""
    if name in GENERATED_DATASETS:
        return GENERATED_DATASETS[name](split=split, split_seed=split_seed, **options)
    if name not in FILE_DATASETS:
        raise UserInputError(f"data.name={name!r} is not a known dataset; choose one of {dataset_names()}")
    if options:
        raise UserInputError(f"unknown data settings for {name}: {sorted(options)}")
    spec = FILE_DATASETS[name]
    folder = spec.locate(resolve_data_root(root))
    if download and spec.supports_download and not any(
            all((folder / m).exists() for m in marker) for marker in spec.markers):
        # a download never writes into a read-only shared folder: it goes under the explicit root
        # (or ./data), where resolve_data_root looks next time
        target = Path(root) if root is not None else Path("data")
        folder = target / spec.folder
        movielens.download_movielens1m(folder)
    build = functools.partial(spec.build, folder, split=split, split_seed=split_seed)
    if cache_dir is None:
        return build()
    config = {"dataset": name, "split": split, "split_seed": split_seed}
    return cached(build, cache_dir=cache_dir, source_files=spec.source_files(folder), config=config)
