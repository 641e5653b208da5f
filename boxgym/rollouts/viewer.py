"""The inspection page of a run directory: `index.html` with a small index, episodes in page files.

`index.html` holds the summary and, per episode, only what the list, the filters and the plots
use (`index_entry`: key, policy, family, difficulty, reward, failure, true count, a few metrics,
the first task image, the number of turns): a few hundred bytes an episode whatever its size.
The episodes themselves, as stored, go into `pages/0000.js`, `pages/0001.js`, ... of at most
`PAGE_BYTES` each (one episode larger than that gets a page of its own). A page file is a script
that calls `boxgymPage(token, number, [episodes])`: the page loads it with a `<script src>` tag
when an episode is opened, which works when `index.html` is opened straight from disk (browsers
refuse `fetch()` of `file://` URLs but run scripts from beside the page).

Model text cannot close a script block: the JSON is written with `<`, `>` and `&` as JSON
escapes, and the page's JS only ever sets `textContent`, never HTML. Stored images are
`<img src="images/<ref>">`, relative to the page (images the env derived from a task image are
drawn from their recipe as SVG over it), so a run directory can be copied or served as it is.

Writing is one streaming pass over the stored lines, copied without being parsed; the index
entries come from the pass that parses the records anyway (`PageIndex.add`, fed beside the
summary's columns), in the same order. Page files are written into a fresh folder that then
replaces `pages/`, so no file of an earlier write lingers; the index and its page files share a
random token, and a page opened before a rewrite says so instead of showing the wrong episode.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from boxgym.env.parsing import valid_unicode

_TEMPLATE = Path(__file__).with_name("viewer_template.html")
PAGE_DIR = "pages"
# A page file is closed before it passes this many characters (about bytes: stored lines are
# mostly ASCII), so a browser loads a few MB when an episode is opened.
PAGE_BYTES = 4_000_000
# The metrics the list, the filters and the plots read (the rest are in the episode's page).
INDEX_METRICS = (
    "success",
    "count_accuracy",
    "count_abs_error",
    "answered",
    "answered_count",
    "valid_call_rate",
    "calls",
    "max_reward",
)


def _safe_json(data: Any) -> str:
    text = valid_unicode(
        json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    )
    return _escape(text)


def _escape(text: str) -> str:
    """JSON text made safe inside a script block: `<`, `>`, `&`, U+2028/9 as JSON escapes
    (they only occur inside strings in JSON, where the escape means the same character)."""
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _number(value: Any) -> Any:
    """A metric for the index: floats rounded to 6 places (the page shows 3), else as stored."""
    if isinstance(value, float):
        return round(value, 6) if value == value and abs(value) != float("inf") else None
    return value if isinstance(value, (int, type(None))) else None


def index_entry(record: dict[str, Any]) -> dict[str, Any]:
    """What the page's list, filters and plots need of one episode record."""
    task = record.get("task") if isinstance(record.get("task"), dict) else {}
    meta = task.get("meta") if isinstance(task.get("meta"), dict) else {}
    answer = task.get("answer") if isinstance(task.get("answer"), dict) else {}
    count = answer.get("count")
    if not isinstance(count, (int, float)) or isinstance(count, bool):
        objects = task.get("objects")
        count = len(objects) if isinstance(objects, list) and objects else None
    images = task.get("images") if isinstance(task.get("images"), list) else []
    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    turns = record.get("turns") if isinstance(record.get("turns"), list) else []
    key = record.get("key") or {}
    entry = {
        "key": {"task_id": key.get("task_id"), "sample": key.get("sample")},
        "policy": record.get("policy") or "",
        "source": task.get("source") or "",
        "difficulty": str(meta.get("difficulty") or "unknown"),
        "failure": record.get("failure", "unknown"),
        "reward": _number(record.get("reward")),
        "count": count,
        "turns": len(turns),
        "image": images[0] if images and isinstance(images[0], str) else None,
        "metrics": {name: _number(metrics[name]) for name in INDEX_METRICS if name in metrics},
    }
    if record.get("page_base"):
        entry["page_base"] = record["page_base"]
    return entry


class PageIndex:
    """The page's index entries, added record by record in the order the lines are stored.

    Each entry is kept as its JSON text (a few hundred bytes), so 100,000 episodes take a few
    tens of MB, like the summary's columns.
    """

    def __init__(self) -> None:
        self.entries: list[str] = []

    def add(self, record: dict[str, Any]) -> None:
        self.entries.append(_safe_json(index_entry(record)))

    def __len__(self) -> int:
        return len(self.entries)


def _template() -> Any:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATE.parent)),
        autoescape=True,
        keep_trailing_newline=True,
    )
    return environment.get_template(_TEMPLATE.name)


# Stands for the data block when the template is rendered around the streamed index.
_DATA_MARK = "\x00boxgym-data\x00"


