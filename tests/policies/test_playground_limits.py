"""`playground` names what is wrong with an image too large to open, and its tool loop writes a
run folder like every run verb (refused when not empty)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses
REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
ENV.pop("BOXGYM_DEBUG", None)


def huge_png(path: Path, side: int = 20000) -> None:
    """A PNG whose header says side x side pixels (PIL refuses it on opening, before decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_an_image_too_large_to_open_is_named(tmp_path) -> None:
    huge_png(tmp_path / "huge.png")
    done = subprocess.run(
        [sys.executable, "-m", "boxgym.cli", "playground", "--image", str(tmp_path / "huge.png"),
         "--log", str(tmp_path / "log.jsonl"), "How many?"],
        capture_output=True, text=True, timeout=120, env=ENV,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and "too large to open safely" in lines[0] and "shrink it" in lines[0]
    assert "internal error" not in lines[0]
