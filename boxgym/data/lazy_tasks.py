"""`LazyTasks`: a run's tasks as a sequence that builds each task when it is asked for.

A run over 100,000 procedural scenes must not hold 100,000 images: the runner asks for task i
when one of its episodes starts, and the sequence builds it from its seed then, keeping only the
last few (the G samples of a group start one after another and share one build). Task ids come
from a separate, cheap function, so resuming a run (which keys are done?) builds no scene.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import overload

from boxgym.data.task import Task


class LazyTasks(Sequence[Task]):
    """`n` tasks, task i built by `build(i)` on access; `task_id(i)` names it without building.

    Args:
        n: how many tasks.
        build: builds task i (deterministically: asking twice gives equal tasks).
        task_id: the id `build(i)` will have.
        keep: how many built tasks to keep (most recently used first).
        images_per_task: the most images a task has, when known without building them (a
            procedural scene has one); None when unknown.
    """

    def __init__(
        self,
        n: int,
        build: Callable[[int], Task],
        task_id: Callable[[int], str],
        keep: int = 4,
        images_per_task: int | None = None,
    ) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._n = n
        self._build = build
        self._task_id = task_id
        self._keep = max(1, keep)
        self._built: OrderedDict[int, Task] = OrderedDict()
        self.images_per_task = images_per_task

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, index: int) -> Task: ...

    @overload
    def __getitem__(self, index: slice) -> list[Task]: ...

    def __getitem__(self, index: int | slice) -> Task | list[Task]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._n))]
        i = self._index(index)
        task = self._built.get(i)
        if task is None:
            task = self._build(i)
            self._built[i] = task
            while len(self._built) > self._keep:
                self._built.popitem(last=False)
        else:
            self._built.move_to_end(i)
        return task

    def task_id(self, index: int) -> str:
        """The id of task `index`, without building it."""
        return self._task_id(self._index(index))

    def _index(self, index: int) -> int:
        i = int(index)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"task index {index} is out of range for {self._n} tasks")
        return i


def most_images(tasks: Sequence[Task]) -> int:
    """The most images any task has (at least 1); a `LazyTasks` that knows it builds nothing."""
    known = getattr(tasks, "images_per_task", None)
    if isinstance(known, int):
        return max(1, known)
    return max((len(t.images) for t in tasks), default=1)


def task_ids(tasks: Sequence[Task]) -> list[str]:
    """Every task's id: from `LazyTasks.task_id` when the sequence has it (nothing is built)."""
    name = getattr(tasks, "task_id", None)
    if callable(name):
        return [name(i) for i in range(len(tasks))]
    return [t.id for t in tasks]


def task_id_of(tasks: Sequence[Task], index: int) -> str:
    """Task `index`'s id, without building it when the sequence can name it (`LazyTasks`)."""
    name = getattr(tasks, "task_id", None)
    return name(index) if callable(name) else tasks[index].id
