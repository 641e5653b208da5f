"""`learning-proof`: does GRPO with the env's reward make the model count better?

Three stages on one model, each scored on the same held-out scenes by greedy tool-use episodes
through the rollout runner (`boxgym.studies.episodes`, in the GRPO config's env):

1. `base`: the checkpoint alone;
2. `sft`: after SFT from `sft_config` (scripted oracle episodes) for `sft_steps`;
3. `grpo`: after GRPO from `grpo_config` (the env's reward through TRL's `environment_factory`)
   for `grpo_steps`, starting from the SFT adapter.

Seeds are disjoint by construction and checked: SFT scenes from the SFT config's
`mixture.first_scene_seed`, GRPO scenes from the GRPO config's `tasks.first_seed`, held-out
scenes from `eval_seed_base`. An episode with no call, or no answer, scores 0 on the metrics it
lacks (every held-out episode counts).

`results.json` holds, beside the runner's rows, `{"base": {...}, "sft": {...}, "grpo": {"before":
{...}, "after": {...}, ...}}`: each held-out metric as `{"mean", "lo", "hi", "n"}` under its name,
and the same per true count under `by_true_count`. `plot.png` is the GRPO training reward per
step with the held-out figures before and after. The stages save their progress in the output
folder (`progress.json`, adapters, episodes); `--resume` continues a killed run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from boxgym.studies.base import Study, StudyOutput

STAGES = ("base", "sft", "grpo")
# The held-out metrics of the proof, in table order.
METRICS = (
    "count_accuracy",
    "enumeration_f1",
    "grounding_f1",
    "valid_call_rate",
    "reward",
    "tool_calls_per_episode",
    "episodes_that_box",
    "answered",
)
ZERO_WHEN_MISSING = ("count_accuracy", "enumeration_f1", "grounding_f1", "valid_call_rate")
REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULTS: dict[str, Any] = {
    "sft_config": "configs/proof_sft_seeing.yaml",
    "grpo_config": "configs/proof_grpo_seeing.yaml",
    "sft_set": [],
    "grpo_set": [],
    "sft_steps": None,
    "grpo_steps": None,
    "eval_tasks": 256,
    "eval_seed_base": 400_000,
    "max_new_tokens": 480,
    "resume": False,
}
# Seconds on the tiny model: a handful of scenes of 1-2 objects, two SFT steps, one GRPO step.
QUICK_KNOBS = "{count: [1, 2], object_size: [2, 3], image_size: 224, distractors: 0, grid: random}"
QUICK: dict[str, Any] = {
    "sft_set": [
        f"env.scene_knobs={QUICK_KNOBS}",
        "mixture.num_examples=4",
        "trainer.per_device_train_batch_size=2",
        "trainer.report_to=[]",
    ],
    "grpo_set": [
        f"env.scene_knobs={QUICK_KNOBS}",
        "tasks.num_tasks=2",
        "trainer.per_device_train_batch_size=2",
        "trainer.num_generations=2",
        "trainer.max_completion_length=24",
        "trainer.report_to=[]",
    ],
    "sft_steps": 2,
    "grpo_steps": 1,
    "eval_tasks": 4,
    "max_new_tokens": 24,
}


def config_path(name: str) -> Path:
    """A config file: as given (from the current folder), else from the boxgym checkout."""
    path = Path(name).expanduser()
    if path.is_file() or path.is_absolute():
        return path
    return REPO_ROOT / path


def load_configs(settings: dict[str, Any], model: str, out: Path) -> tuple[Any, Any]:
    """The SFT and GRPO run configs, pointed at `model` and at `out`'s `sft/` and `grpo/`."""
    from boxgym.train.config import load_config
    from boxgym.train.run_configs import GRPORunConfig, SFTRunConfig

    sft = [*settings["sft_set"], f"model.path={model}", f"trainer.output_dir={out / 'sft'}"]
    grpo = [
        *settings["grpo_set"],
        f"model.path={model}",
        f"trainer.output_dir={out / 'grpo'}",
        f"init_adapter={out / 'sft' / 'adapter'}",
    ]
    if settings["sft_steps"] is not None:
        sft.append(f"trainer.max_steps={int(settings['sft_steps'])}")
    if settings["grpo_steps"] is not None:
        grpo.append(f"trainer.max_steps={int(settings['grpo_steps'])}")
    return (
        load_config(SFTRunConfig, config_path(settings["sft_config"]), sft),
        load_config(GRPORunConfig, config_path(settings["grpo_config"]), grpo),
    )


