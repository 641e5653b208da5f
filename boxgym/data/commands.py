"""The `data` verb: look at dataset tasks with their ground truth, and bookmark the odd ones.

    boxgym data gallery  --dataset nlvr2 --path DIR [--n 8 --seed 0] --out OUT   (random tasks)
    boxgym data gallery  --dataset nlvr2 --path DIR --bookmarks --out OUT       (bookmarked ids)
    boxgym data gallery  --dataset nlvr2 --path DIR --id ID [--id ID ...] --out OUT  (chosen ids)
    boxgym data gallery  --tasks PHOTOS --out OUT                               (your own tasks)
    boxgym data inspect  --dataset nlvr2 --path DIR --id dev-850-0-0 [--out OUT]
    boxgym data inspect  --dataset screens --id screens-easy-s3               (scene families)
    boxgym data bookmark add|list|remove --dataset nlvr2 [--id ID] [--note TEXT]
    boxgym data cache    --dataset nlvr2 --out DIR [--path SRC] [--split S ...] [--limit N]
    boxgym data verify   --path DIR                                   (check manifest.json)

What a gallery writes and how tasks are drawn: `boxgym.data.gallery`. A gallery goes into a new
or empty folder, or over an earlier gallery with `--overwrite` (`boxgym.output_dir`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from boxgym.data.gallery import (
    DEFAULT_SCAN,
    BookmarkStore,
    DataCommandError,
    _scene_families,
    export_task,
    find_dataset_tasks,
    gallery_files,
    safe_name,
    sample_dataset_tasks,
    scene_task,
    write_gallery,
)
from boxgym.data.task import Task
from boxgym.errors import UserError
from boxgym.output_dir import check_folder, claim_folder

MAX_GALLERY = 10_000  # tasks one gallery page shows at most


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """Subcommands of `boxgym data`."""
    from boxgym.data.loaders.user_tasks import add_tasks_arguments

    sub = parser.add_subparsers(dest="data_command", metavar="COMMAND")
    sub.required = True

    def source(p: argparse.ArgumentParser, required_dataset: bool = True) -> None:
        p.add_argument("--dataset", required=required_dataset, help="dataset name")
        p.add_argument("--path", help="local copy (save_to_disk dir, parquet/jsonl); default: hub")
        p.add_argument("--split", help="split to read (default: the dataset's default split)")
        p.add_argument("--revision", help="hub revision to pin")
        p.add_argument("--config", help="hub subset, for datasets that have several (aguvis)")
        p.add_argument("--streaming", action="store_true", help="stream rows (hub or parquet)")
        p.add_argument("--no-verify", action="store_true", help="skip the manifest.json check")

    def bookmarks_file(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--bookmarks-file",
            help="bookmarks JSON (default $BOXGYM_CACHE/bookmarks.json or ~/.cache/boxgym/)",
        )

    g = sub.add_parser(
        "gallery",
        help="Random (or bookmarked) tasks with ground truth, as HTML.",
        description="Random (or bookmarked) tasks with ground truth, as HTML.",
    )
    source(g, required_dataset=False)
    add_tasks_arguments(g)
    g.add_argument("--n", type=int, default=8, help="number of tasks (default 8)")
    g.add_argument("--seed", type=int, default=None, help="seed of the random draw (default 0)")
    g.add_argument("--scan", type=int, default=DEFAULT_SCAN, help="draw from the first N rows")
    g.add_argument("--bookmarks", action="store_true", help="show the next bookmarked ids")
    g.add_argument("--id", action="append", dest="ids", help="show this task id (repeatable)")
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier gallery in --out (only the files it wrote are deleted)",
    )
    bookmarks_file(g)

    i = sub.add_parser(
        "inspect",
        help="One task's metadata and ground truth; export its images.",
        description="One task's metadata and ground truth; export its images.",
    )
    source(i)
    i.add_argument("--id", required=True, help="task id (NLVR2 identifier, row id, scene id)")
    i.add_argument("--out", help="also write its images and ground_truth.json here")

    b = sub.add_parser(
        "bookmark",
        help="Bookmark interesting task ids (persistent).",
        description="Bookmark interesting task ids (persistent).",
    )
    b.add_argument("action", choices=["add", "list", "remove"])
    b.add_argument("--dataset", help="dataset name (required for add/remove)")
    b.add_argument("--id", help="task id (required for add/remove)")
    b.add_argument("--note", default="", help="why it is interesting")
    bookmarks_file(b)

    c = sub.add_parser(
        "cache",
        help="Copy dataset splits to a directory with a manifest.",
        description="Copy dataset splits to a directory with a manifest.",
    )
    c.add_argument("--dataset", required=True, help="dataset name")
    c.add_argument("--out", required=True, help="destination directory")
    c.add_argument("--path", help="read from this local copy instead of the hub")
    c.add_argument("--split", action="append", help="split to copy (repeatable)")
    c.add_argument("--revision", help="hub revision to pin and record")
    c.add_argument("--config", help="hub subset, for datasets that have several (aguvis)")
    c.add_argument("--limit", type=int, help="rows per split")
    c.add_argument("--overwrite", action="store_true", help="replace an existing cache")

    v = sub.add_parser(
        "verify",
        help="Check a cached copy against its manifest.json.",
        description="Check a cached copy against its manifest.json.",
    )
    v.add_argument("--path", required=True, help="the cached copy")


def _open_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "path": args.path,
        "split": args.split,
        "revision": args.revision,
        "streaming": args.streaming,
        "verify": not args.no_verify,
        "config": args.config,
    }


def run(args: argparse.Namespace) -> int:
    """Runs one `data` subcommand; a user error is one line and exit 2."""
    from boxgym.data.loaders.common import DatasetSourceError
    from boxgym.data.loaders.manifest import ManifestError

    handlers = {
        "gallery": _gallery,
        "inspect": _inspect,
        "bookmark": _bookmark,
        "cache": _cache,
        "verify": _verify,
    }
    try:
        return handlers[args.data_command](args)
    except (DataCommandError, DatasetSourceError, ManifestError) as exc:
        # one line through `boxgym.cli` (exit 2), which shows the traceback with --debug
        raise UserError(f"boxgym data {args.data_command}: {exc}") from exc


def _gallery(args: argparse.Namespace) -> int:
    from boxgym.data.loaders.user_tasks import load_tasks_argument

    if not 1 <= args.n <= MAX_GALLERY:
        raise DataCommandError(f"--n must be between 1 and {MAX_GALLERY:,}, got {args.n}")
    if args.scan is not None and args.scan < 1:
        raise DataCommandError(f"--scan must be at least 1, got {args.scan}")
    out = Path(args.out)
    check_folder(out, "data gallery", overwrite=args.overwrite)  # before any task is read
    if args.tasks:
        given = [
            flag
            for flag, value in (
                ("--dataset", args.dataset), ("--id", args.ids), ("--bookmarks", args.bookmarks),
                ("--seed", args.seed is not None), ("--scan", args.scan is not None),
            )
            if value
        ]  # fmt: skip
        if given:
            raise DataCommandError(
                f"--tasks shows your tasks in their order; {', '.join(given)} pick(s) rows of a "
                "dataset and would be ignored: leave them out (--n says how many tasks)"
            )
        tasks = load_tasks_argument(args, limit=args.n)
        return _write(args, list(tasks), f"{args.tasks}: {len(tasks)} tasks")
    args.seed = 0 if args.seed is None else args.seed
    if not args.dataset:
        raise DataCommandError("give --dataset NAME or --tasks PATH")
    if args.bookmarks or args.ids:
        if args.ids:
            ids = list(dict.fromkeys(args.ids))
        else:
            store = BookmarkStore(args.bookmarks_file)
            ids = store.next_ids(args.dataset, args.n)
            if not ids:
                raise DataCommandError(f"no bookmarks for {args.dataset} in {store.path}")
        found = _find(args, ids)
        missing = [i for i in ids if i not in found]
        tasks = [found[i] for i in ids if i in found]
        title = f"{args.dataset}: {', '.join(ids)}"
        if missing:
            print(f"not found: {', '.join(missing)}", file=sys.stderr)
    else:
        tasks, reasons = sample_dataset_tasks(
            args.dataset, args.n, seed=args.seed, scan=args.scan, **_open_kwargs(args)
        )
        title = f"{args.dataset}: {len(tasks)} random tasks (seed {args.seed})"
        if reasons:
            print(f"skipped drawn rows: {dict(reasons)}", file=sys.stderr)
    if not tasks:
        raise DataCommandError(f"no usable tasks found in {args.dataset}")
    return _write(args, tasks, title)


def _write(args: argparse.Namespace, tasks: list[Task], title: str) -> int:
    """The gallery into --out, claimed for it (`boxgym.output_dir`)."""
    with claim_folder(Path(args.out), "data gallery", overwrite=args.overwrite) as folder:
        folder.add(gallery_files(tasks))  # listed before written: --overwrite deletes these
        page = write_gallery(tasks, Path(args.out), title)
    print(f"wrote {len(tasks)} tasks to {page}")
    return 0


def _find(args: argparse.Namespace, ids: list[str]) -> dict[str, Task]:
    if args.dataset in _scene_families():
        return {i: scene_task(i) for i in ids}
    return find_dataset_tasks(args.dataset, ids, **_open_kwargs(args))


def _inspect(args: argparse.Namespace) -> int:
    task = _find(args, [args.id]).get(args.id)
    if task is None:
        raise DataCommandError(f"no task {args.id!r} in {args.dataset}")
    truth = task.ground_truth()
    print(json.dumps(truth, indent=2, default=str))
    if args.out:
        out = Path(args.out)
        stem = safe_name(task.id)
        files = [f"{stem}.json"]
        files += [
            f"images/{stem}_{i}{end}.png" for i in range(len(task.images)) for end in ("", "_gt")
        ]
        with claim_folder(out, "data inspect", overwrite=False, accumulate=True) as folder:
            folder.add(files)
            export_task(task, out, stem)
            (out / f"{stem}.json").write_text(json.dumps(truth, indent=2, default=str))
        print(f"wrote images and ground truth to {out}", file=sys.stderr)
    return 0


def _bookmark(args: argparse.Namespace) -> int:
    store = BookmarkStore(args.bookmarks_file)
    if args.action == "list":
        for mark in store.list(args.dataset):
            note = f"  # {mark['note']}" if mark.get("note") else ""
            print(f"{mark['dataset']}\t{mark['id']}{note}")
        return 0
    if not args.dataset or not args.id:
        raise DataCommandError(f"bookmark {args.action} needs --dataset and --id")
    if args.action == "add":
        store.add(args.dataset, args.id, args.note)
        print(f"bookmarked {args.dataset} {args.id} in {store.path}")
        return 0
    if not store.remove(args.dataset, args.id):
        raise DataCommandError(f"no bookmark {args.dataset} {args.id} in {store.path}")
    print(f"removed {args.dataset} {args.id}")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from boxgym.data.loaders.manifest import cache_dataset

    manifest = cache_dataset(
        args.dataset,
        args.out,
        path=args.path,
        splits=args.split,
        revision=args.revision,
        limit=args.limit,
        overwrite=args.overwrite,
        config=args.config,
    )
    print(
        f"cached {args.dataset} {manifest['splits']} in {args.out} ({len(manifest['files'])} files)"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from boxgym.data.loaders.manifest import verify_manifest

    manifest = verify_manifest(args.path)
    print(
        f"ok: {manifest.get('dataset')} {manifest.get('splits')}, {len(manifest['files'])} files match"
    )
    return 0
