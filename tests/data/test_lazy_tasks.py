"""`LazyTasks`: a run's procedural tasks built when asked for, named without building."""

from __future__ import annotations

from boxgym.data.lazy_tasks import LazyTasks, most_images, task_ids
from boxgym.rollouts.commands import scene_tasks


def test_scene_tasks_are_built_on_access_and_equal_the_eager_ones() -> None:
    built: list[int] = []
    eager = scene_tasks(["shapes", "screens"], 6, 2, "easy")
    lazy = LazyTasks(6, build=lambda i: built.append(i) or eager[i], task_id=eager.task_id, keep=2)
    assert task_ids(lazy) == [eager[i].id for i in range(6)] and built == []
    assert lazy[3].id == eager[3].id and lazy[3] is lazy[3] and built == [3]
    _ = [lazy[i] for i in (0, 1, 3)]  # task 3 was dropped (keep=2) and is built again
    assert built == [3, 0, 1, 3] and len(lazy._built) == 2
    assert [t.id for t in lazy[-2:]] == [eager[4].id, eager[5].id]


def test_most_images_of_scenes_builds_nothing() -> None:
    tasks = scene_tasks(["clutter"], 3, 0, "easy")
    assert tasks.images_per_task == 1 and most_images(tasks) == len(tasks[0].images) == 1
    calls: list[int] = []
    unknown = LazyTasks(2, build=lambda i: calls.append(i) or tasks[i], task_id=tasks.task_id)
    assert most_images(unknown) == 1 and calls == [0, 1]