def eval_seeds(settings: dict[str, Any]) -> list[int]:
    first = int(settings["eval_seed_base"])
    return list(range(first, first + int(settings["eval_tasks"])))


def check_seeds(sft_config: Any, grpo_config: Any, seeds: list[int]) -> None:
    """Refuse settings whose SFT, GRPO and held-out scene seeds overlap."""
    mixture = sft_config.mixture
    ranges = {
        "SFT": (
            mixture.first_scene_seed,
            mixture.first_scene_seed + 20 * mixture.num_examples + 100,
        ),
        "GRPO": (
            grpo_config.tasks.first_seed,
            grpo_config.tasks.first_seed + grpo_config.tasks.num_tasks,
        ),
        "held-out": (seeds[0], seeds[-1] + 1),
    }
    names = list(ranges)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            (a0, a1), (b0, b1) = ranges[a], ranges[b]
            if a0 < b1 and b0 < a1:
                raise ValueError(
                    f"{a} scene seeds {a0}-{a1 - 1} overlap the {b} seeds {b0}-{b1 - 1}; move "
                    "eval_seed_base, mixture.first_scene_seed or tasks.first_seed apart"
                )


class Progress:
    """`progress.json` in the output folder: the settings and what each finished stage left."""

    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        self.path = out / "progress.json"
        self.settings = {k: v for k, v in settings.items() if k != "resume"}
        if self.path.is_file():
            if not settings["resume"]:
                raise ValueError(
                    f"{out} already holds a learning proof ({self.path.name}); pass --resume to "
                    "continue it, or choose another --out"
                )
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            changed = sorted(
                k
                for k in {*saved["settings"], *self.settings}
                if saved["settings"].get(k) != self.settings.get(k)
            )
            if changed:
                raise ValueError(
                    f"--resume with other settings than the run in {out} ({', '.join(changed)}); "
                    "repeat its settings or choose another --out"
                )
            self.stages: dict[str, Any] = saved["stages"]
        else:
            self.stages = {}
            self.save()

    def save(self) -> None:
        data = {"settings": self.settings, "stages": self.stages}
        self.path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def stage_lab(lab: Any, adapter: Path | None) -> Any:
    """A Lab like `lab` with `adapter` (None: `lab` itself)."""
    from boxgym.studies.lab import Lab

    if adapter is None:
        return lab
    return Lab(
        model=lab.model_name,
        adapter=str(adapter),
        device=lab.device,
        dtype=lab.dtype,
        batch_size=lab.batch_size,
        max_new_tokens=lab.max_new_tokens,
    )


