"""The inspection page: its index and page files, escaping of model text, and a real headless
Chromium running its JS from disk."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from boxgym.rollouts.commands import main as run_verbs
from boxgym.rollouts.metrics import summarize
from boxgym.rollouts.store import read_episodes
from boxgym.rollouts.viewer import PAGE_DIR, PageIndex, index_entry, write_index, write_run_page

REPO = Path(__file__).resolve().parents[2]

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


def test_model_text_cannot_break_out_of_the_data_block(tmp_path: Path) -> None:
    episodes = [hostile_episode()]
    write_index(tmp_path, episodes, summarize(episodes), title="t <b>")
    page = (tmp_path / "index.html").read_text()
    data = page.split('<script type="application/json" id="boxgym-data">', 1)[1].split(
        "</script>", 1
    )[0]
    assert "<" not in data and ">" not in data and "evil\\u003c/script\\u003e" in data
    assert "<title>t &lt;b&gt;</title>" in page
    assert "innerHTML" not in page  # the page only ever sets textContent
    stored = (tmp_path / "pages" / "0000.js").read_text()
    assert "<" not in stored and ">" not in stored and "\u2028" not in stored
    assert "\\u003c/script\\u003e\\u003cimg src=x" in stored


def read_page(run_dir: Path) -> tuple[dict, list[list[dict]]]:
    """The index block of `index.html` and the episodes of each page file, checked as the page's
    loader reads them: file `pages/%04d.js` for page p, calling boxgymPage(token, p, [...])."""
    html = (run_dir / "index.html").read_text()
    block = html.split('<script type="application/json" id="boxgym-data">', 1)[1]
    data = json.loads(block.split("</script>", 1)[0])
    script = html.split('<script>\n"use strict";', 1)[1]
    # the loader's file names: DATA.page_dir + "/" + p padded to 4 digits + ".js"
    assert '(DATA.page_dir || "pages") + "/" + String(p).padStart(4, "0") + ".js"' in script
    assert 'document.createElement("script")' in script and "fetch(pageSrc" not in script
    files = sorted((run_dir / data["page_dir"]).iterdir())
    assert [f.name for f in files] == [f"{p:04d}.js" for p in range(len(data["pages"]))]
    pages = []
    for p, path in enumerate(files):
        text = path.read_text()
        call = re.fullmatch(r"boxgymPage\((\"[0-9a-f]+\"),(\d+),(\[.*\])\);\n", text, re.S)
        assert call, text[:200]
        assert json.loads(call[1]) == data["token"] and int(call[2]) == p
        pages.append(json.loads(call[3]))
    assert [len(page) for page in pages] == data["pages"]
    return data, pages


def assert_pages_match_index(run_dir: Path) -> list[dict]:
    """Every episode of the index is in exactly one page file, at its place in index order."""
    data, pages = read_page(run_dir)
    stored = [episode for page in pages for episode in page]
    assert [e["key"] for e in data["episodes"]] == [
        {"task_id": ep["key"]["task_id"], "sample": ep["key"]["sample"]} for ep in stored
    ]
    assert len({(e["key"]["task_id"], e["key"]["sample"]) for e in data["episodes"]}) == len(stored)
    for entry, episode in zip(data["episodes"], stored):
        assert entry == json.loads(json.dumps(index_entry(episode)))
    return stored


def run_episodes(out: Path, *extra: str) -> None:
    argv = ["episodes", "--scene", "all", "--policy", "noisy", "--no-progress", "--out", str(out)]
    assert run_verbs([*argv, *extra]) == 0


def renamed(record: dict, i: int, text: str = "") -> dict:
    """A copy of a stored record under task id `t<i>` (its first assistant text padded by `text`)."""
    record = copy.deepcopy(record)
    record["key"] = {"task_id": f"t{i}", "task_index": i, "sample": 0}
    record["task"]["id"] = f"t{i}"
    record["turns"][0]["assistant"] += text
    return record


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One stored episode record (with tool images and their recipes)."""
    run = tmp_path_factory.mktemp("source") / "run"
    run_episodes(run, "--n", "1")
    return read_episodes(run).episodes[0]


def test_index_stays_small_whatever_the_episode_size(tmp_path: Path, record: dict) -> None:
    small = [renamed(record, i) for i in range(40)]
    large = [renamed(record, i, "x" * 50_000) for i in range(40)]
    sizes = {}
    for name, episodes in (("small", small), ("large", large)):
        out = tmp_path / name
        out.mkdir()
        write_index(out, episodes, summarize(small), title="t")
        sizes[name] = (out / "index.html").stat().st_size
        entries = PageIndex()
        for episode in episodes:
            entries.add(episode)
        assert all(len(entry) < 500 for entry in entries.entries)  # bytes per episode
        assert_pages_match_index(out)
    assert sizes["small"] == sizes["large"]  # the index does not grow with the episodes
    # the large episodes went to page files of a few MB, not into index.html
    assert len(list((tmp_path / "large" / PAGE_DIR).iterdir())) == 1
    assert (tmp_path / "large" / PAGE_DIR / "0000.js").stat().st_size > 40 * 50_000


