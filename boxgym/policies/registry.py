"""`make_policy(name, **kwargs)`: every policy by name, model backends imported only when asked for.

Scripted policies ("oracle", "noisy", "random") live in `boxgym.policies.scripted`; the model
backends ("hf", "vllm", "openai") are imported on demand so that naming a scripted policy never
loads torch. Keyword arguments go to the policy's constructor; None values are dropped, so a CLI
can pass every option it has and let each policy keep its own defaults.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from boxgym.policies.base import Policy

# name -> (module, class)
POLICIES: dict[str, tuple[str, str]] = {
    "oracle": ("boxgym.policies.scripted", "OraclePolicy"),
    "noisy": ("boxgym.policies.scripted", "NoisyPolicy"),
    "random": ("boxgym.policies.scripted", "RandomPolicy"),
    "hf": ("boxgym.policies.hf", "HFPolicy"),
    "vllm": ("boxgym.policies.vllm", "VLLMPolicy"),
    "openai": ("boxgym.policies.openai_policy", "OpenAIPolicy"),
}
SCRIPTED: tuple[str, ...] = ("oracle", "noisy", "random")


def policy_class(name: str) -> type:
    """The class behind a policy name (importing its module)."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
    module_name, class_name = POLICIES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        from boxgym.errors import missing_module_message

        raise ImportError(
            f"policy {name!r}: {missing_module_message(error.name or module_name)}"
        ) from error
    return getattr(module, class_name)


def make_policy(name: str, *, strict: bool = False, **kwargs: Any) -> Policy:
    """Build a policy by name.

    Args:
        name: "oracle", "noisy", "random", "hf", "vllm" or "openai".
        strict: reject keyword arguments the policy does not take (otherwise they are dropped,
            so one CLI namespace can serve every policy).
        **kwargs: constructor arguments (model, adapter, temperature, top_p, max_new_tokens,
            seed, base_url, frame, ...); None values are left out.
    """
    cls = policy_class(name)
    given = {k: v for k, v in kwargs.items() if v is not None}
    parameters = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if not takes_any:
        unknown = sorted(k for k in given if k not in parameters)
        if unknown and strict:
            raise TypeError(
                f"policy {name!r} takes no argument(s) {unknown}; it takes {sorted(parameters)}"
            )
        given = {k: v for k, v in given.items() if k in parameters}
    policy = cls(**given)
    if not getattr(policy, "name", None):
        policy.name = name
    return policy
