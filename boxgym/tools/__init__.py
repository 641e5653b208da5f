"""The image tools the model calls (draw_box, crop, label, remove_box, answer), their rendering,
coordinate frames and JSON schemas."""

from boxgym.tools.frames import FRAMES, frame_to_pixels, pixels_to_frame
from boxgym.tools.schema import tool_schemas
from boxgym.tools.toolbox import TOOL_NAMES, DrawnBox, Toolbox

__all__ = [
    "FRAMES",
    "TOOL_NAMES",
    "DrawnBox",
    "Toolbox",
    "frame_to_pixels",
    "pixels_to_frame",
    "tool_schemas",
]
