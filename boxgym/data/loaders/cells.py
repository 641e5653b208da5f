"""Decoding one dataset cell: images in every form a reader produces, labels, counts, text.

Every function raises `BadRow(reason)` for a cell it cannot use; the loader counts the reason and
skips the row (see `boxgym.data.loaders.common`).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_ORIENTATION = 0x0112  # EXIF tag


class BadRow(ValueError):
    """A dataset row that cannot become a task; `reason` is short and groups like rows."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def decode_image(value: Any, base_dir: Path | None = None, *, column: str = "image") -> Image.Image:
    """Turns an image cell into an RGB PIL image, or raises `BadRow`.

    Accepts what the readers produce: a `{"bytes", "path"}` dict (the `datasets` Image feature
    with decoding off), raw bytes, a path string (relative to `base_dir`), or a PIL image.
    URLs are refused with "image not available offline": nothing is downloaded here.
    """
    if value is None:
        raise BadRow("missing image", column)
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    data: bytes | None = None
    ref: str | None = None
    if isinstance(value, dict):
        data = value.get("bytes")
        ref = value.get("path")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        ref = value
    else:
        raise BadRow("wrong type", f"{column} is {type(value).__name__}")
    if not data:
        if not ref:
            raise BadRow("missing image", column)
        data = read_image_file(ref, base_dir, column=column)
    return image_from_bytes(data, column=column)


def read_image_file(ref: str, base_dir: Path | None, *, column: str = "image") -> bytes:
    """Bytes of an image referenced by path; URLs and absent files raise `BadRow`."""
    if _URL.match(ref) and not ref.lower().startswith("file://"):
        raise BadRow("image not available offline", ref)
    ref = ref.removeprefix("file://")
    candidate = Path(ref)
    if not candidate.is_absolute() and base_dir is not None:
        candidate = base_dir / candidate
    if not candidate.is_file():
        raise BadRow("missing image", f"{column}: {ref}")
    return candidate.read_bytes()


def image_from_bytes(data: bytes, *, column: str = "image") -> Image.Image:
    """Decodes fully (so truncated files fail here, not later) into RGB, or raises `BadRow`."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.width < 1 or im.height < 1:
                raise BadRow("corrupt image", f"{column}: empty image")
            # as `datasets`' own decoder does: honour the EXIF orientation of photos
            upright = ImageOps.exif_transpose(im) if im.getexif().get(_ORIENTATION) else im
            return upright.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise BadRow("image too large", f"{column}: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadRow("corrupt image", f"{column}: {exc}") from exc


def image_bytes(value: Any, base_dir: Path | None = None, *, column: str = "image") -> bytes:
    """The undecoded bytes of an image cell (for checksums), or raises `BadRow`."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path"):
            return read_image_file(value["path"], base_dir, column=column)
        raise BadRow("missing image", column)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return read_image_file(value, base_dir, column=column)
    if value is None:
        raise BadRow("missing image", column)
    raise BadRow("wrong type", f"{column} is {type(value).__name__}")


def parse_bool(value: Any) -> bool:
    """NLVR2-style labels: bool, 0/1, or "True"/"False" (any case) -> bool; else `BadRow`."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
    raise BadRow("unparsable label", repr(value)[:80])


def parse_count(value: Any, *, minimum: int = 0) -> int:
    """A non-negative integer count from an int, integral float or digit string; else `BadRow`."""
    if isinstance(value, bool):
        raise BadRow("unparsable count", repr(value))
    if isinstance(value, int):
        count = value
    elif isinstance(value, float) and value.is_integer():
        count = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        count = int(value.strip())
    else:
        raise BadRow("unparsable count", repr(value)[:80])
    if count < minimum:
        raise BadRow("unparsable count", f"{count} < {minimum}")
    return count


def require_text(row: dict[str, Any], column: str) -> str:
    """A non-empty string cell, or `BadRow`."""
    value = row.get(column)
    if not isinstance(value, str) or not value.strip():
        raise BadRow(f"missing {column}", repr(value)[:80])
    return value.strip()


def normalize_object_label(label: str) -> str:
    """A dataset's object name, trimmed and lower-cased (e.g. "Cars " -> "cars").

    Deliberately not the scene vocabulary's `normalize_label`: that maps words onto the scene
    families' canonical forms ("cars" -> "word car"), which is wrong for open-vocabulary
    labels. The reward compares labels through `labels_match`, which normalises both sides.
    """
    return " ".join(label.lower().split())
