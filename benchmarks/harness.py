"""The benchmark harness: children run from a checkout, pinned to cores and timed.

A benchmark compares runs made side by side on one machine: each is a child process started
from a checkout (this one, or the code before a change given by `--base`) with that checkout's
imports and one OpenMP thread, optionally pinned to some cores; its CPU time is the child's
user+system time (its own children included), its memory the peak RSS. Alongside: the CPU time
of a run's own process without its workers, episodes compared apart from timing and storage,
a bootstrap interval of a median, and headless Chromium's time to load a page.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_child(
    args: list[str], root: Path, cores: set[int] | None = None, stderr: int = subprocess.DEVNULL
) -> subprocess.Popen:
    """`python ARGS` from `root` with this checkout's imports and one OpenMP thread, its output
    dropped; `cores`: the CPUs it (and every process and thread it starts) may run on."""
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        preexec_fn=None if cores is None else (lambda: os.sched_setaffinity(0, cores)),
    )


def run_child(
    argv: list[str], root: Path, cores: set[int] | None = None
) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, peak RSS in KB) of `python -m boxgym.cli ARGV` from `root`;
    `cores`: the CPUs the child (and every process and thread it starts) may run on."""
    start = time.perf_counter()
    proc = start_child(["-m", "boxgym.cli", *argv], root, cores, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv} failed: {proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    return usage.ru_utime + usage.ru_stime, wall, usage.ru_maxrss


def run_children(runs: list[tuple[list[str], set[int] | None]], root: Path) -> tuple[float, float]:
    """(summed CPU seconds, wall seconds until the last ends) of `python -m boxgym.cli ARGV`
    children started together, each on its own `cores` (None: any)."""
    start = time.perf_counter()
    procs = [start_child(["-m", "boxgym.cli", *argv], root, cores) for argv, cores in runs]
    cpu = 0.0
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{proc.args} failed")
        cpu += usage.ru_utime + usage.ru_stime
    return cpu, time.perf_counter() - start


def without_storage(record: dict) -> dict:
    """A record without its timing and storage fields (image references, recipes, run name)."""

    def strip(value: object) -> object:
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if key in ("timing", "recipe", "run"):
                    continue
                if key == "image" and isinstance(item, str):
                    continue
                if key == "images" and isinstance(item, list):
                    continue
                out[key] = strip(item)
            return out
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(record)  # type: ignore[return-value]


def same_episodes(a: Path, b: Path) -> bool:
    def load(path: Path) -> list[str]:
        text = path.read_text(encoding="utf-8").splitlines()
        return sorted(
            json.dumps(without_storage(json.loads(line)), sort_keys=True) for line in text
        )

    return load(a) == load(b)


# Runs `boxgym.cli` in-process and prints the process's own CPU seconds (not its workers') last.
_OWN_CPU = """
import resource, sys
from boxgym.cli import main
code = main(sys.argv[1:])
own = resource.getrusage(resource.RUSAGE_SELF)
print(f"own-cpu {own.ru_utime + own.ru_stime:.3f}", file=sys.stderr)
sys.exit(code)
"""


def own_cpu(argv: list[str], root: Path) -> float:
    """CPU seconds of the run's own process alone, without its worker processes."""
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _OWN_CPU, *argv],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
    )
    return float(done.stderr.strip().splitlines()[-1].split()[1])


def median_interval(values, rng, draws: int = 10_000) -> tuple[float, float, float]:
    """The median of `values` and a bootstrap 95% interval of it (`draws` resamples)."""
    import numpy as np

    values = np.asarray(values)
    boot = np.median(rng.choice(values, (draws, len(values))), axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(np.median(values)), float(low), float(high)


def chromium_seconds(browser: str, url: str, work: Path) -> tuple[float, str]:
    """Wall seconds of headless Chromium loading `url`, running its script and dumping the DOM."""
    shutil.rmtree(work / "profile", ignore_errors=True)
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={work / 'profile'}", "--virtual-time-budget=60000", "--dump-dom", url,
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    return time.perf_counter() - start, done.stdout
