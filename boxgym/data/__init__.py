"""Tasks: procedural scenes with exact ground truth, and loaders for real datasets."""

from boxgym.data.task import TASK_KINDS, GroundTruthObject, PixelBox, Task, TaskKind

__all__ = ["TASK_KINDS", "GroundTruthObject", "PixelBox", "Task", "TaskKind"]