def test_pages_are_bounded_cover_every_episode_once_and_replace_the_last_write(
    tmp_path: Path, record: dict
) -> None:
    episodes = [renamed(record, i, "y" * (i * 500)) for i in range(30)]
    limit = 60_000
    lines = [json.dumps(e, separators=(",", ":")) for e in episodes]

    def write(n: int) -> None:
        index = PageIndex()
        for episode in episodes[:n]:
            index.add(episode)
        write_run_page(tmp_path, {}, iter(lines[:n]), index, title="t", page_bytes=limit)

    (tmp_path / f"{PAGE_DIR}.tmp-dead").mkdir()  # left by a killed write
    write(30)
    data, pages = read_page(tmp_path)
    assert len(pages) > 3 and sum(data["pages"]) == 30
    for path, page in zip(sorted((tmp_path / PAGE_DIR).iterdir()), pages):
        assert len(page) == 1 or path.stat().st_size <= limit + 100
    assert assert_pages_match_index(tmp_path) == episodes
    first = data["token"]
    write(4)  # fewer episodes: no page file of the first write is left
    data, pages = read_page(tmp_path)
    assert data["token"] != first and sum(data["pages"]) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", PAGE_DIR]
    index = PageIndex()
    index.add(episodes[0])
    with pytest.raises(RuntimeError, match="page index has 1 entries for 2 stored lines"):
        write_run_page(tmp_path, {}, iter(lines[:2]), index, title="t")
    assert read_page(tmp_path)[0]["token"] == data["token"]  # the failed write changed nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", PAGE_DIR]


def test_resumed_and_sharded_runs_keep_the_index_in_step_with_the_pages(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_episodes(run, "--n", "5", "--group-size", "2")
    lines = (run / "episodes.jsonl").read_text().splitlines(keepends=True)
    # an interrupted run: 4 of 10 episodes, a bad line and a key stored twice among them
    (run / "episodes.jsonl").write_text("".join([*lines[:2], "not json\n", lines[0], *lines[2:4]]))
    run_episodes(run, "--n", "5", "--group-size", "2", "--resume")
    stored = assert_pages_match_index(run)
    assert len(stored) == 10
    sharded = tmp_path / "sharded"
    for shard in ("0/2", "1/2"):
        run_episodes(sharded, "--n", "5", "--group-size", "2", "--shard", shard)
    assert len(assert_pages_match_index(sharded)) == 10
    run_episodes(sharded, "--n", "5", "--group-size", "2", "--overwrite")
    assert len(assert_pages_match_index(sharded)) == 10


def test_view_rewrites_a_run_of_the_single_file_layout(tmp_path: Path) -> None:
    run = tmp_path / "old"
    run_episodes(run, "--n", "3", "--no-page")
    episodes = read_episodes(run).episodes
    # a record from before recipes: a bare "<sha>" task image stored as images/<sha>.png
    old = renamed(episodes[0], 99)
    old["task"]["images"] = ["ab" * 32]
    shutil.copy(next((run / "images").iterdir()), run / "images" / ("ab" * 32 + ".png"))
    with open(run / "episodes.jsonl", "a") as f:
        f.write(json.dumps(old) + "\n")
    # the page of that layout: every episode inside index.html, no pages/ folder
    (run / "index.html").write_text(
        '<script type="application/json" id="boxgym-data">{"episodes":['
        + ",".join(json.dumps(e) for e in [*episodes, old])
        + "]}</script>"
    )
    done = subprocess.run(
        [sys.executable, "-m", "boxgym.cli", "view", str(run)],
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "page: " in done.stdout
    stored = assert_pages_match_index(run)
    assert len(stored) == 4 and stored[-1] == old
    data, _ = read_page(run)
    assert data["episodes"][-1]["image"] == "ab" * 32  # the page adds ".png" to a bare sha


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


@pytest.mark.browser
def test_page_opens_episodes_from_their_page_files_in_headless_chromium(
    tmp_path: Path, record: dict
) -> None:
    browser = chromium_or_skip()
    episodes = [renamed(record, i) for i in range(250)]
    write_index(tmp_path, episodes, summarize(episodes), title="paged", page_bytes=200_000)
    _, pages = read_page(tmp_path)
    assert len(pages) >= 3
    wanted = "t230"  # not on the first list page in "task, sample" order (t0, t1, t10, t100, ...)
    position = sorted(f"t{i}" for i in range(250)).index(wanted)
    assert position >= 100
    page_of = next(
        p for p, page in enumerate(pages) if any(e["key"]["task_id"] == wanted for e in page)
    )
    assert page_of > 0
    url = (tmp_path / "index.html").resolve().as_uri() + f"#{wanted}%230"
    dom = headless(browser, tmp_path, "--dump-dom", url)
    assert 'data-ready="1"' in dom and "250 of 250 episodes shown" in dom
    assert f"list page {position // 100 + 1} of 3" in dom
    assert dom.count('class="episode"') == min(100, 250 - position // 100 * 100)  # one list page
    card = dom.split(f'data-key="{wanted}#0"', 1)[1].split('class="episode"', 1)[0]
    assert 'data-built="1"' in card and "turn 1 · reward" in card  # loaded from its page file
    assert "<svg" in card and 'href="images/' in card  # the recipe drawn over the task image
    (tmp_path / PAGE_DIR / f"{page_of:04d}.js").unlink()
    dom = headless(browser, tmp_path, "--dump-dom", url)
    card = dom.split(f'data-key="{wanted}#0"', 1)[1].split('class="episode"', 1)[0]
    assert f"could not load pages/{page_of:04d}.js beside this page" in card
