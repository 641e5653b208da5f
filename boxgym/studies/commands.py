"""The `study` verb: `boxgym study --list`, `boxgym study NAME --model M --out DIR [--quick]`."""

from __future__ import annotations

import argparse
import contextlib
import shlex
from pathlib import Path

from boxgym.choices import DTYPES
from boxgym.errors import UserError, explain
from boxgym.output_dir import LOCK, MANIFEST, claim_folder, entries
from boxgym.studies import STUDIES, load_study
from boxgym.studies.base import SETTING_FLAGS, setting_name


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("name", nargs="?", help=f"The study: one of {', '.join(STUDIES)}.")
    parser.add_argument("--list", action="store_true", help="List the studies and their settings.")
    parser.add_argument(
        "--model",
        default=None,
        help='Checkpoint path, hub id (Qwen/Qwen2-VL-2B-Instruct), "seeing" (the tiny model '
        'trained here) or "tiny" (random weights; the default).',
    )
    parser.add_argument("--adapter", default=None, help="A PEFT LoRA adapter directory.")
    parser.add_argument("--out", default=None, help="Directory for the study's files.")
    parser.add_argument(
        "--quick", action="store_true", help="The small version (fewer scenes and conditions)."
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override a setting (YAML value; dotted keys reach nested ones), e.g. --set n=50 "
        "--set knobs.count=[1,3]. `--list` shows each study's settings.",
    )
    parser.add_argument("--device", default="auto", help='"auto", "cpu", "cuda", ...')
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="weights dtype (auto: bfloat16 on a capable GPU)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="Images per forward pass or decoding batch."
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace an earlier run of a study in --out (only the files it wrote are deleted).",
    )
    for flag, (kind, text) in SETTING_FLAGS.items():
        dest = f"flag_{setting_name(flag)}"
        help_text = f"{text}; the same as --set {setting_name(flag)}=... (studies with it)"
        if kind == "bool":
            parser.add_argument(flag, dest=dest, action="store_true", default=None, help=help_text)
        elif kind == "str_list":
            parser.add_argument(
                flag, dest=dest, action="append", metavar="KEY=VALUE", help=help_text
            )
        else:
            parser.add_argument(flag, dest=dest, type=int if kind == "int" else str, help=help_text)


def flag_values(args: argparse.Namespace) -> dict[str, object]:
    """The `SETTING_FLAGS` given on the command line: flag -> value."""
    given = {flag: getattr(args, f"flag_{setting_name(flag)}", None) for flag in SETTING_FLAGS}
    return {flag: value for flag, value in given.items() if value is not None}


def list_studies() -> str:
    """One block per study: name, question, factors and default settings."""
    lines = []
    for name in STUDIES:
        study = load_study(name)
        lines.append(f"{name}")
        lines.append(f"    {study.question}")
        lines.append(f"    varies: {', '.join(study.factors)}")
        settings = ", ".join(f"{k}={v!r}" for k, v in study.defaults.items())
        lines.append(f"    settings: {settings}")
        quick = ", ".join(f"{k}={v!r}" for k, v in study.quick.items())
        lines.append(f"    --quick: {quick}")
    return "\n".join(lines)


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, for the report."""
    parts = ["boxgym", "study", args.name]
    for flag in ("model", "adapter", "out"):
        if getattr(args, flag):
            parts += [f"--{flag}", str(getattr(args, flag))]
    if args.quick:
        parts.append("--quick")
    for item in args.overrides:
        parts += ["--set", item]
    for flag, value in flag_values(args).items():
        if value is True:
            parts.append(flag)
            continue
        for item in value if isinstance(value, list) else [value]:
            parts += [flag, str(item)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    """List the studies, or run one into --out.

    Everything that can be checked before measuring is checked before --out is made; --out is
    then held (`boxgym.output_dir`): a folder holding anything but an earlier study is refused,
    an earlier study is replaced only with --overwrite, and a study that fails before writing
    its files removes the folder it made. `--debug` (handled by `boxgym.cli`) shows the
    traceback of a failure.
    """
    if args.list:
        print(list_studies())
        return 0
    if not args.name:
        raise UserError(
            "name a study (boxgym study NAME --out DIR); `boxgym study --list` lists them"
        )
    if not args.out:
        raise UserError(f"--out DIR is required (where {args.name}'s files go)")
    if not 1 <= args.batch_size <= 4096:
        raise UserError(f"--batch-size must be between 1 and 4096, got {args.batch_size}")
    from boxgym.studies.base import resolve_settings
    from boxgym.studies.lab import Lab
    from boxgym.studies.runner import OUTPUT_FILES, run_study

    try:
        study = load_study(args.name)
        flags = flag_values(args)
        settings = resolve_settings(study, args.quick, args.overrides, flags)  # fail before loading
    except (ValueError, LookupError) as error:
        raise UserError(f"study {args.name}: {explain(error)}") from error
    out = Path(args.out)
    made = not out.exists()
    with claim_folder(out, "study", overwrite=args.overwrite) as folder:
        folder.add([*OUTPUT_FILES, "examples.jsonl"])
        try:
            lab = Lab(
                model=args.model,
                adapter=args.adapter,
                device=args.device,
                dtype=args.dtype,
                batch_size=args.batch_size,
                max_new_tokens=int(settings.get("max_new_tokens", 32)),
            )
            command = command_line(args)
            result = run_study(
                study,
                lab,
                out,
                quick=args.quick,
                overrides=args.overrides,
                flags=flags,
                command=command,
            )
        except Exception as error:
            if made:
                _remove_if_unused(out)
            raise UserError(f"study {args.name}: {explain(error)}") from error
    print(f"{args.name}: {len(result['rows'])} conditions in {result['seconds']:.0f} s -> {out}")
    if result.get("notes"):
        print(result["notes"])
    for name in ("results.csv", "plot.png", "report.md", "results.json"):
        print(f"  {out}/{name}")
    return 0


def _remove_if_unused(out: Path) -> None:
    """Remove the folder this command made when nothing but its bookkeeping is in it."""
    if entries(out):
        return
    for name in (MANIFEST, LOCK):
        (out / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        out.rmdir()