def page_file(number: int) -> str:
    """A page file's path relative to the run directory (`pages/0003.js`)."""
    return f"{PAGE_DIR}/{number:04d}.js"


def _write_pages(folder: Path, lines: Iterable[str], token: str, page_bytes: int) -> list[int]:
    """Copy the stored lines into page files under `folder`; the episodes in each page."""
    counts: list[int] = []
    remaining = iter(lines)
    line = next(remaining, None)
    while line is not None:
        number = len(counts)
        with open(folder / Path(page_file(number)).name, "w", encoding="utf-8") as page:
            head = f"boxgymPage({json.dumps(token)},{number},[\n"
            page.write(head)
            size, count = len(head), 0
            while line is not None:
                text = _escape(line)
                if count and size + len(text) > page_bytes:
                    break  # this line starts the next page
                page.write(("," if count else "") + text + "\n")
                size, count = size + len(text) + 2, count + 1
                line = next(remaining, None)
            page.write("]);\n")
        counts.append(count)
    return counts


_PAGE_FILE = re.compile(r"^\d{4,}\.js$")


def _clear_leftovers(run_dir: Path) -> None:
    """Folders a killed earlier write left (`pages.tmp-*`, `pages.old-*`): their page files."""
    for leftover in [*run_dir.glob(f"{PAGE_DIR}.tmp-*"), *run_dir.glob(f"{PAGE_DIR}.old-*")]:
        _retire(leftover, None)


def _retire(folder: Path, keep_in: Path | None) -> None:
    """Delete the page files in `folder`; move anything else (not written here) into `keep_in`
    when there is no file of that name there; remove `folder` if that emptied it."""
    for entry in folder.iterdir():
        if entry.is_file() and not entry.is_symlink() and _PAGE_FILE.match(entry.name):
            entry.unlink()
        elif keep_in is not None and not (keep_in / entry.name).exists():
            entry.rename(keep_in / entry.name)
    with contextlib.suppress(OSError):
        folder.rmdir()


def write_run_page(
    run_dir: str | Path,
    summary: dict[str, Any],
    lines: Iterable[str],
    index: PageIndex,
    *,
    title: str | None = None,
    page_bytes: int = PAGE_BYTES,
) -> Path:
    """Write `index.html` and `pages/` for a run directory from its stored episode lines.

    `lines` are the episodes' JSON lines as stored (`RunReader.raw_lines`, or
    `EpisodeReader.raw_lines` less the lines a pass skipped); `index` holds their entries in the
    same order (`PageIndex.add` of each record as the summary's pass read it). The lines are
    copied into page files as they are (escaped for a script), one at a time, so neither the
    records nor a page is held in memory. Callers hold the run's summary lock.
    """
    from boxgym.tools.canvas import PALETTE

    run_dir = Path(run_dir)
    title = title or f"boxgym run: {run_dir.resolve().name}"
    token = secrets.token_hex(8)
    _clear_leftovers(run_dir)
    fresh = run_dir / f"{PAGE_DIR}.tmp-{token}"
    fresh.mkdir()
    try:
        counts = _write_pages(fresh, lines, token, page_bytes)
        if sum(counts) != len(index):
            raise RuntimeError(
                f"the page index has {len(index)} entries for {sum(counts)} stored lines "
                "(a bug: the lines and the records must come from the same pass)"
            )
        head, tail = _template().render(title=title, data=_DATA_MARK).split(_DATA_MARK)
        path = run_dir / "index.html"
        tmp = path.with_suffix(".html.tmp")
        with open(tmp, "w", encoding="utf-8") as page:
            page.write(head)
            page.write(
                f'{{"title":{_safe_json(title)},"summary":{_safe_json(summary)},'
                f'"palette":{_safe_json(PALETTE)},"token":{_safe_json(token)},'
                f'"page_dir":{_safe_json(PAGE_DIR)},"pages":{_safe_json(counts)},"episodes":['
            )
            for i, entry in enumerate(index.entries):
                page.write(("," if i else "") + entry + "\n")
            page.write("]}")
            page.write(tail)
    except BaseException:
        _retire(fresh, None)
        raise
    current = run_dir / PAGE_DIR
    old = run_dir / f"{PAGE_DIR}.old-{token}"
    if current.exists():
        current.rename(old)
    fresh.rename(current)
    tmp.replace(path)
    if old.exists():
        _retire(old, current)
    return path


def write_index(
    run_dir: str | Path,
    episodes: list[dict[str, Any]],
    summary: dict[str, Any],
    *,
    title: str | None = None,
    page_bytes: int = PAGE_BYTES,
) -> Path:
    """Write the page for episodes held in memory (the demo, the playground); returns its path."""
    index = PageIndex()
    for episode in episodes:
        index.add(episode)
    lines = (
        valid_unicode(
            json.dumps(episode, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        )
        for episode in episodes
    )
    return write_run_page(run_dir, summary, lines, index, title=title, page_bytes=page_bytes)
