"""`EnvConfig`: every limit and option of the environment, in one validated dataclass.

The defaults are the mark-and-look protocol: one tool call a reply, `draw_box` answering with the
image carrying every live mark, and only the latest image kept in the conversation. The one-reply
protocol (every box, then the answer, in one reply) is `ONE_REPLY`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from boxgym.config import PositiveInt, Switch, check_fields, unknown_keys
from boxgym.env.rewards import RewardConfig
from boxgym.tools.canvas import MARK_STYLES, PATCH
from boxgym.tools.frames import FRAMES
from boxgym.tools.toolbox import (
    DEFAULT_CROP_MAX_PIXELS,
    DEFAULT_CROP_MIN_SIDE,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MIN_IMAGE_PIXELS,
    DRAW_BOX_RETURNS,
)

# What the conversation keeps of the images shown: "all" of them, or only the "last" one (each
# earlier image is dropped from its message when a newer one arrives, so a turn's context stays
# bounded however many objects have been marked).
IMAGE_HISTORIES: tuple[str, ...] = ("all", "last")


@dataclass
class EnvConfig:
    """Limits and options of a `BoxGymEnv` (all explicit; `from_dict` reads YAML mappings).

    Each field is checked against its annotation (`boxgym.config.check_fields`: strict types
    and bounds); `__post_init__` adds the checks that relate fields.
    """

    max_turns: PositiveInt = field(
        default=100, metadata={"help": "assistant turns before truncation"}
    )
    max_calls_per_turn: PositiveInt = field(
        default=1, metadata={"help": "calls run per turn; the rest are refused"}
    )
    max_calls: PositiveInt = field(
        default=100, metadata={"help": "calls per episode before truncation"}
    )
    max_boxes: PositiveInt = field(default=100, metadata={"help": "live boxes at once"})
    max_action_chars: PositiveInt = field(
        default=8000, metadata={"help": "characters of a reply that are parsed"}
    )
    coordinate_frame: Literal[FRAMES] = field(
        default="qwen",
        metadata={"help": "coordinate frame (default qwen)", "flag": "--frame"},
    )
    draw_box_returns: Literal[DRAW_BOX_RETURNS] = field(
        default="image", metadata={"help": "what draw_box shows"}
    )
    crop_shows_boxes: Switch = field(default=True, metadata={"help": "draw live boxes on crops"})
    image_history: Literal[IMAGE_HISTORIES] = field(
        default="last",
        metadata={"help": f"images kept in the conversation: one of {IMAGE_HISTORIES}"},
    )
    mark_style: Literal[MARK_STYLES] = field(
        default="tag", metadata={"help": f"how boxes are drawn: one of {MARK_STYLES}"}
    )
    box_count_text: Switch = field(
        default=True,
        metadata={
            "help": 'draw_box says the box number and "N boxes so far" (off: the marks only)'
        },
    )
    max_image_pixels: PositiveInt = field(
        default=DEFAULT_MAX_IMAGE_PIXELS,
        metadata={"help": "area cap of every image shown (patch grid)"},
    )
    min_image_pixels: PositiveInt = field(
        default=DEFAULT_MIN_IMAGE_PIXELS, metadata={"help": "area floor of every image"}
    )
    crop_min_side: PositiveInt = field(
        default=DEFAULT_CROP_MIN_SIDE, metadata={"help": "crops are upscaled to this short side"}
    )
    crop_max_pixels: PositiveInt = field(
        default=DEFAULT_CROP_MAX_PIXELS,
        metadata={"help": "area cap of a crop (max_image_pixels caps it too)"},
    )
    system_prompt: Switch = field(
        default=True,
        metadata={
            "help": "start with a system message of instructions",
            "flag_help": "start without the system message",
        },
    )
    reward: RewardConfig = field(
        default_factory=RewardConfig, metadata={"help": "reward weights and switches"}
    )

    def __post_init__(self) -> None:
        if isinstance(self.reward, dict):
            self.reward = RewardConfig.from_dict(self.reward)
        if not isinstance(self.reward, RewardConfig):
            raise ValueError(
                f"EnvConfig.reward must be a RewardConfig or a mapping, got {type(self.reward).__name__}"
            )
        check_fields(self, skip=("reward",))
        if self.min_image_pixels < PATCH * PATCH:
            raise ValueError(
                f"EnvConfig.min_image_pixels must be at least {PATCH * PATCH} (one 28x28 patch)"
            )
        if self.max_image_pixels < self.min_image_pixels:
            raise ValueError(
                f"EnvConfig.max_image_pixels ({self.max_image_pixels}) is below min_image_pixels "
                f"({self.min_image_pixels}); raise it"
            )
        if self.crop_max_pixels < 4 * PATCH * PATCH:
            raise ValueError(
                f"EnvConfig.crop_max_pixels must be at least {4 * PATCH * PATCH} (4 patches)"
            )
        # Crops are capped by min(crop_max_pixels, max_image_pixels), so a small image cap needs
        # no matching crop cap; the floor still has to hold for every image shown.
        if self.crop_max_pixels < self.min_image_pixels:
            raise ValueError(
                f"EnvConfig.crop_max_pixels ({self.crop_max_pixels}) is below min_image_pixels "
                f"({self.min_image_pixels}); every image shown, crops included, must lie within "
                "[min_image_pixels, max_image_pixels] so the processor's resize leaves it unchanged"
            )
        if self.max_calls_per_turn > self.max_calls:
            raise ValueError(
                f"EnvConfig.max_calls_per_turn ({self.max_calls_per_turn}) exceeds max_calls ({self.max_calls})"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> EnvConfig:
        """Build from a mapping (e.g. parsed YAML); unknown keys are an error naming the known ones."""
        data = dict(data or {})
        problem = unknown_keys(cls, data)
        if problem:
            raise ValueError(problem)
        if "reward" in data and not isinstance(data["reward"], RewardConfig):
            data["reward"] = RewardConfig.from_dict(data["reward"])
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reward"] = self.reward.to_dict()
        return out

    def replace(self, **overrides: Any) -> EnvConfig:
        """A copy with `overrides` applied (validated like the constructor)."""
        problem = unknown_keys(EnvConfig, overrides)
        if problem:
            raise ValueError(problem)
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(overrides)
        return EnvConfig.from_dict(data)

    def toolbox_kwargs(self) -> dict[str, Any]:
        """The `Toolbox` constructor arguments this config implies."""
        return {
            "coordinate_frame": self.coordinate_frame,
            "draw_box_returns": self.draw_box_returns,
            "crop_shows_boxes": self.crop_shows_boxes,
            "mark_style": self.mark_style,
            "box_count_text": self.box_count_text,
            "max_boxes": self.max_boxes,
            "max_image_pixels": self.max_image_pixels,
            "min_image_pixels": self.min_image_pixels,
            "crop_min_side": self.crop_min_side,
            "crop_max_pixels": self.crop_max_pixels,
        }


# The one-reply protocol: every box and the answer in one reply, draw_box answering in text (the
# baseline the mark-and-look protocol is measured against).
ONE_REPLY: dict[str, Any] = {
    "draw_box_returns": "text",
    "max_turns": 2,
    "max_calls_per_turn": 14,
    "max_calls": 28,
    "image_history": "all",
}
