"""The inspection page: a static, self-contained `index.html` for a run directory.

The page embeds the episodes and the summary as JSON inside a `<script type="application/json">`
block (with `<`, `>` and `&` written as JSON escapes, so no model text can close the block) and
renders them with a small vanilla-JS program that only ever sets `textContent`, never HTML, so
arbitrary model output is shown as text. Images are `<img src="images/<sha>.png">`, relative to
the page, so a run directory can be copied or served as it is. Each episode's turns are built
when it is opened, which keeps a 1,000-episode page quick to load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from boxgym.env.parsing import valid_unicode

_TEMPLATE = Path(__file__).with_name("viewer_template.html")


def _safe_json(data: Any) -> str:
    text = valid_unicode(
        json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    )
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def render_index(episodes: list[dict[str, Any]], summary: dict[str, Any], *, title: str) -> str:
    """The page's HTML for these episodes and this summary (a Jinja2 template, autoescaped)."""
    payload = {"title": title, "summary": summary, "episodes": episodes}
    return _template().render(title=title, data=_safe_json(payload))


def _template() -> Any:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATE.parent)),
        autoescape=True,
        keep_trailing_newline=True,
    )
    return environment.get_template(_TEMPLATE.name)


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
