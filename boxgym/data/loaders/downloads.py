"""PixMo-Count's images, downloaded once: a local copy the loaders read like any other.

PixMo-Count's rows hold `image_url` and `image_sha256`, not images. `download_pixmo_count`
reads a split through the same `open_rows` as every loader (hub, hub id or local copy), fetches
each distinct image once into `out/images/<sha256>` with bounded concurrency, retries with
exponential backoff on connection errors, timeouts, 429 and 5xx, and keeps a file only when its
bytes hash to `image_sha256`. It writes `out/<split>.jsonl`: every row, with `image_path` set
where the image arrived. A row whose image failed keeps only its URL, so the loader skips it and
counts it ("image not available offline"): failures are skipped rows, never a crash. Images
already in `out/images` with the right hash are not fetched again. `manifest.json` records the
copy (sha256 of every file), so later reads are verified.

    from boxgym.data.loaders.downloads import download_pixmo_count
    report = download_pixmo_count("validation", "~/data/pixmo-count")   # from the hub
    load_dataset_tasks("pixmo-count", path="~/data/pixmo-count", split="validation")
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RETRY_STATUS = {429, 500, 502, 503, 504}


@dataclass
class DownloadReport:
    """What one `download_pixmo_count` call did."""

    rows: int = 0
    downloaded: int = 0  # images fetched and verified this call
    cached: int = 0  # images already present with the right hash
    failed: Counter = field(default_factory=Counter)  # reason -> images
    jsonl: Path | None = None

    def summary(self) -> str:
        failed = sum(self.failed.values())
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.failed.items()))
        return (
            f"{self.rows} rows: {self.downloaded} images downloaded, {self.cached} already "
            f"there, {failed} failed" + (f" ({reasons})" if reasons else "")
        )


def fetch_verified(
    url: str,
    sha256: str,
    target: Path,
    *,
    retries: int = 3,
    timeout: float = 30.0,
    backoff: float = 0.5,
) -> str:
    """Download `url` into `target` if its bytes hash to `sha256`; "ok", "cached" or a reason.

    Retries connection errors, timeouts, 429 and 5xx with exponential backoff; other HTTP
    errors and a hash mismatch fail at once. The file appears atomically or not at all.
    """
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
        return "cached"
    if not url.startswith(("http://", "https://")):
        return "not an http(s) url"
    delay, reason = backoff, "download failed"
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as error:
            reason = f"http {error.code}"
            if error.code not in RETRY_STATUS:
                return reason
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            reason = "timed out" if "timed out" in str(error) else "connection failed"
        else:
            if hashlib.sha256(data).hexdigest() != sha256:
                return "sha256 mismatch"
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
            return "ok"
        if attempt < retries:
            time.sleep(delay)
            delay *= 2
    return reason


def download_pixmo_count(
    split: str,
    out: str | os.PathLike[str],
    *,
    path: str | os.PathLike[str] | None = None,
    concurrency: int = 8,
    retries: int = 3,
    timeout: float = 30.0,
    backoff: float = 0.5,
    limit: int | None = None,
    revision: str | None = None,
) -> DownloadReport:
    """Fetch one split's images into the local copy `out` (see the module docstring).

    Args:
        split: "train", "validation" or "test".
        out: the local copy to create or complete.
        path: where the rows come from: None (the hub), a hub id, or a local copy.
        concurrency: downloads in flight at most.
        retries: further attempts after a failed one (connection, timeout, 429, 5xx).
        timeout: seconds per request.
        backoff: first retry delay in seconds, doubled each retry.
        limit: only the first `limit` rows.
        revision: hub revision to pin.
    """
    from boxgym.data.loaders.common import open_rows
    from boxgym.data.loaders.manifest import write_manifest

    if concurrency < 1 or retries < 0 or timeout <= 0:
        raise ValueError("need concurrency >= 1, retries >= 0 and timeout > 0")
    root = Path(out).expanduser()
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    opened = open_rows("pixmo-count", path=path, split=split, revision=revision)
    rows: list[dict[str, Any]] = []
    for index, row in enumerate(opened.rows):
        if limit is not None and index >= limit:
            break
        rows.append(dict(row))
    wanted: dict[str, str] = {}  # sha256 -> url, each image once
    for row in rows:
        sha, url = row.get("image_sha256"), row.get("image_url")
        if isinstance(sha, str) and isinstance(url, str) and len(sha.strip()) == 64:
            wanted.setdefault(sha.strip().lower(), url.strip())
    report = DownloadReport(rows=len(rows))

    def one(item: tuple[str, str]) -> tuple[str, str]:
        sha, url = item
        return sha, fetch_verified(
            url, sha, images / sha, retries=retries, timeout=timeout, backoff=backoff
        )

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outcomes = dict(pool.map(one, wanted.items()))
    for outcome in outcomes.values():
        if outcome == "ok":
            report.downloaded += 1
        elif outcome == "cached":
            report.cached += 1
        else:
            report.failed[outcome] += 1
    jsonl = root / f"{split}.jsonl"
    with open(jsonl.with_suffix(".jsonl.tmp"), "w") as handle:
        for row in rows:
            sha = str(row.get("image_sha256") or "").strip().lower()
            if outcomes.get(sha) in ("ok", "cached"):
                row["image_path"] = f"images/{sha}"
            handle.write(json.dumps(row, default=str) + "\n")
    os.replace(jsonl.with_suffix(".jsonl.tmp"), jsonl)
    report.jsonl = jsonl
    splits = {p.stem: len(p.read_text().splitlines()) for p in root.glob("*.jsonl")}
    write_manifest(root, "pixmo-count", revision=revision, splits=splits, layout="jsonl")
    return report
