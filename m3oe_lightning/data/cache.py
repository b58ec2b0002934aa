"""On-disk cache of encoded tables.

Parsing and encoding ML-1M takes seconds; loading the finished tensors takes a fraction of one. The
cache key is the SHA-256 of the source files' *contents* (not paths or mtimes, so a moved or touched
file still hits, and an edited one never does) + the preprocessing config + :data:`FORMAT_VERSION`
(bump it whenever encoding changes meaning). To avoid rehashing megabytes on every start, file digests
are memoised in a small side file keyed by (path, size, mtime_ns).

Writes go to a temp file in the same folder followed by ``os.replace``, so a crash or a concurrent
reader never sees a half-written cache. Loading uses ``torch.load(weights_only=True)``: the payload is
tensors, strings and numbers only (schema extras travel as a JSON string; the rows' regions as names and
codes). An unreadable or mismatched cache file is rebuilt with a warning, never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from m3oe_lightning.data.schema import EncodedDataset, EncodedSplit, FeatureSchema, RowKeys

FORMAT_VERSION = 2  # 2: the payload carries the rows' regions (EncodedDataset.regions)
HASH_MEMO_NAME = "source-hashes.json"
_CHUNK = 1 << 20
_SPLITS = ("train", "val", "test")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _atomic_path(final: Path, suffix: str) -> Iterator[Path]:
    """Yield a temp path beside ``final``; on success move it over ``final``, on failure delete it."""
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared by a team's accounts
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _load_memo(memo_path: Path) -> dict[str, Any]:
    try:
        memo = json.loads(memo_path.read_text())
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        return {}


def source_digests(files: list[Path], memo_path: Path) -> list[str]:
    """Content digest of each file, reusing the memo when the file's size and mtime are unchanged."""
    memo = _load_memo(memo_path)
    digests: list[str] = []
    changed = False
    for path in files:
        resolved = path.resolve()
        stat = resolved.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        entry = memo.get(str(resolved))
        if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
            digests.append(entry["sha256"])
            continue
        digest = file_sha256(resolved)
        memo[str(resolved)] = {"stamp": stamp, "sha256": digest}
        digests.append(digest)
        changed = True
    if changed:
        with contextlib.suppress(OSError), _atomic_path(memo_path, ".json") as tmp:
            tmp.write_text(json.dumps(memo, indent=0, sort_keys=True))
    return digests


def cache_key(digests: list[str], names: list[str], config: dict[str, Any]) -> str:
    """SHA-256 over format version, config (canonical JSON) and each source file's name + digest."""
    blob = json.dumps(
        {"format": FORMAT_VERSION, "config": config, "files": list(zip(names, digests))},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _payload(dataset: EncodedDataset, key: str) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "key": key,
        "schema": dataset.schema.to_dict(),
        "extras_json": json.dumps(dataset.schema.extras, default=str),
        "splits": {name: dataset.split(name).to_dict() for name in _SPLITS},
        "regions": None if dataset.regions is None else dataset.regions.to_dict(),
    }


def _from_payload(payload: Any, key: str) -> EncodedDataset:
    """Rebuild the dataset; any structural surprise raises so the caller rebuilds the cache."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION or payload.get("key") != key:
        raise ValueError("cache payload has another format version or key")
    schema = FeatureSchema.from_dict(payload["schema"])
    schema = FeatureSchema(sparse=schema.sparse, dense=schema.dense, domains=schema.domains,
                           tasks=schema.tasks, extras=json.loads(payload["extras_json"]))
    splits = {name: EncodedSplit(**payload["splits"][name]) for name in _SPLITS}
    regions = None if payload["regions"] is None else RowKeys.from_dict(payload["regions"])
    return EncodedDataset(schema=schema, **splits, regions=regions)


def _cache_file(cache_dir: Path, config: dict[str, Any], key: str) -> Path:
    prefix = str(config.get("dataset", config.get("name", "dataset")))
    prefix = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in prefix)
    return cache_dir / f"{prefix}-{key[:24]}.pt"


def cached(
    build: Callable[[], EncodedDataset],
    *,
    cache_dir: Path,
    source_files: list[Path],
    config: dict[str, Any],
) -> EncodedDataset:
    """Return ``build()``'s result, from ``cache_dir`` when the sources and ``config`` are unchanged.

    ``config`` must hold every setting that changes the encoded result (split kind, seed, ...); a
    ``dataset`` entry, if present, prefixes the cache file's name.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    files = [Path(p) for p in source_files]
    digests = source_digests(files, cache_dir / HASH_MEMO_NAME)
    key = cache_key(digests, [p.name for p in files], config)
    target = _cache_file(cache_dir, config, key)

    if target.exists():
        try:
            return _from_payload(torch.load(target, map_location="cpu", weights_only=True), key)
        except Exception as exc:  # noqa: BLE001 - any unreadable cache is rebuilt, never trusted
            warnings.warn(f"cache file {target} is unreadable ({type(exc).__name__}: {exc}); rebuilding it",
                          stacklevel=2)

    dataset = build()
    try:
        with _atomic_path(target, ".tmp") as tmp:
            torch.save(_payload(dataset, key), tmp)
    except OSError as exc:  # a read-only or full disk costs speed next time, not this run
        warnings.warn(f"cannot write cache file {target} ({exc}); continuing without cache", stacklevel=2)
    return dataset
