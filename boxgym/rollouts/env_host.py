"""Env hosts: where a lockstep run's environments live, in this process or in worker processes.

The lockstep runner (`boxgym.rollouts.runner`) keeps the policy and every live conversation; an
env host owns the envs and the `EpisodeRecorder`s (image hashing and encoding, the record). The
runner asks it to start episodes (by key and seed) and to step them with the policy's texts; per
episode the host answers with an `EpisodeUpdate`: the messages that are new to the conversation
(the prompt at the start, then each step's delta), whether the episode ended, and its finished
record, which the runner appends to the store.

`LocalEnvHost` does this in the runner's process (the default). `ProcessEnvHost` spreads the
live episodes over N worker processes, each running a `LocalEnvHost` over a collect-mode
`EpisodeStore` (images go into the run's `images/` by atomic renames; records are handed back,
not written). Per turn the parent sends each worker the texts of its own episodes and receives
only the deltas, so a model policy keeps batching over every live episode in one `act` call
while env resets and steps, scene generation, recording, hashing and image encoding run on N
cores. A worker puts an episode's images on disk before it hands the record back, and the parent
alone appends to `episodes.jsonl`, so the store's durability rules hold as in one process.

Images in the deltas travel as their recipes (`RecipeImage`), not as pixels: the task's images
come once with the episode's start, and the parent turns each recipe into a `DeferredImage`
that `render_recipe` rebuilds, pixel for pixel, when the policy reads it. Measured here (a 448 px
marked view): sending the pixels through a pipe costs about 2 ms to pickle and unpickle plus
2-4 ms to move its 600 KB, making it from its recipe about 0.5-2 ms; and a policy that never
reads an image (a scripted one) makes none. An image without a recipe travels as pixels.

Why a per-episode host and not Gymnasium's `AsyncVectorEnv`: a vector env steps a fixed set of
sub-envs together, auto-resets each one as it ends and returns fixed-shape observations. Here
episodes start and end at different turns (a finished episode's slot goes to the next key before
the next turn), every reset takes its own task and seed, observations are variable-length
message lists with images, and the recorder must sit next to its env so that images are hashed
and encoded where they are made. Keying episodes by (task index, sample) and sending one request
per worker per turn does all of that with one `Pipe` per worker.

Workers are forked (the tasks, often a `LazyTasks` of closures, need not pickle); start them
before a model is loaded, so no model thread or GPU context is forked (`boxgym rollout` does).
Each worker ignores Ctrl-C (the parent handles it and closes them) and dies with its parent
(`boxgym.rollouts.parent_death`; its pipe reaching end-of-file or its parent process id changing
end it too), so killing the parent, even with SIGKILL, leaves no process behind. A worker that dies ends the run with `EnvWorkerDied`, one line
naming the worker and how it ended; the episodes already stored stay and `--resume` finishes
the rest.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from PIL import Image

from boxgym.data.lazy_tasks import task_id_of
from boxgym.data.task import Task
from boxgym.env.parsing import valid_unicode
from boxgym.errors import explain
from boxgym.rollouts.episode import EpisodeRecorder, task_error_record
from boxgym.rollouts.parent_death import die_with_parent, signals_held
from boxgym.rollouts.store import EpisodeStore
from boxgym.tools.recipes import RECIPE_KEY, DeferredImage, image_recipe, render_recipe

# A runaway guard: the env's own turn budget should always end an episode long before this.
RUNNER_TURN_GUARD = 512

Key = tuple[int, int]  # (task index, sample)


@dataclass
class EpisodeUpdate:
    """What a host reports about one episode after starting or stepping it.

    Attributes:
        key: (task index, sample).
        messages: at the start the prompt, after a step the messages it added (the assistant
            message included), as the env returned them.
        done: the episode ended (its record is in `record`).
        record: the finished episode's record (its images are on disk or queued in the store of
            the runner's process), else None.
        task: at the start, the task (scripted policies read its ground truth).
        env_s: seconds spent in the env (reset or step).
        record_s: seconds spent recording (hashing, queueing images, building the record).
    """

    key: Key
    messages: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    record: dict[str, Any] | None = None
    task: Task | None = None
    env_s: float = 0.0
    record_s: float = 0.0


# One step request: the episode, the policy's text, its share of the policy's time.
Move = tuple[Key, Any, float]


@dataclass(frozen=True)
class RecipeImage:
    """An image a worker sends as its recipe (`boxgym.tools.recipes`) instead of its pixels;
    the parent rebuilds it, when read, from the task image it holds."""

    recipe: dict[str, Any]


@dataclass
class _Hosted:
    env: Any
    recorder: EpisodeRecorder
    turns: int = 0


class LocalEnvHost:
    """Envs and recorders in this process.

    Args:
        tasks: the run's tasks (task index = position).
        make_env: builds a fresh env (reset with `options={"task": task}`).
        store: where the recorders put images (the records go back to the caller).
    """

    def __init__(
        self, tasks: Sequence[Task], make_env: Callable[[], Any], store: EpisodeStore
    ) -> None:
        self.tasks, self.make_env, self.store = tasks, make_env, store
        self.tools: list[dict[str, Any]] = []
        self._episodes: dict[Key, _Hosted] = {}

    def start(
        self, starts: Sequence[tuple[int, int, int]], run_info: dict[str, Any]
    ) -> list[EpisodeUpdate]:
        """Reset a fresh env for each (task index, sample, seed); a reset the env refuses ends
        that episode at once (recorded as `env_error`)."""
        return [self._start(index, sample, seed, run_info) for index, sample, seed in starts]

    def _start(
        self, task_index: int, sample: int, seed: int, run_info: dict[str, Any]
    ) -> EpisodeUpdate:
        key = (task_index, sample)
        t0 = time.perf_counter()
        try:
            task = self.tasks[task_index]
        except Exception as exc:  # a task that cannot be built (its image vanished): record it
            reason = explain(exc)
            record = task_error_record(
                task_id_of(self.tasks, task_index), task_index, sample, seed, run_info, reason
            )
            return EpisodeUpdate(key, [], True, record, None, time.perf_counter() - t0)
        env = self.make_env()
        recorder = EpisodeRecorder(self.store, task, task_index, sample, seed, run_info)
        try:
            messages, _info = env.reset(seed=seed, options={"task": task})
        except Exception as exc:  # a task the env cannot take: record it, keep the run going
            recorder.fail("env_error", describe(exc))
            env_s = time.perf_counter() - t0
            recorder.timing["env_s"] += env_s
            t1 = time.perf_counter()
            record = recorder.record()
            with contextlib.suppress(Exception):
                env.close()
            return EpisodeUpdate(key, [], True, record, task, env_s, time.perf_counter() - t1)
        if not self.tools:  # every env of a run has the same tools: copy their schemas once
            self.tools = list(getattr(env, "tool_schemas", self.tools))
        t1 = time.perf_counter()
        recorder.set_prompt(messages)
        t2 = time.perf_counter()
        recorder.timing["env_s"] += t1 - t0
        recorder.timing["record_s"] += t2 - t1
        self._episodes[key] = _Hosted(env, recorder)
        return EpisodeUpdate(key, list(messages), task=task, env_s=t1 - t0, record_s=t2 - t1)

    def step(self, moves: Sequence[Move]) -> list[EpisodeUpdate]:
        """Step each episode with its text; a finished one is closed and its record returned."""
        return [self._step(key, text, policy_s) for key, text, policy_s in moves]

    def _step(self, key: Key, text: Any, policy_s: float) -> EpisodeUpdate:
        hosted = self._episodes[key]
        recorder = hosted.recorder
        recorder.timing["policy_s"] += policy_s
        hosted.turns += 1
        update = EpisodeUpdate(key)
        t0 = time.perf_counter()
        if not isinstance(text, str):
            text = "" if text is None else str(text)
        text = valid_unicode(text)  # a lone surrogate could not be stored as UTF-8
        try:
            new_messages, reward, terminated, truncated, info = hosted.env.step(text)
        except Exception as exc:
            t1 = time.perf_counter()
            recorder.add_turn(text, [], 0.0, {})
            recorder.fail("env_error", describe(exc))
            update.done = True
        else:
            t1 = time.perf_counter()
            update.messages = list(new_messages)
            recorder.add_turn(text, new_messages, float(reward), info)
            if terminated or truncated:
                recorder.finish(bool(terminated), bool(truncated), info)
                update.done = True
            elif hosted.turns >= RUNNER_TURN_GUARD:
                recorder.fail("runner_turn_guard", f"no end after {hosted.turns} turns")
                update.done = True
        t2 = time.perf_counter()
        recorder.timing["env_s"] += t1 - t0
        recorder.timing["record_s"] += t2 - t1
        if update.done:
            update.record = recorder.record()
            del self._episodes[key]
            hosted.env.close()
        update.env_s, update.record_s = t1 - t0, time.perf_counter() - t1
        return update

    def close(self) -> None:
        """Close the envs of episodes still in flight (a run that stopped early)."""
        for hosted in self._episodes.values():
            with contextlib.suppress(Exception):
                hosted.env.close()
        self._episodes.clear()


class EnvWorkerDied(RuntimeError):
    """An env worker process ended in the middle of a run."""


class ProcessEnvHost:
    """The live episodes spread over `workers` forked processes (see the module docstring).

    Args:
        workers: how many processes.
        tasks: the run's tasks, the same sequence the runner gets.
        make_env: builds a fresh env in a worker.
        store: the runner's store: the workers write images into its run directory (in its
            image format), keeping their temporary files where it keeps its own.
        images: how the images of the deltas travel: "recipes" (the parent makes each one
            when it is read) or "pixels" (made in the worker and sent; it cost 3x the CPU on
            this machine, docs/benchmarks.md, and is kept for that comparison).

    Use it as a context manager (or call `close`): closing stops every worker.
    """

    def __init__(
        self,
        workers: int,
        tasks: Sequence[Task],
        make_env: Callable[[], Any],
        store: EpisodeStore,
        images: str = "recipes",
    ) -> None:
        if images not in ("recipes", "pixels"):
            raise ValueError(f"images must be 'recipes' or 'pixels', got {images!r}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if "fork" not in multiprocessing.get_all_start_methods():
            raise RuntimeError("env worker processes need the 'fork' start method (Linux, macOS)")
        context = multiprocessing.get_context("fork")
        own_dir = store.episodes_path.parent
        layout = (
            str(store.out_dir),
            None if own_dir == Path(store.out_dir) else str(own_dir),
            store.image_format,
            images,
        )
        self.tools: list[dict[str, Any]] = []
        self._conns: list[Connection] = []
        self._processes: list[Any] = []
        self._owner: dict[Key, int] = {}  # live episode -> worker index
        self._load: list[int] = [0] * workers  # live episodes per worker
        self.started: list[int] = [0] * workers  # episodes each worker has started
        # live episode -> its task images and, per image, the views cache of `render_recipe`
        self._sources: dict[Key, list[tuple[Any, dict[Any, Any]]]] = {}
        try:
            with signals_held():  # a Ctrl-C arrives after the forks, not inside them
                self._start_workers(workers, context, tasks, make_env, layout)
        except BaseException:
            self.close()
            raise

    def _start_workers(
        self,
        workers: int,
        context: Any,
        tasks: Sequence[Task],
        make_env: Callable[[], Any],
        layout: tuple[str, str | None, str, str],
    ) -> None:
        """Fork the workers, each with a pipe whose other end only this process holds."""
        for index in range(workers):
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_serve,
                args=(child_end, [*self._conns, parent_end], tasks, make_env, layout, os.getpid()),
                name=f"boxgym-env-{index}",
                daemon=True,
            )
            process.start()
            child_end.close()  # the worker's end lives in the worker only: EOF when it dies
            self._conns.append(parent_end)
            self._processes.append(process)

    @property
    def workers(self) -> int:
        return len(self._conns)

    def pids(self) -> list[int]:
        """The workers' process ids."""
        return [p.pid for p in self._processes]

    def start(
        self, starts: Sequence[tuple[int, int, int]], run_info: dict[str, Any]
    ) -> list[EpisodeUpdate]:
        """`LocalEnvHost.start`, each new episode on the worker with the fewest live ones (ties:
        the worker that started the previous sample of the same task, whose tasks cache holds
        the task already)."""
        parts: dict[int, list[tuple[int, int, int]]] = {}
        last_of_task: dict[int, int] = {}
        for task_index, sample, seed in starts:
            fewest = min(self._load)
            preferred = last_of_task.get(task_index)
            if preferred is not None and self._load[preferred] == fewest:
                worker = preferred
            else:
                worker = self._load.index(fewest)
            last_of_task[task_index] = worker
            self._owner[(task_index, sample)] = worker
            self._load[worker] += 1
            self.started[worker] += 1
            parts.setdefault(worker, []).append((task_index, sample, seed))
        requests = {w: ("start", (part, run_info)) for w, part in parts.items()}
        return self._exchange(requests, [(i, s) for i, s, _ in starts])

    def step(self, moves: Sequence[Move]) -> list[EpisodeUpdate]:
        """`LocalEnvHost.step`, each worker stepping its own episodes at the same time."""
        parts: dict[int, list[Move]] = {}
        for move in moves:
            parts.setdefault(self._owner[move[0]], []).append(move)
        requests = {w: ("step", part) for w, part in parts.items()}
        return self._exchange(requests, [key for key, _, _ in moves])

    def _exchange(
        self, requests: dict[int, tuple[str, Any]], order: list[Key]
    ) -> list[EpisodeUpdate]:
        """Send each worker its request, gather every reply, return the updates in `order`."""
        waiting: dict[Connection, int] = {}
        for worker, request in requests.items():
            try:
                self._conns[worker].send(request)
            except (BrokenPipeError, ConnectionResetError, EOFError) as error:
                raise self._died(worker) from error
            waiting[self._conns[worker]] = worker
        updates: dict[Key, EpisodeUpdate] = {}
        while waiting:
            for conn in wait(list(waiting)):
                worker = waiting.pop(conn)  # type: ignore[arg-type]
                try:
                    status, payload, tools = conn.recv()  # type: ignore[union-attr]
                except (EOFError, ConnectionResetError, OSError) as error:
                    raise self._died(worker) from error
                if status != "ok":
                    raise RuntimeError(f"env worker {worker} failed: {payload}")
                if tools and not self.tools:
                    self.tools = list(tools)
                for update in payload:
                    updates[update.key] = update
                    if update.task is not None:
                        self._sources[update.key] = [(im, {}) for im in update.task.images]
                    sources = self._sources.get(update.key, [])
                    update.messages = [_with_images(m, sources) for m in update.messages]
                    if update.done:
                        self._owner.pop(update.key, None)
                        self._sources.pop(update.key, None)
                        self._load[worker] -= 1
        return [updates[key] for key in order]

    def _died(self, worker: int) -> EnvWorkerDied:
        process = self._processes[worker]
        process.join(timeout=2)
        code = process.exitcode
        if code is None:
            how = "stopped answering"
        elif code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        return EnvWorkerDied(
            f"env worker {worker} (pid {process.pid}) {how} mid-run, losing its episodes in "
            "flight (if the machine ran out of memory, use fewer --workers or --max-live)"
        )

    def close(self) -> None:
        """Stop every worker: ask, wait a little, then terminate what is left.

        The parent's ends are closed right after asking, so a worker still sending a reply
        nobody will read (a run stopped mid-turn) gets a broken pipe and leaves too.
        """
        for conn in self._conns:
            with contextlib.suppress(Exception):
                conn.send(("close", None))
            conn.close()
        deadline = time.monotonic() + 5
        for process in self._processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
        for process in self._processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        self._conns, self._processes = [], []

    def __enter__(self) -> ProcessEnvHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(
    conn: Connection,
    inherited: list[Connection],
    tasks: Sequence[Task],
    make_env: Callable[[], Any],
    layout: tuple[str, str | None, str, str],
    parent: int,
) -> None:
    """A worker's loop: answer start/step requests from its `LocalEnvHost` until told to close
    or until the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the parent handles it
    die_with_parent(parent)
    # The parent's ends (this worker's and the earlier workers'), copied by fork: closed here,
    # so that a parent that dies is an end-of-file (and a broken pipe) to every worker.
    for other in inherited:
        other.close()
    out_dir, episodes_dir, image_format, images = layout
    store = EpisodeStore(
        out_dir, episodes_dir=episodes_dir, image_format=image_format, collect=True
    )
    host = LocalEnvHost(tasks, make_env, store)
    images_of: dict[Key, int] = {}  # live episode -> how many task images it has
    try:
        while True:
            while not conn.poll(1.0):
                if os.getppid() != parent:
                    return  # the parent died without closing us
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                return
            if kind == "close":
                return
            try:
                if kind == "start":
                    updates = host.start(*payload)
                else:
                    updates = host.step(payload)
                if any(u.record is not None for u in updates):
                    store.flush_images()  # the images are on disk before the parent writes lines
                for update in updates if images == "recipes" else ():
                    if update.task is not None:
                        images_of[update.key] = len(update.task.images)
                    count = images_of.get(update.key, 0)
                    update.messages = [_by_recipe(m, count) for m in update.messages]
                    if update.done:
                        images_of.pop(update.key, None)
                # Pickled here, so that an unpicklable message is this request's error.
                data = pickle.dumps(("ok", updates, host.tools), pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                data = pickle.dumps(("error", describe(exc), []))
            try:
                conn.send_bytes(data)
            except (BrokenPipeError, ConnectionResetError, OSError):
                return
    finally:
        host.close()
        with contextlib.suppress(Exception):
            store.close()


def _by_recipe(message: dict[str, Any], task_images: int) -> dict[str, Any]:
    """A copy of `message` whose images made from a task image travel as `RecipeImage`s."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    blocks = []
    for block in content:
        image = block.get("image") if isinstance(block, dict) else None
        recipe = image_recipe(image) if isinstance(image, Image.Image) else None
        if recipe is not None and 0 <= recipe.get("source", -1) < task_images:
            block = {**block, "image": RecipeImage(recipe)}
        blocks.append(block)
    return {**message, "content": blocks}


def _with_images(message: dict[str, Any], sources: list[tuple[Any, dict[Any, Any]]]) -> Any:
    """`message` with each `RecipeImage` made a `DeferredImage` rebuilt from its task image."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    for block in content:
        ref = block.get("image") if isinstance(block, dict) else None
        if isinstance(ref, RecipeImage):
            original, views = sources[ref.recipe["source"]]
            make = partial(render_recipe, original, ref.recipe, views)
            image = DeferredImage(tuple(ref.recipe["size"]), make)
            image.info[RECIPE_KEY] = ref.recipe
            block["image"] = image
    return message


def describe(exc: BaseException) -> str:
    """An exception as its type, message and the last frames of its traceback (for records)."""
    tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
    return f"{type(exc).__name__}: {exc}\n{tail}"[:4000]
