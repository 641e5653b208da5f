"""PixMo-Count image download against a real loopback HTTP server (127.0.0.1 only)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from boxgym.data.loaders import load_dataset_tasks
from boxgym.data.loaders.downloads import download_pixmo_count
from boxgym.data.loaders.samples import dots_png


class ImageServer:
    """Serves /good/i.png, /flaky.png (503 twice, then the image), /missing.png (404) and
    /wrong.png (bytes that do not match the row's sha256); counts requests in flight."""

    def __init__(self, images: dict[str, bytes]) -> None:
        self.images, self.requests, self.in_flight, self.max_in_flight = images, Counter(), 0, 0
        lock, server = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with lock:
                    server.requests[self.path] += 1
                    count = server.requests[self.path]
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                time.sleep(0.05)
                with lock:
                    server.in_flight -= 1
                if self.path == "/flaky.png" and count <= 2:
                    code, body = 503, b"busy"
                elif self.path in server.images:
                    code, body = 200, server.images[self.path]
                else:
                    code, body = 404, b"no"
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def source(tmp_path):
    """A local PixMo-Count copy whose rows point at a loopback server, like the hub's rows."""
    points = [(10.0, 10.0), (30.0, 20.0)]  # inside the 56x42 sample image
    colours = ["red", "blue", "green", "orange", "purple", "black", "brown"]
    pngs = {f"/good/{i}.png": dots_png(points[: i % 2 + 1], colours[i]) for i in range(6)}
    pngs["/flaky.png"] = dots_png(points, colours[6])
    server = ImageServer({**pngs, "/wrong.png": b"not the image"})
    rows = []
    extra = [("/missing.png", b"x"), ("/wrong.png", dots_png(points, "white"))]
    for path, data in [*pngs.items(), *extra]:
        count = 1 if path.endswith(("0.png", "2.png", "4.png")) else 2
        rows.append(
            {
                "image_url": server.url + path,
                "image_sha256": hashlib.sha256(data).hexdigest(),
                "count": count,
                "points": {
                    "x": [p[0] for p in points[:count]],
                    "y": [p[1] for p in points[:count]],
                },
                "label": "red dot",
            }
        )
    rows.append(dict(rows[0]))  # the same image twice: fetched once
    src = tmp_path / "src"
    src.mkdir()
    (src / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    yield src, server, len(rows)
    server.close()


@pytest.mark.slow
def test_images_download_once_verified_with_bounded_concurrency_and_retries(source, tmp_path):
    src, server, n_rows = source
    out = tmp_path / "copy"
    report = download_pixmo_count(
        "validation", out, path=src, concurrency=3, retries=2, backoff=0.01, timeout=5
    )
    assert report.rows == n_rows
    assert report.downloaded == 7  # six good images and the flaky one, after two 503s
    assert report.failed == Counter({"http 404": 1, "sha256 mismatch": 1})
    assert server.requests["/flaky.png"] == 3 and server.requests["/good/0.png"] == 1
    assert server.max_in_flight <= 3
    # the copy loads through the ordinary local path; failed images are counted skipped rows
    result = load_dataset_tasks("pixmo-count", path=str(out), split="validation")
    assert len(result.tasks) == n_rows - 2
    assert result.skip_reasons == Counter({"image not available offline": 2})
    # a second call fetches nothing that is already there
    before = sum(server.requests.values())
    again = download_pixmo_count("validation", out, path=src, retries=0, timeout=5)
    assert again.cached == 7 and again.downloaded == 0
    assert sum(server.requests.values()) - before == 2  # only the two failures are retried


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="concurrency"):
        download_pixmo_count("validation", tmp_path, path=tmp_path, concurrency=0)
