"""The inspection page: a static, self-contained `index.html` for a run directory.

The page embeds the episodes and the summary as JSON inside a `<script type="application/json">`
block (with `<`, `>` and `&` written as JSON escapes, so no model text can close the block) and
renders them with a small vanilla-JS program that only ever sets `textContent`, never HTML, so
arbitrary model output is shown as text. Stored images are `<img src="images/<ref>">`, relative to
the page (images the env derived from a task image are drawn from their recipe as SVG over it), so a run directory can be copied or served as it is. Each episode's turns are built
when it is opened, which keeps a 1,000-episode page quick to load.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from boxgym.env.parsing import valid_unicode

_TEMPLATE = Path(__file__).with_name("viewer_template.html")


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


def render_index(episodes: list[dict[str, Any]], summary: dict[str, Any], *, title: str) -> str:
    """The page's HTML for these episodes and this summary (a Jinja2 template, autoescaped)."""
    from boxgym.tools.canvas import PALETTE

    payload = {"title": title, "summary": summary, "episodes": episodes, "palette": PALETTE}
    return _template().render(title=title, data=_safe_json(payload))


def _template() -> Any:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATE.parent)),
        autoescape=True,
        keep_trailing_newline=True,
    )
    return environment.get_template(_TEMPLATE.name)


# Stands for the data block when the template is rendered around the streamed episodes.
_DATA_MARK = "\x00boxgym-data\x00"


def write_run_page(
    run_dir: str | Path,
    summary: dict[str, Any],
    lines: Iterable[str],
    *,
    title: str | None = None,
) -> Path:
    """Write `index.html` for a run directory from its stored episode lines.

    `lines` are the episodes' JSON lines as stored (`RunReader.raw_lines`, or
    `EpisodeReader.raw_lines` less the lines a pass skipped); they are copied into the page as
    they are (escaped for the script block), one at a time, so neither the records nor the page
    are ever held in memory.
    """
    from boxgym.tools.canvas import PALETTE

    run_dir = Path(run_dir)
    title = title or f"boxgym run: {run_dir.resolve().name}"
    head, tail = _template().render(title=title, data=_DATA_MARK).split(_DATA_MARK)
    path = run_dir / "index.html"
    tmp = path.with_suffix(".html.tmp")
    with open(tmp, "w", encoding="utf-8") as page:
        page.write(head)
        page.write(
            f'{{"title":{_safe_json(title)},"summary":{_safe_json(summary)},'
            f'"palette":{_safe_json(PALETTE)},"episodes":['
        )
        for i, line in enumerate(lines):
            page.write(("," if i else "") + _escape(line))
        page.write("]}")
        page.write(tail)
    tmp.replace(path)
    return path


def write_index(
    run_dir: str | Path,
    episodes: list[dict[str, Any]],
    summary: dict[str, Any],
    *,
    title: str | None = None,
) -> Path:
    """Write `index.html` into the run directory and return its path."""
    run_dir = Path(run_dir)
    path = run_dir / "index.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(
        render_index(episodes, summary, title=title or f"boxgym run: {run_dir.resolve().name}"),
        encoding="utf-8",
    )
    tmp.replace(path)
    return path
