"""Cached copies of hub datasets and the manifest that proves a copy is the one that was made.

`cache_dataset` reads splits through the same code path as the loaders (hub or local), writes
them with `DatasetDict.save_to_disk`, and writes `manifest.json` next to them:

    {"format": "boxgym-dataset-cache/1", "dataset": "nlvr2", "repo": "pingzhili/nlvr2",
     "revision": "main", "created": "2026-...Z", "layout": "save_to_disk",
     "splits": {"validation": 6982}, "files": {"validation/data-00000-of-00001.arrow":
     {"sha256": "...", "bytes": 123}, ...}}

Loading a local path that has a manifest checks it first (`verify_manifest`): a missing,
changed or unlisted data file is a `ManifestError` naming the file. `write_manifest` adds a
manifest to a copy made another way (e.g. `huggingface-cli download`, parquet shards).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from boxgym.data.loaders.common import MANIFEST_NAME, DatasetSourceError, get_loader

MANIFEST_FORMAT = "boxgym-dataset-cache/1"
# Files whose change alters what a loader reads; anything else (READMEs, .gitattributes, the
# hub's download cache under .cache/) is not hashed.
_DATA_SUFFIXES = (".arrow", ".parquet", ".jsonl", ".json", ".png", ".jpg", ".jpeg", ".webp")


class ManifestError(RuntimeError):
    """A cached copy does not match its manifest (or the manifest is unreadable)."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _data_files(root: Path) -> list[Path]:
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        hidden = any(part.startswith(".") for part in rel.parts)
        if not p.is_file() or p.name == MANIFEST_NAME or hidden:
            continue
        if p.suffix.lower() in _DATA_SUFFIXES:
            out.append(p)
    return out


def write_manifest(
    root: str | os.PathLike[str],
    dataset: str,
    *,
    revision: str | None = None,
    splits: dict[str, int] | None = None,
    layout: str | None = None,
    config: str | None = None,
) -> dict[str, Any]:
    """Hashes every data file under `root` and writes `root/manifest.json` (atomically).

    Args:
        root: the cached copy.
        dataset: registry name (its hub repo is recorded too).
        revision: the hub revision the copy was made from, if known.
        splits: split -> rows; counted from the files when not given.
        layout: "save_to_disk" or "files"; detected when not given.
        config: the hub subset the copy holds, if the repository has several.

    Returns:
        The manifest written.
    """
    from boxgym.data.loaders.common import is_saved_dataset

    root = Path(root)
    loader = get_loader(dataset)
    if layout is None:
        layout = "save_to_disk" if is_saved_dataset(root) else "files"
    if splits is None:
        splits = count_split_rows(root)
    files = {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in _data_files(root)
    }
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset": dataset,
        "repo": loader.repo,
        "revision": revision,
        "config": config,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "layout": layout,
        "splits": dict(splits),
        "files": files,
    }
    tmp = root / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, root / MANIFEST_NAME)
    return manifest


def count_split_rows(root: Path) -> dict[str, int]:
    """Rows per split of a save_to_disk copy or a directory of parquet/jsonl shards."""
    from boxgym.data.loaders.common import _file_split, is_saved_dataset

    if is_saved_dataset(root):
        if (root / "dataset_dict.json").is_file():
            names = json.loads((root / "dataset_dict.json").read_text())["splits"]
            return {s: _saved_rows(root / s) for s in names}
        return {"train": _saved_rows(root)}
    counts: dict[str, int] = {}
    for p in _data_files(root):
        if p.suffix.lower() not in (".parquet", ".jsonl"):
            continue
        split = _file_split(p.relative_to(root)) or "train"
        if p.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.ParquetFile(p).metadata.num_rows
        else:
            with p.open("rb") as fh:
                rows = sum(1 for line in fh if line.strip())
        counts[split] = counts.get(split, 0) + rows
    return counts


def _saved_rows(split_dir: Path) -> int:
    import pyarrow as pa

    state = json.loads((split_dir / "state.json").read_text())
    rows = 0
    for entry in state["_data_files"]:
        with pa.memory_map(str(split_dir / entry["filename"])) as source:
            rows += pa.ipc.open_stream(source).read_all().num_rows
    return rows


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed manifest of `root`, or `ManifestError` if it is missing or malformed."""
    path = Path(root) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ManifestError(f"no {MANIFEST_NAME} in {root}") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ManifestError(f"{path} has no 'files' table")
    return manifest


def verify_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Checks every data file under `root` against the manifest; returns the manifest.

    Raises:
        ManifestError: naming the first file that is missing, has another size or sha256, or is
            a data file the manifest does not list.
    """
    root = Path(root)
    manifest = read_manifest(root)
    listed: dict[str, Any] = manifest["files"]
    for rel, entry in sorted(listed.items()):
        path = root / rel
        if not path.is_file():
            raise ManifestError(f"{root}: file {rel} listed in {MANIFEST_NAME} is missing")
        size = path.stat().st_size
        if "bytes" in entry and size != entry["bytes"]:
            raise ManifestError(
                f"{root}: file {rel} has {size} bytes, {MANIFEST_NAME} says {entry['bytes']}"
            )
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise ManifestError(
                f"{root}: file {rel} has sha256 {digest[:12]}..., "
                f"{MANIFEST_NAME} says {str(entry.get('sha256'))[:12]}... (file changed or corrupt)"
            )
    for p in _data_files(root):
        rel = p.relative_to(root).as_posix()
        if rel not in listed:
            raise ManifestError(f"{root}: file {rel} is not listed in {MANIFEST_NAME}")
    return manifest


