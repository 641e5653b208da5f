"""The Gymnasium environment: prompts, tool-call parsing, stepping, rewards."""

from boxgym.env.config import EnvConfig
from boxgym.env.environment import BoxGymEnv
from boxgym.env.rewards import EpisodeOutcome, RewardComponents, RewardConfig, score_episode

__all__ = [
    "BoxGymEnv",
    "EnvConfig",
    "EpisodeOutcome",
    "RewardComponents",
    "RewardConfig",
    "score_episode",
]
