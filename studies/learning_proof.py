"""The learning proof on the CPU: SFT until held-out episodes make valid tool calls, then GRPO.

1. SFT (`configs/proof_sft_tiny.yaml`) on scripted oracle/noisy episodes of easy shape scenes,
   in chunks of `--chunk` steps (resumed from the last checkpoint), until the adapter's valid-call
   rate on held-out scene seeds (never trained on) reaches `--target` or `--max-sft-steps` pass.
2. Evaluate the SFT adapter on the held-out evaluation seeds: reward, count accuracy, valid-call
   rate, with bootstrap 95% intervals (R's rollout runner + M's HFPolicy with the adapter).
3. GRPO (`configs/proof_grpo_tiny.yaml`) from that adapter for a fixed number of steps.
4. Evaluate the GRPO adapter on the same seeds; write `results.json` in the output directory.

    python studies/learning_proof.py --out runs/learning_proof

Numbers come from the runs, whatever they show; docs/learning_proof.md records them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("valid_call_rate", "reward", "count_accuracy", "answered", "calls", "success")


def evaluate(
    adapter: Path,
    env_section: Any,
    seeds: list[int],
    out: Path,
    temperature: float,
    max_new_tokens: int = 192,
) -> dict[str, Any]:
    """Roll the adapter out on scene `seeds` (one sample each); metric means with 95% CIs."""
    from boxgym.policies.hf import HFPolicy
    from boxgym.rollouts.metrics import bootstrap_mean_ci
    from boxgym.rollouts.runner import run_rollouts
    from boxgym.rollouts.store import EpisodeStore
    from boxgym.train.mixture import make_env, scene_task

    tasks = [scene_task(env_section, seed) for seed in seeds]
    policy = HFPolicy(
        adapter=str(adapter),
        device="cpu",
        dtype="float32",
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=8,
        seed=0,
    )
    store = EpisodeStore(out)
    started = time.time()
    run_rollouts(
        tasks, policy, lambda: make_env(env_section), store, group_size=1, seed=0, progress=False
    )
    records = [
        json.loads(line)
        for line in (out / "episodes.jsonl").read_text().splitlines()
        if line.strip()
    ]
    summary: dict[str, Any] = {"episodes": len(records), "seconds": round(time.time() - started, 1)}
    for name in METRICS:
        values = [r["metrics"].get(name) for r in records]
        summary[name] = bootstrap_mean_ci(values, seed=0)
    # Share of episodes whose first reply held at least one valid call.
    first_valid = [
        float(
            any(
                c.get("ok")
                for c in (r["turns"][0]["calls"] if r["turns"] else [])
                if isinstance(c, dict)
            )
        )
        for r in records
    ]
    summary["first_turn_valid_call"] = bootstrap_mean_ci(first_valid, seed=0)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/learning_proof", help="Output directory.")
    parser.add_argument("--chunk", type=int, default=50, help="SFT steps between held-out checks.")
    parser.add_argument("--max-sft-steps", type=int, default=300, help="SFT step budget.")
    parser.add_argument(
        "--target", type=float, default=0.95, help="Held-out valid-call rate to reach."
    )
    parser.add_argument("--check-tasks", type=int, default=10, help="Held-out tasks per SFT check.")
    parser.add_argument(
        "--eval-tasks",
        type=int,
        default=None,
        help="Held-out tasks before/after GRPO (default 30; with --model 128).",
    )
    parser.add_argument(
        "--grpo-steps",
        type=int,
        default=None,
        help="GRPO steps (fixed budget; default 8, or the seeing config's).",
    )
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="Evaluation sampling (0: greedy)."
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=192, help="Evaluation tokens per reply at most."
    )
    parser.add_argument(
        "--sft-only", action="store_true", help="Stop after the SFT checks (for quick trials)."
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="Continue the SFT from the last checkpoint in --out (its earlier checks are kept).",
    )
    parser.add_argument(
        "--grpo-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Extra override for the GRPO config (e.g. trainer.learning_rate=1e-4).",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Extra override for the SFT config (e.g. trainer.learning_rate=2e-2).",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="Run the proof on this model instead (`seeing`, or a seeing checkpoint's path): "
        "configs/proof_{sft,grpo}_seeing.yaml, fixed SFT and GRPO budgets, held-out count "
        "accuracy, enumeration F1, grounding F1, valid-call rate and reward before and after GRPO.",
    )
    parser.add_argument(
        "--sft-steps", type=int, default=None, help="With --model: SFT steps (default: config)."
    )
    args = parser.parse_args(argv)
    if args.eval_tasks is None:
        args.eval_tasks = 128 if args.model else 30
    if args.model:
        return run_seeing_proof(args)

    from boxgym.train.config import GRPORunConfig, SFTRunConfig, load_config
    from boxgym.train.grpo import run_grpo
    from boxgym.train.sft import run_sft

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"args": vars(args), "sft_checks": []}

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=2))

    sft_dir = out / "sft"
    steps = 0
    if args.resume:
        done = [int(path.name.split("-")[1]) for path in sft_dir.glob("checkpoint-*")]
        steps = max(done, default=0)
        if (out / "results.json").is_file():
            earlier = json.loads((out / "results.json").read_text())
            results["sft_checks"] = earlier.get("sft_checks", [])
    adapter = sft_dir / "adapter"
    check_seeds = list(range(300_000, 300_000 + args.check_tasks))
    evaluate_kw = {"temperature": args.temperature, "max_new_tokens": args.max_new_tokens}
    resume = args.resume and steps > 0
    while steps < args.max_sft_steps:
        steps = min(args.max_sft_steps, steps + args.chunk)
        config = load_config(
            SFTRunConfig,
            ROOT / "configs" / "proof_sft_tiny.yaml",
            # the study's own keys come last: --set cannot move the output or the step count
            list(args.set)
            + [
                f"trainer.output_dir={sft_dir}",
                f"trainer.max_steps={steps}",
                f"trainer.save_steps={args.chunk}",
            ]
            + (["resume_from_checkpoint=true"] if resume else []),
        )
        started = time.time()
        adapter = run_sft(config)
        resume = True
        check = evaluate(
            adapter, config.env, check_seeds, out / f"check_{steps:04d}", **evaluate_kw
        )
        check.update(sft_steps=steps, sft_seconds=round(time.time() - started, 1))
        results["sft_checks"].append(check)
        save()
        print(
            f"SFT {steps} steps: held-out valid-call rate {check['valid_call_rate']['mean']}",
            flush=True,
        )
        if (check["valid_call_rate"]["mean"] or 0.0) >= args.target:
            break
    results["sft_steps"] = steps
    results["sft_log"] = json.loads((sft_dir / "trainer_state.json").read_text())["log_history"]
    save()
    if args.sft_only:
        return 0

    eval_seeds = list(range(400_000, 400_000 + args.eval_tasks))
    config = load_config(
        GRPORunConfig,
        ROOT / "configs" / "proof_grpo_tiny.yaml",
        [
            *args.grpo_set,
            f"trainer.output_dir={out / 'grpo'}",
            f"trainer.max_steps={args.grpo_steps or 8}",
            f"init_adapter={adapter}",
        ],
    )
    results["before_grpo"] = evaluate(
        adapter, config.env, eval_seeds, out / "eval_sft", **evaluate_kw
    )
    save()
    started = time.time()
    grpo_adapter = run_grpo(config)
    results["grpo_seconds"] = round(time.time() - started, 1)
    results["grpo_log"] = json.loads((out / "grpo" / "trainer_state.json").read_text())[
        "log_history"
    ]
    results["after_grpo"] = evaluate(
        grpo_adapter, config.env, eval_seeds, out / "eval_grpo", **evaluate_kw
    )
    save()
    print(json.dumps({k: results[k] for k in ("before_grpo", "after_grpo")}, indent=2))
    return 0


def run_seeing_proof(args: argparse.Namespace) -> int:
    """SFT (fixed steps) then GRPO on a seeing model; writes `results.json` and `grpo.png`.

    The checkpoint alone is evaluated first (`results["base"]`), so what SFT adds is shown too.
    `results.json`: `{"sft": {...}, "grpo": {"before": {...}, "after": {...}}, ...}` with each
    held-out metric as `{"mean", "lo", "hi", "n"}`; `--resume` reuses finished stages.
    """
    import seeing_proof as sp

    from boxgym.models.cache import resolve_model
    from boxgym.train.grpo import run_grpo
    from boxgym.train.sft import run_sft

    model = resolve_model(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results: dict[str, Any] = {}
    if args.resume and results_file.is_file():
        results = json.loads(results_file.read_text())
    results["args"] = vars(args)
    results["model"] = model

    def save() -> None:
        results_file.write_text(json.dumps(results, indent=2))

    sft_config, grpo_config = sp.load_configs(
        model, out, args.sft_steps, args.grpo_steps, sft_extra=args.set, grpo_extra=args.grpo_set
    )
    seeds = sp.eval_seeds(args.eval_tasks)
    if "base" not in results:  # the checkpoint itself, before any of the proof's training
        base = sp.evaluate_tools(None, model, sft_config.env, seeds, out / "eval_base")
        results["base"] = sp.compact(base)
        results["base_rows"] = base["rows"]
        save()
        print("the checkpoint alone:", _headline(base), flush=True)
    sft_adapter = out / "sft" / "adapter"
    if not (sft_adapter / "adapter_config.json").is_file() or "sft" not in results:
        started = time.time()
        sft_adapter = run_sft(sft_config)
        results["sft"] = {
            "steps": sft_config.trainer["max_steps"],
            "seconds": round(time.time() - started),
            "log": json.loads((out / "sft" / "trainer_state.json").read_text())["log_history"],
        }
        save()
        print(f"SFT done in {results['sft']['seconds']} s", flush=True)
    results.setdefault("grpo", {})
    if "before" not in results["grpo"]:
        before = sp.evaluate_tools(sft_adapter, model, sft_config.env, seeds, out / "eval_sft")
        results["grpo"]["before"] = sp.compact(before)
        results["grpo"]["before_rows"] = before["rows"]
        results["sft"]["held_out"] = sp.compact(before)
        save()
        print("before GRPO:", _headline(before), flush=True)
    grpo_adapter = out / "grpo" / "adapter"
    if "after" not in results["grpo"]:
        started = time.time()
        grpo_adapter = run_grpo(grpo_config)
        results["grpo"]["steps"] = grpo_config.trainer["max_steps"]
        results["grpo"]["seconds"] = round(time.time() - started)
        results["grpo"]["curve"] = sp.grpo_curve(out / "grpo")
        after = sp.evaluate_tools(grpo_adapter, model, grpo_config.env, seeds, out / "eval_grpo")
        results["grpo"]["after"] = sp.compact(after)
        results["grpo"]["after_rows"] = after["rows"]
        save()
        print("after GRPO:", _headline(after), flush=True)
    sp.plot_grpo(results["grpo"]["curve"], out / "grpo.png")
    before, after = results["grpo"]["before"], results["grpo"]["after"]
    results["grpo"]["gain"] = {
        name: {
            "before": before[name]["mean"],
            "after": after[name]["mean"],
            "cis_disjoint": after[name]["lo"] > before[name]["hi"]
            or after[name]["hi"] < before[name]["lo"],
        }
        for name in sp.PROOF_METRICS
    }
    save()
    print(json.dumps(results["grpo"]["gain"], indent=1))
    return 0


def _headline(summary: dict[str, Any]) -> str:
    return ", ".join(
        f"{name} {summary[name]['mean']:.3f} [{summary[name]['lo']:.3f}, {summary[name]['hi']:.3f}]"
        for name in (
            "count_accuracy",
            "enumeration_f1",
            "grounding_f1",
            "valid_call_rate",
            "reward",
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