def cache_dataset(
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    path: str | os.PathLike[str] | None = None,
    splits: list[str] | tuple[str, ...] | None = None,
    revision: str | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    cache_dir: str | None = None,
    config: str | None = None,
) -> dict[str, Any]:
    """Copies splits of a dataset (hub or local) into `out_dir` with a manifest.

    Rows are copied as they are (images stay encoded bytes), so a cached copy loads exactly
    like the hub. A whole split is read into `datasets`' arrow cache (memory-mapped, not held in
    RAM) and saved from there; with `limit`, only the first `limit` rows of each split are
    streamed and kept. Image paths relative to a jsonl source are not rewritten: cache parquet
    or save_to_disk sources, whose images are embedded bytes.

    Args:
        name: registry name.
        out_dir: destination; must be empty or absent unless `overwrite`.
        path: read from this local copy instead of the hub.
        splits: splits to copy; default the loader's default split.
        revision: hub revision to pin and record.
        limit: rows per split.
        overwrite: replace an existing cache.
        cache_dir: `datasets`' arrow cache used while reading a whole split.
        config: hub subset (aguvis); recorded in the manifest.

    Returns:
        The manifest written.
    """
    from boxgym.data.loaders.common import _import_datasets, open_rows

    datasets = _import_datasets()
    loader = get_loader(name)
    out = Path(out_dir)
    if path is not None and Path(path).resolve() == out.resolve():
        raise DatasetSourceError(f"{out} is the source itself; cache to another directory")
    if out.exists() and not out.is_dir():
        raise DatasetSourceError(f"{out} is a file; give a new or empty folder for the cache")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DatasetSourceError(
                f"{out} is not empty; pass --overwrite to replace a cache made here, or choose "
                "another folder"
            )
        _delete_cache(out)
    splits = list(splits or [loader.default_split])
    parts = {}
    for split in splits:
        if limit is None:  # the whole split: an arrow-backed Dataset, saved without a RAM copy
            opened = open_rows(name, path=path, split=split, revision=revision, cache_dir=cache_dir)
            revision = revision or opened.revision
            config = config or opened.config
            parts[split] = opened.dataset
            continue
        opened = open_rows(
            name, path=path, split=split, streaming=True, revision=revision, config=config
        )
        revision = revision or opened.revision
        config = config or opened.config
        rows = [row for _, row in zip(range(limit), opened.rows)]
        parts[split] = datasets.Dataset.from_list(rows, features=opened.features)
    datasets.DatasetDict(parts).save_to_disk(str(out))
    return write_manifest(
        out,
        name,
        revision=revision,
        splits={s: len(d) for s, d in parts.items()},
        layout="save_to_disk",
        config=config,
    )


def _delete_cache(out: Path) -> None:
    """Delete a cache `cache_dataset` made in `out`: the files its manifest lists and the
    metadata `save_to_disk` writes beside them, nothing else.

    Raises:
        DatasetSourceError: `out` holds no such cache (its files were not written here).
    """
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != MANIFEST_FORMAT
        or manifest.get("layout") != "save_to_disk"
        or not isinstance(manifest.get("files"), dict)
    ):
        raise DatasetSourceError(
            f"{out} holds no cache made by `boxgym data cache`, so --overwrite would delete "
            "files boxgym did not write; choose another folder"
        )
    root = out.resolve()
    listed = [out / name for name in manifest["files"]]
    for split in manifest.get("splits") or {}:
        listed += [out / str(split) / "dataset_info.json", out / str(split) / "state.json"]
    listed += [out / "dataset_dict.json", out / MANIFEST_NAME]
    for path in listed:
        if root in path.resolve().parents and path.is_file() and not path.is_symlink():
            path.unlink()
    for folder in sorted(
        (p for p in out.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
    ):
        with contextlib.suppress(OSError):
            folder.rmdir()  # emptied folders only: anything else keeps its folder
