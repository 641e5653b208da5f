"""`python -m boxgym.demo`: three scripted policies, one page per policy and a combined one."""

from __future__ import annotations

import json

from boxgym.demo import main


def test_demo_writes_pages_and_prints_the_table(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--n", "3", "--group-size", "1"]) == 0
    printed = capsys.readouterr().out
    for policy in ("oracle", "noisy", "random"):
        assert printed.count(policy) >= 2  # a table row and a page line
        summary = json.loads((out / policy / "summary.json").read_text())
        assert summary["episodes"] == 3
    assert "page (all policies)" in printed and (out / "index.html").exists()
    oracle = json.loads((out / "oracle" / "summary.json").read_text())
    assert oracle["metrics"]["count_accuracy"]["mean"] == 1.0
    page = (out / "index.html").read_text()
    assert '"page_base":"oracle/"' in page
    # Running it again replaces the previous demo.
    assert main(["--out", str(out), "--n", "1", "--group-size", "1"]) == 0
    assert json.loads((out / "noisy" / "summary.json").read_text())["episodes"] == 1
