"""Every figure the docs state traces to a committed result file.

- every `results/...` file a doc names exists, and every file in `results/` records the command,
  commit, checkpoint key and date that made it (`"not recorded"` where history lost one);
- every interval a doc states (`0.293 [0.238, 0.352]`) is found, to the digits shown, in a
  result file named in its section or in a section above it. Figures nothing backs are marked
  for the reader: a heading that says "no result file" covers its section and those below it, a
  paragraph that says it covers itself and the paragraph (a table) right after it.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
RESULTS = ROOT / "results"
PROVENANCE = ("command", "commit", "checkpoint", "date")

REFERENCE = re.compile(r"results/[\w.+-]+\.(?:json|md|csv)")
NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
INTERVAL = re.compile(rf"({NUMBER}) \[({NUMBER}), ({NUMBER})\]")
HEADING = re.compile(r"^(#{1,6}) ")
UNBACKED = "no result file"


def sections(text: str) -> list[tuple[str, list[str], bool]]:
    """Per section: its own text, the result files in force (its own references and its
    ancestors'), and whether its heading or an ancestor's says "no result file"."""
    blocks: list[tuple[int, list[str]]] = [(0, [])]
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else HEADING.match(line)
        if match:
            blocks.append((len(match.group(1)), [line]))
        else:
            blocks[-1][1].append(line)
    out = []
    ancestors: list[tuple[int, list[str], bool]] = []
    for level, lines in blocks:
        body = "\n".join(lines)
        while ancestors and level and ancestors[-1][0] >= level:
            ancestors.pop()
        refs = REFERENCE.findall(body)
        unbacked = UNBACKED in (lines[0].lower() if level else "")
        unbacked = unbacked or any(u for _, _, u in ancestors)
        out.append((body, [r for _, rs, _ in ancestors for r in rs] + refs, unbacked))
        ancestors.append((level, refs, unbacked))
    return out


def checked_paragraphs(body: str) -> list[str]:
    """The paragraphs whose figures must trace: not those that say "no result file", nor the
    one right after such a paragraph (a table it introduces)."""
    paragraphs = [p for p in re.split(r"\n\s*\n", body) if p.strip()]
    return [
        p
        for i, p in enumerate(paragraphs)
        if UNBACKED not in p.lower() and (i == 0 or UNBACKED not in paragraphs[i - 1].lower())
    ]


def intervals(data: object) -> list[tuple[float, float, float]]:
    """Every (mean, lo, hi) a result holds: `{"mean", "lo", "hi"}`, `{"mean", "ci95"}`, and the
    runner's `<metric>_mean/_lo/_hi` row columns."""
    found: list[tuple[float, float, float]] = []
    if isinstance(data, dict):
        mean = data.get("mean")
        if isinstance(mean, (int, float)):
            if isinstance(data.get("lo"), (int, float)) and isinstance(
                data.get("hi"), (int, float)
            ):
                found.append((mean, data["lo"], data["hi"]))
            ci = data.get("ci95")
            if (
                isinstance(ci, list)
                and len(ci) == 2
                and all(isinstance(v, (int, float)) for v in ci)
            ):
                found.append((mean, ci[0], ci[1]))
        for key, value in data.items():
            if isinstance(key, str) and key.endswith("_mean") and isinstance(value, (int, float)):
                stem = key.removesuffix("_mean")
                lo, hi = data.get(f"{stem}_lo"), data.get(f"{stem}_hi")
                if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
                    found.append((value, lo, hi))
            found += intervals(value)
    elif isinstance(data, list):
        for value in data:
            found += intervals(value)
    return found


def load_intervals(path: Path) -> list[tuple[float, float, float]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return intervals(json.loads(text))
    if path.suffix == ".csv":
        return intervals(list(csv.DictReader(text.splitlines())))
    return [tuple(parse(v) for v in m) for m in INTERVAL.findall(text)]  # markdown tables


def parse(text: str) -> float:
    return float(text.replace(",", ""))


def matches(stated: tuple[str, str, str], held: tuple[float, float, float]) -> bool:
    """Each stated number equals the held one rounded to the digits shown."""
    for text, value in zip(stated, held):
        digits = len(text.split(".")[1]) if "." in text else 0
        if abs(parse(text) - float(value)) > 0.5 * 10**-digits + 1e-9:
            return False
    return True


def cited_files() -> set[str]:
    return {ref for doc in DOCS for ref in REFERENCE.findall(doc.read_text(encoding="utf-8"))}


def test_every_cited_result_file_is_committed():
    missing = sorted(ref for ref in cited_files() if not (ROOT / ref).is_file())
    assert not missing, f"docs cite result files that do not exist: {missing}"


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_every_result_file_says_how_it_was_made(path):
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    lacking = [key for key in PROVENANCE if not data.get(key)]
    assert not lacking, f"{path.name} lacks {lacking} (write 'not recorded' where unknown)"


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.md")), ids=lambda p: p.name)
def test_every_result_table_says_how_it_was_made(path):
    text = path.read_text(encoding="utf-8")
    for key in PROVENANCE:
        assert re.search(rf"^- {key}: \S", text, re.MULTILINE), f"{path.name} lacks '- {key}:'"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_stated_interval_is_in_a_cited_result_file(doc):
    problems = []
    for body, refs, unbacked in sections(doc.read_text(encoding="utf-8")):
        stated = [t for p in checked_paragraphs(body) for t in INTERVAL.findall(p)]
        if not stated or unbacked:
            continue
        held = [
            i
            for ref in dict.fromkeys(refs)
            if (ROOT / ref).is_file()
            for i in load_intervals(ROOT / ref)
        ]
        title = body.splitlines()[0] if body else "(top)"
        if not refs:
            problems.append(f"{title}: {len(stated)} intervals and no result file cited")
            continue
        for triple in stated:
            if not any(matches(triple, h) for h in held):
                problems.append(f"{title}: {triple[0]} [{triple[1]}, {triple[2]}] not in {refs}")
    assert not problems, "\n".join(problems)
