"""One code path from dataset rows to `Task`s, whether the rows come from the hub or a local copy.

Rows are opened with the `datasets` library in every case (imported inside functions so that
`import boxgym` stays light):

- hub: `datasets.load_dataset(repo, split=..., streaming=..., revision=...)`;
- a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`: `load_from_disk`;
- a directory of parquet or jsonl files (what `huggingface-cli download REPO --repo-type dataset
  --local-dir DIR` gives: `data/<split>-00000-of-0000N.parquet`) or a single such file:
  `datasets.load_dataset(path, ...)`, which infers the split from the file names.

Image decoding is switched off while reading (`IterableDataset.decode(False)`), so a corrupt
image reaches the dataset's row converter as bytes and is skipped and counted there instead of
raising inside the `datasets` iterator. A row converter raises `BadRow(reason)` for anything it
cannot use; `iter_dataset_tasks` counts the reason and goes on.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boxgym.data.lazy_tasks import LazyTasks
from boxgym.data.loaders.cells import BadRow
from boxgym.data.task import Task, unusable_reason

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"


class DatasetSourceError(RuntimeError):
    """The dataset itself cannot be opened (unknown name, missing path, unknown split, ...)."""


@dataclass(frozen=True)
class RowContext:
    """Where a row came from, passed to a dataset's row converter.

    Attributes:
        dataset: registry name, e.g. "nlvr2".
        split: the split being read.
        index: position of the row in the split (0-based), stable for a fixed revision.
        base_dir: directory that relative image paths are resolved against (None on the hub).
        revision: dataset revision (hub commit or tag, or the manifest's), if known.
        config: the hub subset (config name) read, for datasets that have several.
    """

    dataset: str
    split: str
    index: int
    base_dir: Path | None = None
    revision: str | None = None
    config: str | None = None


RowConverter = Callable[[dict[str, Any], RowContext], list[Task]]


@dataclass(frozen=True)
class DatasetLoader:
    """How one dataset's rows become tasks.

    Attributes:
        name: registry name.
        repo: hub repository id.
        default_split: split read when none is asked for (the one a user evaluates on).
        convert: row -> tasks (usually one; aguvis gives one per point action); raises `BadRow`.
        row_key: row -> the id prefix of the tasks it gives, computed without decoding images,
            so `inspect --id` can find a row cheaply.
        description: one line for `--help` and docs.
        configs: the hub subsets (config names), for repositories that require one.
        default_config: the subset read from the hub when none is named.
    """

    name: str
    repo: str
    default_split: str
    convert: RowConverter
    row_key: Callable[[dict[str, Any], RowContext], str]
    description: str = ""
    configs: tuple[str, ...] = ()
    default_config: str | None = None


@dataclass
class LoadResult:
    """Tasks read from one split, with the rows that were skipped and why.

    Attributes:
        tasks: the tasks, in row order (a `LazyTasks` when read with `lazy=True`).
        skipped: number of rows skipped.
        skip_reasons: reason -> count, e.g. {"corrupt image": 2, "unparsable label": 1}.
        source: where the rows came from, e.g. "hub:pingzhili/nlvr2@main" or "local:/data/nlvr2".
        rows_read: rows looked at (tasks may be more than rows for aguvis).
    """

    tasks: Sequence[Task] = field(default_factory=list)
    skipped: int = 0
    skip_reasons: Counter = field(default_factory=Counter)
    source: str = ""
    rows_read: int = 0

    def summary(self) -> str:
        reasons = ", ".join(f"{r}: {n}" for r, n in self.skip_reasons.most_common())
        text = f"{len(self.tasks)} tasks from {self.rows_read} rows of {self.source}"
        return text + (f"; skipped {self.skipped} ({reasons})" if self.skipped else "")


@dataclass
class OpenedRows:
    """Raw rows of one split, images not decoded, plus where they came from."""

    rows: Iterator[dict[str, Any]]
    source: str
    base_dir: Path | None
    revision: str | None
    features: Any = None  # the source's `datasets.Features` (images decodable), when known
    dataset: Any = None  # the `datasets` object the rows come from (Dataset or IterableDataset)
    config: str | None = None  # the hub subset, where one was named or defaulted

    def context(self, dataset: str, split: str, index: int) -> RowContext:
        """The `RowContext` of row `index` of these rows."""
        return RowContext(dataset, split, index, self.base_dir, self.revision, self.config)


def get_loader(name: str) -> DatasetLoader:
    """The registered loader for `name`, or a `DatasetSourceError` listing the known names."""
    from boxgym.data.loaders.registry import DATASET_LOADERS

    if name not in DATASET_LOADERS:
        known = ", ".join(sorted(DATASET_LOADERS))
        raise DatasetSourceError(f"unknown dataset {name!r}; known datasets: {known}")
    return DATASET_LOADERS[name]


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DatasetSourceError(
            "reading datasets needs the `datasets` package: pip install 'boxgym[train]'"
        ) from exc
    return datasets


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a directory written by `Dataset(Dict).save_to_disk`."""
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
    )


