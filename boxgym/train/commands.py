"""The `train` verb: `boxgym train sft --config FILE` and `boxgym train grpo --config FILE`.

Light at import: TRL, transformers and torch load inside `run`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

_DESCRIPTIONS = {
    "sft": "Supervised warm start of a LoRA adapter on the mixture (scripted tool-use episodes "
    "and dataset tasks, run through the env). Writes TensorBoard logs to OUTPUT_DIR/runs, "
    "checkpoints to OUTPUT_DIR/checkpoint-N and the adapter to OUTPUT_DIR/adapter.",
    "grpo": "GRPO on a LoRA adapter with the env behind TRL's environment_factory (tool calls run "
    "on the env's toolbox, tool images fed back, the env's reward). Writes TensorBoard logs, "
    "checkpoints and OUTPUT_DIR/adapter.",
}


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    sub = parser.add_subparsers(dest="train_command", metavar="{sft,grpo}")
    for name, description in _DESCRIPTIONS.items():
        command = sub.add_parser(
            name,
            help=description.split(".")[0] + ".",
            description=description,
            epilog="Config keys (YAML sections; override any with --set section.key=value):\n"
            "  model, lora, env, " + ("mixture" if name == "sft" else "tasks") + ", init_adapter, "
            "resume_from_checkpoint, trainer (passed to trl."
            + ("SFTConfig" if name == "sft" else "GRPOConfig")
            + ").\nSee --help-config for every key, and configs/*.yaml for examples.",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_argument(
            "--config", metavar="FILE", help=f"YAML run config (configs/{name}_tiny.yaml, ...)."
        )
        command.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="Override a config key, dotted, value parsed as YAML; repeatable. "
            "E.g. --set trainer.max_steps=5 --set lora.rank=16",
        )
        command.add_argument("--output-dir", help="Shortcut for --set trainer.output_dir=DIR.")
        command.add_argument(
            "--run-dir",
            help="One run's folder: sft writes RUN_DIR/sft, grpo writes RUN_DIR/grpo starting "
            "from RUN_DIR/sft/adapter (shortcut for --set run_dir=DIR).",
        )
        command.add_argument(
            "--resume", action="store_true", help="Resume from the latest checkpoint in output_dir."
        )
        command.add_argument(
            "--help-config",
            action="store_true",
            help="List every config key with its help, then exit.",
        )
        command.add_argument(
            "--dry-run",
            action="store_true",
            help="Parse and validate the config, print it, and exit.",
        )


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from boxgym.train.config import check_trainer_section, describe, load_config
    from boxgym.train.run_configs import GRPORunConfig, SFTRunConfig

    command = getattr(args, "train_command", None)
    if command not in ("sft", "grpo"):
        print(
            "usage: boxgym train {sft,grpo} --config FILE  (see boxgym train sft --help)",
            file=sys.stderr,
        )
        return 2
    config_cls = SFTRunConfig if command == "sft" else GRPORunConfig
    if args.help_config:
        print("\n".join(describe(config_cls)))
        return 0
    overrides = list(args.overrides)
    if args.run_dir:  # the run folder decides where this step writes and what GRPO starts from
        overrides.append(f"run_dir={args.run_dir}")
        overrides.append(f"trainer.output_dir={Path(args.run_dir) / command}")
        if command == "grpo":
            overrides.append(f"init_adapter={Path(args.run_dir) / 'sft' / 'adapter'}")
    if args.output_dir:
        overrides.append(f"trainer.output_dir={args.output_dir}")
    if args.resume:
        overrides.append("resume_from_checkpoint=true")
    config = load_config(config_cls, args.config, overrides)
    try:
        check_trainer_section(config)  # trainer keys and types against TRL's own config
    except ImportError:
        if not args.dry_run:
            raise
        print("note: trl is not installed, so trainer.* was not checked", file=sys.stderr)
    if args.dry_run:
        print(json.dumps(dataclasses.asdict(config), indent=2, default=str))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with hold_output_dir(Path(config.trainer["output_dir"])):  # before the slow imports
        if command == "sft":
            from boxgym.train.sft import run_sft as train
        else:
            from boxgym.train.grpo import run_grpo as train
        adapter = train(config)
    print(f"adapter: {adapter}")
    return 0


@contextlib.contextmanager
def hold_output_dir(out: Path) -> Iterator[None]:
    """Hold `trainer.output_dir` for one training: a path that is a file is refused, and so is
    a second training (or another boxgym command) writing the same folder. Of the processes of
    one distributed training, the main one (rank 0) holds it."""
    from boxgym.errors import UserError
    from boxgym.locks import RunLock, RunLockedError
    from boxgym.output_dir import LOCK, check_out_path

    check_out_path(out, "trainer.output_dir")
    if int(os.environ.get("RANK", "0") or 0) != 0:  # `accelerate launch`: the main process holds it
        yield
        return
    lock = RunLock(out, file=LOCK)
    try:
        lock.acquire()
    except RunLockedError as error:
        raise UserError(
            f"another boxgym command is writing to {out} (process id in {lock.path}); wait for "
            "it to finish, or give this training another output folder (--output-dir)"
        ) from error
    try:
        if lock.took_over:
            print(lock.took_over, file=sys.stderr)
        yield
    finally:
        lock.release()