def held_out(
    lab: Any, stage: str, tasks: list[Any], env_section: Any, out: Path
) -> list[dict[str, Any]]:
    """The stage's greedy episodes on the held-out tasks, one record each."""
    from boxgym.rollouts.store import EpisodeStore
    from boxgym.studies.episodes import episode_metrics, play_episodes
    from boxgym.train.mixture import make_env

    episodes = play_episodes(
        lab.policy,
        tasks,
        lambda: make_env(env_section),
        EpisodeStore(out / "episodes" / stage),
        seed=0,
        batch_size=lab.batch_size,
        run_name=f"learning-proof-{stage}",
    )
    records = []
    for episode in episodes:
        record = {"stage": stage, **episode_metrics(episode)}
        for name in ZERO_WHEN_MISSING:
            record[name] = record[name] or 0.0
        records.append(record)
    return records


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Each metric as `{"mean", "lo", "hi", "n"}`, overall and under `by_true_count`."""
    from boxgym.studies.runner import aggregate

    def cells(row: dict[str, Any]) -> dict[str, Any]:
        return {
            m: {"mean": row[f"{m}_mean"], "lo": row[f"{m}_lo"], "hi": row[f"{m}_hi"], "n": row["n"]}
            for m in METRICS
        }

    (overall,) = aggregate(records, (), METRICS)
    by_count = aggregate(records, ("true_count",), METRICS)
    return {
        "episodes": len(records),
        **cells(overall),
        "by_true_count": {str(row["true_count"]): cells(row) for row in by_count},
    }


def grpo_curve(grpo_dir: Path) -> list[dict[str, Any]]:
    """Per GRPO step, from the trainer's log: the sampled episodes' mean reward, its spread, the
    share of groups with one reward, and their count accuracy where logged."""
    state = json.loads((grpo_dir / "trainer_state.json").read_text(encoding="utf-8"))
    return [
        {
            "step": entry["step"],
            "reward": entry["reward"],
            "reward_std": entry.get("reward_std"),
            "frac_reward_zero_std": entry.get("frac_reward_zero_std"),
            "count_accuracy": entry.get("rollout/count_accuracy"),
        }
        for entry in state["log_history"]
        if "step" in entry and "reward" in entry
    ]


def run_stage_training(
    stage: str,
    config: Any,
    progress: Progress,
    out: Path,
    train: Callable[[Any], Path] | None = None,
) -> Path:
    """Train `stage` ("sft" or "grpo") with `config` unless progress says it finished; its
    adapter. `train` (config -> adapter) replaces `run_sft` / `run_grpo`."""
    from boxgym.train.grpo import run_grpo
    from boxgym.train.sft import run_sft

    done = progress.stages.get(stage)
    if done:
        return Path(done["adapter"])
    folder = out / stage
    if any(folder.glob("checkpoint-*")):
        config.resume_from_checkpoint = True
    started = time.perf_counter()
    train = train or (run_sft if stage == "sft" else run_grpo)
    adapter = train(config)
    log = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]
    progress.stages[stage] = {
        "adapter": str(adapter),
        "steps": int(config.trainer["max_steps"]),
        "seconds": round(time.perf_counter() - started, 1),
        "log": log,
    }
    progress.save()
    return adapter


def run_proof(
    lab: Any, settings: dict[str, Any], out: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The three stages into `out`; (one record per held-out episode and stage, the sections)."""
    from boxgym.models.cache import resolve_model
    from boxgym.train.mixture import scene_task

    if lab.adapter:
        raise ValueError("learning-proof trains its own adapters from the model; drop --adapter")
    model = resolve_model(lab.model_name)
    sft_config, grpo_config = load_configs(settings, model, out)
    seeds = eval_seeds(settings)
    check_seeds(sft_config, grpo_config, seeds)
    progress = Progress(out, settings)
    tasks = [scene_task(grpo_config.env, seed) for seed in seeds]
    records = held_out(lab, "base", tasks, grpo_config.env, out)
    sft_adapter = run_stage_training("sft", sft_config, progress, out)
    records += held_out(stage_lab(lab, sft_adapter), "sft", tasks, grpo_config.env, out)
    grpo_adapter = run_stage_training("grpo", grpo_config, progress, out)
    records += held_out(stage_lab(lab, grpo_adapter), "grpo", tasks, grpo_config.env, out)
    by_stage = {s: summarise([r for r in records if r["stage"] == s]) for s in STAGES}
    before, after = by_stage["sft"], by_stage["grpo"]
    sections = {
        "base": {"held_out": by_stage["base"]},
        "sft": {**_training(progress.stages["sft"]), "held_out": before},
        "grpo": {
            **_training(progress.stages["grpo"]),
            "curve": grpo_curve(out / "grpo"),
            "reward_range": list(reward_range(grpo_config.env)),
            "temperature": grpo_config.trainer.get("temperature"),
            "before": before,
            "after": after,
            "gain": {
                m: {
                    "before": before[m]["mean"],
                    "after": after[m]["mean"],
                    "separated": after[m]["lo"] > before[m]["hi"]
                    or after[m]["hi"] < before[m]["lo"],
                }
                for m in METRICS
            },
        },
        "seeds": {
            "sft_first": sft_config.mixture.first_scene_seed,
            "grpo_first": grpo_config.tasks.first_seed,
            "held_out": [seeds[0], seeds[-1]],
        },
    }
    return records, sections


def _training(stage: dict[str, Any]) -> dict[str, Any]:
    return {k: stage[k] for k in ("steps", "seconds", "log")}


def reward_range(env_section: Any) -> tuple[float, float]:
    """The lowest and highest reward a counting episode can get in this env: every penalty at
    its cap, and every scoring component full."""
    from boxgym.env.rewards import PENALTIES

    config = env_section.env_config().reward
    on = set(config.components)
    low = -sum(getattr(config, f"{p}_cap") for p in PENALTIES if p in on)
    scoring = ("count_exact", "enumeration_f1", "grounding_f1", "format", "tool_bonus")
    return low, sum(getattr(config, c) for c in scoring if c in on)