def _opened(
    ds: Any, source: str, base_dir: Path | None, revision: str | None, config: str | None
) -> OpenedRows:
    """Rows of `ds` with image decoding off (images stay {bytes, path} dicts)."""
    features, source_ds = ds.features, ds
    if not hasattr(ds, "decode"):  # a map-style Dataset
        ds = ds.to_iterable_dataset()
    rows = iter(ds.decode(False))
    return OpenedRows(rows, source, base_dir, revision, features, source_ds, config)


def open_rows(
    name: str,
    *,
    path: str | os.PathLike[str] | None = None,
    split: str | None = None,
    streaming: bool = False,
    revision: str | None = None,
    verify: bool = True,
    cache_dir: str | None = None,
    config: str | None = None,
) -> OpenedRows:
    """Opens one split of a dataset as raw rows, from the hub (`path=None`) or a local copy.

    Args:
        name: registry name (see `DATASET_LOADERS`).
        path: a local copy (save_to_disk directory, directory of parquet/jsonl files, or one
            such file), or a hub id ("owner/name", e.g. a mirror of the dataset) when no such
            local path exists; None reads `loader.repo` from the hub.
        split: split to read; None means the loader's default split.
        streaming: hub/parquet only: read lazily instead of materialising an arrow cache first.
            A save_to_disk copy is memory-mapped and always read lazily.
        revision: hub revision (branch, tag or commit); recorded in task metadata.
        verify: check the copy's `manifest.json` (sha256 of every file) before reading, where
            there is one.
        cache_dir: where `datasets` keeps its arrow cache for non-streaming reads.
        config: hub subset for repositories that have several (aguvis); on the hub it defaults
            to `loader.default_config`; in a local directory it selects the files under a
            folder of that name.
    """
    loader = get_loader(name)
    split = split or loader.default_split
    datasets = _import_datasets()
    repo = loader.repo
    if path is not None and is_hub_id(path):
        repo, path = str(path), None  # one code path: the hub branch with this repository
    if path is None:
        config = config or loader.default_config
        if loader.configs and config not in loader.configs:
            raise DatasetSourceError(
                f"{name}: unknown config {config!r}; choose one of {list(loader.configs)}"
            )
        # Hub path: real code, not executed in this repository's tests (no hub access here).
        ds = datasets.load_dataset(
            repo,
            config,
            split=split,
            streaming=streaming,
            revision=revision,
            cache_dir=cache_dir,
        )
        subset = f"/{config}" if config else ""
        source = f"hub:{repo}{subset}@{revision or 'main'}"
        return _opened(ds, source, None, revision, config)

    local = Path(path).expanduser()
    recorded_config = None  # the subset a manifest says the copy holds (ids and metadata only)
    if not local.exists():
        raise DatasetSourceError(f"{name}: local path {local} does not exist")
    manifest_dir = local if local.is_dir() else local.parent
    if (manifest_dir / MANIFEST_NAME).is_file():
        from boxgym.data.loaders.manifest import read_manifest, verify_manifest

        manifest = verify_manifest(manifest_dir) if verify else read_manifest(manifest_dir)
        revision = revision or manifest.get("revision")
        recorded_config = manifest.get("config")
    if is_saved_dataset(local):
        split_dir = local
        if (local / "dataset_dict.json").is_file():  # read only the split asked for
            names = json.loads((local / "dataset_dict.json").read_text()).get("splits", [])
            if split not in names:
                raise DatasetSourceError(
                    f"{name}: split {split!r} not in {local}; it has {sorted(names)}"
                )
            split_dir = local / split
        try:
            saved = datasets.load_from_disk(str(split_dir))
        except (OSError, ValueError) as exc:  # pyarrow errors on damaged files are OSErrors
            raise DatasetSourceError(f"{name}: cannot read {split_dir}: {exc}") from exc
        return _opened(saved, f"local:{local}", local, revision, config or recorded_config)

    if local.is_file():
        suffix = local.suffix.lower()
        builder = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}.get(suffix)
        if builder is None:
            raise DatasetSourceError(f"{name}: cannot read {local} (expected .parquet or .jsonl)")
        ds = datasets.load_dataset(
            builder,
            data_files={split: str(local)},
            split=split,
            streaming=streaming,
            cache_dir=cache_dir,
        )
        return _opened(ds, f"local:{local}", local.parent, revision, config or recorded_config)

    files = split_files(local, split, config)
    suffixes = {f.suffix.lower() for f in files}
    if len(suffixes) != 1:
        raise DatasetSourceError(
            f"{name}: {local} mixes file types {sorted(suffixes)} for split {split!r}"
        )
    builder = "parquet" if suffixes == {".parquet"} else "json"
    ds = datasets.load_dataset(
        builder,
        data_files={split: [str(f) for f in files]},
        split=split,
        streaming=streaming,
        cache_dir=cache_dir,
    )
    return _opened(ds, f"local:{local}", local, revision, config or recorded_config)


