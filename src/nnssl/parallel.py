"""Process-parallel map over independent tasks that survives a worker process dying.

``multiprocessing.Pool`` silently replaces a worker that is killed (a segfault inside a C library, the
out-of-memory killer) and then waits forever for the lost task. :func:`map_unordered` uses a
``ProcessPoolExecutor``, which notices the death, and records which tasks had started: those are run again,
each alone in a fresh process. A task that kills its process a second time yields ``on_crash(task, reason)``
instead of a result; every other task still yields its normal result, so one poisonous file never stops
(or hangs) a run over thousands.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

CRASH_REASON = (
    "the worker process died while processing this file (a crash inside a reader library or the out-of-memory "
    "killer); the other files were processed. Try the file alone, e.g. with -np 1."
)

_STARTED: Any = None


def _remember_queue(started: Any) -> None:
    global _STARTED
    _STARTED = started


def _call(fn: Callable[[Any], Any], index: int, task: Any) -> Any:
    _STARTED.put(index)
    return fn(task)


def _drain(started: Any) -> set[int]:
    indices = set()
    while not started.empty():
        indices.add(started.get())
    return indices


def _pool_round(
    fn: Callable[[T], R], tasks: Sequence[T], indices: list[int], workers: int, context: Any
) -> Iterator[tuple[int, R]]:
    """Yield (index, result) until done; raise _Crashed with the indices that had started but not finished."""
    started = context.SimpleQueue()  # written synchronously: an index put just before a crash is not lost
    finished: set[int] = set()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_remember_queue, initargs=(started,)) as pool:
        futures = {pool.submit(_call, fn, i, tasks[i]): i for i in indices}
        try:
            for future in as_completed(futures):
                index = futures[future]
                result = future.result()
                finished.add(index)
                yield index, result
        except BrokenProcessPool:
            raise _Crashed(_drain(started) - finished, finished) from None


class _Crashed(Exception):
    def __init__(self, suspects: set[int], finished: set[int]) -> None:
        super().__init__("worker died")
        self.suspects = suspects
        self.finished = finished


def map_unordered(
    fn: Callable[[T], R], tasks: Sequence[T], num_processes: int, on_crash: Callable[[T, str], R]
) -> Iterator[R]:
    """Yield ``fn(task)`` for every task in completion order, using ``num_processes`` spawned processes.

    ``fn`` must be picklable (module level) and should not raise. With one process (or one task) it runs in
    this process, where a crash cannot be contained.
    """
    if num_processes <= 1 or len(tasks) <= 1:
        yield from map(fn, tasks)
        return
    context = multiprocessing.get_context("spawn")
    remaining = list(range(len(tasks)))
    while remaining:
        try:
            for index, result in _pool_round(fn, tasks, remaining, min(num_processes, len(remaining)), context):
                remaining.remove(index)
                yield result
        except _Crashed as crash:
            suspects = sorted(crash.suspects) or list(remaining)
            for index in suspects:
                remaining.remove(index)
                try:
                    yield from (result for _, result in _pool_round(fn, tasks, [index], 1, context))
                except _Crashed:
                    yield on_crash(tasks[index], CRASH_REASON)
