"""The names a config key or a flag may take, each list defined here once: the procedural scene
families, their difficulties, the sources of the SFT mixture, and the weight dtypes a model
loads in.

No imports: the command line reads these to build its `choices` before anything heavy loads.
"""

from __future__ import annotations

# Procedural scene families (`boxgym.data.scenes.families` holds one generator for each).
SCENE_FAMILY_NAMES: tuple[str, ...] = ("screens", "shapes", "clutter")

# Difficulty presets each family has (`boxgym.data.scenes.families.DIFFICULTIES`).
DIFFICULTY_NAMES: tuple[str, ...] = ("easy", "medium", "hard")

# Sources of the SFT mixture: scripted episodes, and the datasets `boxgym.data.loaders` reads.
SCRIPTED_SOURCES: tuple[str, ...] = ("oracle", "noisy")
DATASET_SOURCES: tuple[str, ...] = (
    "nlvr2",
    "aguvis-stage-1",
    "aguvis-stage-2",
    "pixmo-count",
    "countbench",
)
MIXTURE_SOURCES: tuple[str, ...] = SCRIPTED_SOURCES + DATASET_SOURCES

# Weight dtypes: "auto" picks bfloat16 on a capable GPU, else float32.
DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float16", "float32")