_SPLIT_ALIASES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}


def _file_split(relative: Path) -> str | None:
    """The split a data file belongs to by the hub's naming convention, or None."""
    stem = relative.name.lower()
    dirs = [part.lower() for part in relative.parts[:-1]]
    for split, aliases in _SPLIT_ALIASES.items():
        for alias in aliases:
            if alias in dirs or re.match(rf"^{alias}([-_.\d]|$)", stem):
                return split
    return None


def split_files(local: Path, split: str, config: str | None = None) -> list[Path]:
    """Parquet/jsonl files of `split` in a directory laid out like a hub dataset repository.

    `data/validation-00000-of-00001.parquet` and `validation/0000.parquet` both belong to
    "validation" (aliases: val, valid, dev). A directory whose files name no split at all is
    read as one split, whichever is asked for. With `config`, only files under a folder named
    after it count (`seeclick/train-00000-of-00004.parquet`), as the hub lays out subsets.
    """
    files = sorted(  # hidden folders (huggingface-cli's .cache/) hold no data
        p
        for p in local.rglob("*")
        if p.is_file()
        and p.suffix.lower() in (".parquet", ".jsonl")
        and not any(part.startswith(".") for part in p.relative_to(local).parts)
    )
    if not files:
        raise DatasetSourceError(
            f"{local} holds neither a save_to_disk dataset nor parquet/jsonl files"
        )
    if config:
        files = [p for p in files if config in p.relative_to(local).parts[:-1]]
        if not files:
            raise DatasetSourceError(f"no folder named {config!r} with data files in {local}")
    by_split: dict[str | None, list[Path]] = {}
    for f in files:
        by_split.setdefault(_file_split(f.relative_to(local)), []).append(f)
    wanted = split if split in _SPLIT_ALIASES else None
    if wanted is None:  # a custom split name: match it literally
        chosen = [f for f in files if f.name.lower().startswith(split.lower())]
    else:
        chosen = by_split.get(wanted, [])
    if not chosen and set(by_split) == {None}:
        chosen = files
    if not chosen:
        have = sorted(s for s in by_split if s is not None)
        raise DatasetSourceError(f"no files for split {split!r} in {local}; found splits {have}")
    return chosen


HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_hub_id(path: str | os.PathLike[str]) -> bool:
    """Whether `path` names a hub repository ("owner/name") rather than a local copy: it has
    that form and no such file or directory exists (a local copy always wins)."""
    text = str(path)
    return bool(HUB_ID.match(text)) and not Path(text).expanduser().exists()


def iter_dataset_tasks(
    name: str,
    *,
    path: str | os.PathLike[str] | None = None,
    split: str | None = None,
    limit: int | None = None,
    streaming: bool = False,
    revision: str | None = None,
    verify: bool = True,
    cache_dir: str | None = None,
    skip_reasons: Counter | None = None,
    config: str | None = None,
    role: str | None = None,
) -> Iterator[Task]:
    """Tasks one by one as rows are read; skipped rows are counted into `skip_reasons`.

    The source is opened (and its manifest checked) when this is called, so a bad path fails
    here; rows are read lazily as the iterator is consumed. `limit` bounds the number of tasks
    (not rows); `role` as in `load_dataset_tasks`. Other arguments as `open_rows`.
    """
    from boxgym.data.splits import check_role

    check_role(role)
    loader = get_loader(name)
    split = split or loader.default_split
    opened = open_rows(
        name,
        path=path,
        split=split,
        streaming=streaming,
        revision=revision,
        verify=verify,
        cache_dir=cache_dir,
        config=config,
    )
    return _convert_rows(loader, opened, split, limit, skip_reasons, None, role)


def _convert_rows(
    loader: DatasetLoader,
    opened: OpenedRows,
    split: str,
    limit: int | None,
    skip_reasons: Counter | None,
    rows_read: list[int] | None = None,
    role: str | None = None,
) -> Iterator[Task]:
    for _row, _ctx, tasks in _usable_rows(
        loader, opened, split, limit, skip_reasons, rows_read, role
    ):
        yield from tasks


def _usable_rows(
    loader: DatasetLoader,
    opened: OpenedRows,
    split: str,
    limit: int | None,
    skip_reasons: Counter | None,
    rows_read: list[int] | None = None,
    role: str | None = None,
) -> Iterator[tuple[dict[str, Any], RowContext, list[Task]]]:
    """(row, context, its tasks) for every usable row; the last row's tasks stop at `limit`."""
    from boxgym.data.splits import row_role

    if limit is not None and limit <= 0:
        return
    produced = 0
    for index, row in enumerate(opened.rows):
        if rows_read is not None:
            rows_read[0] = index + 1
        if role is not None and row_role(loader.name, split, index) != role:
            continue  # the other role's row (train vs eval): not a bad row
        ctx = opened.context(loader.name, split, index)
        try:
            if not isinstance(row, dict):
                raise BadRow("wrong type", f"row is {type(row).__name__}, not a mapping")
            tasks = loader.convert(row, ctx)
            for task in tasks:
                reason = unusable_reason(task)
                if reason is not None:
                    raise BadRow(reason, task.id)
        except BadRow as bad:
            _count_skip(skip_reasons, loader.name, index, bad.reason, bad.detail)
            continue
        except (KeyError, TypeError, ValueError) as exc:  # a schema the converter did not expect
            _count_skip(skip_reasons, loader.name, index, "wrong type", repr(exc))
            continue
        if limit is not None:
            tasks = tasks[: limit - produced]
        yield row, ctx, tasks
        produced += len(tasks)
        if limit is not None and produced >= limit:
            return


