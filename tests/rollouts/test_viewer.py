"""The inspection page: escaping of model text, and a real headless Chromium running its JS."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from boxgym.rollouts.commands import main as run_verbs
from boxgym.rollouts.metrics import summarize
from boxgym.rollouts.store import read_episodes
from boxgym.rollouts.viewer import render_index, write_index

CHROMIUM = "/usr/bin/chromium"
HOSTILE = "</script><img src=x onerror=\"document.title='pwned'\"><!-- & \u2028"


def hostile_episode() -> dict:
    return {
        "key": {"task_id": "evil</script>", "task_index": 0, "sample": 0},
        "policy": "random",
        "seed": 1,
        "task": {
            "id": "evil",
            "question": HOSTILE,
            "answer": {"count": 1},
            "objects": [],
            "images": [],
            "meta": {},
        },
        "prompt": [],
        "turns": [
            {
                "turn": 1,
                "assistant": HOSTILE,
                "calls": [{"name": HOSTILE}],
                "errors": [HOSTILE],
                "tool_results": [
                    {"role": "tool", "name": "x", "content": [{"type": "text", "text": HOSTILE}]}
                ],
                "reward": 0.0,
            }
        ],
        "reward": 0.0,
        "metrics": {"reward": 0.0},
        "failure": HOSTILE,
    }


def test_model_text_cannot_break_out_of_the_data_block() -> None:
    page = render_index([hostile_episode()], summarize([hostile_episode()]), title="t <b>")
    data = page.split('<script type="application/json" id="boxgym-data">', 1)[1].split(
        "</script>", 1
    )[0]
    assert "<" not in data and ">" not in data
    assert "<title>t &lt;b&gt;</title>" in page
    assert "innerHTML" not in page  # the page only ever sets textContent


def chromium_or_skip() -> str:
    if os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    found = shutil.which("chromium")
    if found:
        return found
    if os.environ.get("BOXGYM_REQUIRE_BROWSER") == "1":
        pytest.fail(
            "BOXGYM_REQUIRE_BROWSER=1 but chromium is not installed (apt-get install chromium)"
        )
    pytest.skip(
        "chromium is not installed (apt-get install chromium); set BOXGYM_REQUIRE_BROWSER=1 to make this a failure"
    )


def headless(browser: str, tmp_path: Path, *args: str) -> str:
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", *args,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.browser
def test_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = chromium_or_skip()
    out = tmp_path / "run"
    assert (
        run_verbs(
            [
                "episodes",
                "--scene",
                "all",
                "--policy",
                "noisy",
                "--n",
                "3",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    log = read_episodes(out)
    hostile = hostile_episode()
    write_index(
        out, [*log.episodes, hostile], summarize([*log.episodes, hostile]), title="browser test"
    )
    first = log.episodes[0]["key"]
    url = (out / "index.html").resolve().as_uri() + "#" + f"{first['task_id']}%23{first['sample']}"
    dom = headless(browser, tmp_path, "--dump-dom", url)
    assert 'data-ready="1"' in dom, "the page's script did not run to the end"
    for ep in log.episodes:  # every episode is listed
        assert f'data-key="{ep["key"]["task_id"]}#{ep["key"]["sample"]}"' in dom
    for control in (
        'id="sort"',
        'id="filter-failure"',
        'id="filter-policy"',
        'id="filter-source"',
        'id="filter-rmin"',
    ):
        assert control in dom
    assert "4 of 4 episodes shown" in dom
    # the plots and the summary of the shown episodes, drawn from the filtered episodes
    for title in ("count accuracy by true count", "mean reward by difficulty", "calls per episode"):
        assert title in dom
    assert "shown episodes (4)" in dom and "pass@1" in dom
    assert 'data-built="1"' in dom  # the episode named in the URL was opened and its turns built
    assert "turn 1 · reward" in dom and 'src="images/' in dom
    assert "pwned" not in dom.split("<body", 1)[0]  # the hostile text did not run
    assert '<img src="x"' not in dom and "&lt;/script&gt;&lt;img src=x" in dom
    shot = tmp_path / "page.png"
    headless(browser, tmp_path, "--window-size=1280,900", f"--screenshot={shot}", url)
    assert shot.stat().st_size > 10_000
