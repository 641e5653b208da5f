"""boxgym: a laboratory for how vision-language models keep track of many objects in one image.

Importing boxgym registers the Gymnasium ids (lazily, by string entry point):
`boxgym/Screens-v0`, `boxgym/Shapes-v0`, `boxgym/Clutter-v0` (procedural scenes) and
`boxgym/Tasks-v0` (tasks passed in as `tasks=[...]`). Nothing heavy is imported here.
"""

from __future__ import annotations

__version__ = "0.1.0"

ENV_IDS: dict[str, dict[str, object]] = {
    "boxgym/Screens-v0": {"family": "screens"},
    "boxgym/Shapes-v0": {"family": "shapes"},
    "boxgym/Clutter-v0": {"family": "clutter"},
    "boxgym/Tasks-v0": {},
}


def _register_envs() -> None:
    from gymnasium.envs.registration import register, registry

    for env_id, kwargs in ENV_IDS.items():
        if env_id not in registry:
            register(id=env_id, entry_point="boxgym.env.environment:BoxGymEnv", kwargs=dict(kwargs))


_register_envs()

__all__ = ["ENV_IDS", "__version__"]