def _count_skip(
    counter: Counter | None, dataset: str, index: int, reason: str, detail: str
) -> None:
    if counter is not None:
        counter[reason] += 1
    logger.debug("%s row %d skipped: %s %s", dataset, index, reason, detail)


def load_dataset_tasks(
    name: str,
    *,
    path: str | os.PathLike[str] | None = None,
    split: str | None = None,
    limit: int | None = None,
    streaming: bool = False,
    revision: str | None = None,
    verify: bool = True,
    cache_dir: str | None = None,
    config: str | None = None,
    role: str | None = None,
    lazy: bool = False,
) -> LoadResult:
    """Reads one split into a list of tasks, counting skipped rows by reason.

    Args:
        name: registry name: "nlvr2", "aguvis-stage-1", "aguvis-stage-2", "pixmo-count",
            "countbench".
        path: local copy (see `open_rows`); None reads from the hub.
        split: None means the dataset's default split (validation, or test for CountBenchQA,
            train for aguvis which has only that).
        limit: stop after this many tasks.
        streaming: read lazily (hub or parquet); the result is the same.
        revision: hub revision to pin.
        verify: check `manifest.json` where present.
        cache_dir: `datasets` arrow cache for non-streaming reads.
        config: hub subset (aguvis has several; see `open_rows`).
        role: "train" (SFT, GRPO) or "eval" (suites) keeps only that role's rows
            (`boxgym.data.splits`: train and eval never share a row); None keeps every row.
        lazy: `tasks` is a `LazyTasks` over the usable rows: every row is still converted
            once here (so bad rows are counted and skipped exactly as otherwise), but only its
            undecoded cells are kept (image bytes or paths, not pixels) and a task is converted
            again when an episode asks for it, so memory does not hold n decoded images.

    Raises:
        DatasetSourceError: unknown dataset, missing path or split.
        ManifestError: a cached copy does not match its manifest.
    """
    from boxgym.data.splits import check_role

    check_role(role)
    loader = get_loader(name)
    split = split or loader.default_split
    opened = open_rows(
        name,
        path=path,
        split=split,
        streaming=streaming,
        revision=revision,
        verify=verify,
        cache_dir=cache_dir,
        config=config,
    )
    reasons: Counter = Counter()
    rows_read = [0]
    if lazy:
        usable = _usable_rows(loader, opened, split, limit, reasons, rows_read, role)
        tasks: Sequence[Task] = _lazy_row_tasks(loader, usable)
    else:
        tasks = list(_convert_rows(loader, opened, split, limit, reasons, rows_read, role))
    result = LoadResult(tasks, sum(reasons.values()), reasons, opened.source, rows_read[0])
    if result.skipped:
        logger.warning("%s", result.summary())
    return result


def _lazy_row_tasks(
    loader: DatasetLoader, usable: Iterator[tuple[dict[str, Any], RowContext, list[Task]]]
) -> LazyTasks:
    """A `LazyTasks` over the usable rows: row cells kept, their images decoded on access."""
    rows: list[tuple[dict[str, Any], RowContext]] = []
    picks: list[tuple[int, int]] = []  # task i = task k of row r
    ids: list[str] = []
    most = 1
    for row, ctx, tasks in usable:
        for k, task in enumerate(tasks):
            picks.append((len(rows), k))
            ids.append(task.id)
            most = max(most, len(task.images))
        rows.append((row, ctx))

    def build(i: int) -> Task:
        r, k = picks[i]
        row, ctx = rows[r]
        try:
            return loader.convert(row, ctx)[k]
        except (BadRow, KeyError, TypeError, ValueError, IndexError) as exc:
            raise DatasetSourceError(
                f"{loader.name} row {ctx.index} could not be read again ({exc}); was the "
                "dataset copy changed during the run? Restore it and rerun with --resume"
            ) from exc

    return LazyTasks(len(ids), build, ids.__getitem__, images_per_task=most)