def majority_share(counts: list[int]) -> float:
    """The accuracy of always answering the most common of `counts`."""
    return max(counts.count(c) for c in set(counts)) / len(counts)


def plotter(sections: dict[str, Any], majority: float, rewards: list[float]) -> Any:
    """Draws the GRPO training curve with the held-out figures before (step 0) and after, on
    the whole range of each quantity (`rewards`: the env's lowest and highest reward)."""

    def plot(fig: Any, rows: list[dict[str, Any]]) -> None:
        from matplotlib.ticker import MaxNLocator

        curve = sections["grpo"]["curve"]
        steps = [c["step"] for c in curve]
        last = max(steps, default=sections["grpo"]["steps"])
        panels = (
            ("reward", "env reward (per episode)"),
            ("count_accuracy", "count accuracy (share of episodes)"),
        )
        for i, (metric, label) in enumerate(panels):
            ax = fig.add_subplot(1, 2, i + 1)
            trained = [(c["step"], c[metric]) for c in curve if c.get(metric) is not None]
            if trained:
                ax.plot(
                    *zip(*trained),
                    color="C0",
                    marker=".",
                    label=f"GRPO samples (temperature {sections['grpo']['temperature']})",
                )
            for x, key, colour in ((0, "before", "C1"), (last, "after", "C2")):
                cell = sections["grpo"][key][metric]
                ax.errorbar(
                    [x],
                    [cell["mean"]],
                    yerr=[[cell["mean"] - cell["lo"]], [cell["hi"] - cell["mean"]]],
                    fmt="o",
                    capsize=5,
                    color=colour,
                    label=f"held-out, greedy, {key} GRPO",
                )
            if metric == "reward":
                ax.set_ylim(rewards[0] - 0.05, rewards[1] + 0.05)
            if metric == "count_accuracy":
                ax.axhline(
                    majority,
                    color="grey",
                    linestyle=":",
                    label=f"always the most common count ({majority:.2f})",
                )
                ax.set_ylim(-0.02, 1.02)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("GRPO step")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)

    return plot


def notes(sections: dict[str, Any]) -> str:
    before, after = sections["grpo"]["before"], sections["grpo"]["after"]
    lines = [
        "## GRPO: held-out before and after (mean [95% CI]; separated = intervals disjoint)",
        "",
        "| metric | after SFT (before GRPO) | after GRPO | separated |",
        "| --- | --- | --- | --- |",
    ]
    for m in METRICS:
        b, a = before[m], after[m]
        lines.append(
            f"| {m} | {b['mean']:.3f} [{b['lo']:.3f}, {b['hi']:.3f}] | "
            f"{a['mean']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}] | "
            f"{'yes' if sections['grpo']['gain'][m]['separated'] else 'no'} |"
        )
    lines += [
        "",
        f"SFT {sections['sft']['steps']} steps ({sections['sft']['seconds']:.0f} s), GRPO "
        f"{sections['grpo']['steps']} steps ({sections['grpo']['seconds']:.0f} s). Episodes are "
        "under `episodes/<stage>/` (`boxgym view`), adapters under `sft/` and `grpo/`.",
    ]
    return "\n".join(lines)


def measure(lab: Any, settings: dict[str, Any]) -> StudyOutput:
    out = Path(getattr(lab, "out_dir", None) or ".")
    records, sections = run_proof(lab, settings, out)
    base = [r["true_count"] for r in records if r["stage"] == "base"]
    return StudyOutput(
        records=records,
        sections=sections,
        notes=notes(sections),
        plot=plotter(sections, majority_share(base), sections["grpo"]["reward_range"]),
    )


STUDY = Study(
    name="learning-proof",
    question="Does GRPO with the env's reward make the model count better? Held-out tool-use "
    "episodes of the checkpoint, after SFT, and after GRPO from the SFT adapter.",
    factors=("stage",),
    metrics=METRICS,
    defaults=DEFAULTS,
    quick=QUICK,
    measure=measure,
    plot_x="stage",
    plot_metrics=("count_accuracy", "reward"),
    fixed_help="the held-out scenes (the same in every stage), greedy decoding, the env",
    setting_hint="; SFT and GRPO config overrides are --sft-set KEY=VALUE and --grpo-set "
    "KEY=VALUE (studies/learning_proof.py's --set is now --sft-set)",
)
