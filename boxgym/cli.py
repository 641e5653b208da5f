"""The `boxgym` command.

Each verb lives in the module that owns its domain; this file only lists them. A verb module
defines `add_arguments(parser)` and `run(args) -> int`, and must stay light at import time
(torch, transformers and TRL are imported inside `run`), so `boxgym --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "scenes": ("boxgym.data.preview", "Preview procedural scenes with their ground truth drawn."),
    "episodes": (
        "boxgym.rollouts.commands",
        "Run scripted-policy episodes and write an inspection page.",
    ),
    "rollout": (
        "boxgym.rollouts.commands",
        "Run a policy over N tasks x G samples; store episodes and metrics.",
    ),
    "eval": ("boxgym.rollouts.suites", "Run a fixed, seeded evaluation suite through a policy."),
    "view": (
        "boxgym.rollouts.commands",
        "(Re)write index.html and summary.json for a run directory.",
    ),
    "tiny-model": (
        "boxgym.models.commands",
        "Build a tiny Qwen2-VL: the random test model, or (--seeing) the one trained here.",
    ),
    "playground": (
        "boxgym.policies.playground",
        "Run one free-form prompt through a model; log it.",
    ),
    "data": ("boxgym.data.commands", "Browse dataset tasks: gallery, inspect, bookmarks."),
    "train": ("boxgym.train.commands", "Train LoRA adapters: `train sft` and `train grpo`."),
    "study": (
        "boxgym.studies.commands",
        "Run one research question's study: a table, a plot and a report with CIs.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="boxgym",
        description="boxgym: tools, environments, rollouts and training for multi-object counting with VLMs.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of a failure (also accepted after the verb)",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (module_name, help_text) in VERBS.items():
        verb_parser = sub.add_parser(verb, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(verb_parser, verb)
        verb_parser.set_defaults(_module=module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb. Any failure prints one line (cause and fix) and returns 2.

    `--debug` (anywhere on the line) or `BOXGYM_DEBUG=1` lets the traceback through instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("BOXGYM_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 0
    from boxgym.errors import report_failures

    return report_failures(lambda: importlib.import_module(args._module).run(args), debug=debug)


if __name__ == "__main__":
    sys.exit(main())
