"""Process-parallel map over independent tasks that survives a worker process dying.

``multiprocessing.Pool`` silently replaces a worker that is killed (a segfault inside a C library, the
out-of-memory killer) and then waits forever for the lost task. :func:`map_unordered` uses a
``ProcessPoolExecutor``, which notices the death, and records which tasks had started: those are run again,
each alone in a fresh process. A task that kills its process a second time yields ``on_crash(task, reason)``
instead of a result; every other task still yields its normal result, so one poisonous file never stops
(or hangs) a run over thousands.

Workers never outlive the process that started them. A worker blocked on the task queue would otherwise wait
forever once its parent is killed with SIGKILL (the queue's write end is inherited, so it never sees EOF): every
worker asks the kernel to send it SIGKILL when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``; the parent is
the thread that submitted the tasks, see :func:`map_unordered`), and a watchdog thread checks every
:data:`PARENT_POLL_SECONDS` that its parent is still the process that started it (the portable fallback, also on
macOS). Closing the iterator early (``break``, an exception in the consumer) cancels the tasks not yet started.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
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

PARENT_POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1

_STARTED: Any = None


def _exit_with_parent(parent_pid: int) -> None:
    """Make this (worker) process end when ``parent_pid`` ends: kernel signal on Linux, and a polling thread."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watchdog below still works
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=watch, name="nnssl-parent-watchdog", daemon=True).start()


def _init_worker(started: Any, parent_pid: int) -> None:
    global _STARTED
    _STARTED = started
    _exit_with_parent(parent_pid)


def _call(fn: Callable[[Any], Any], index: int, task: Any) -> Any:
    _STARTED.put(index)
    return fn(task)


def _drain(started: Any, into: set[int]) -> set[int]:
    """Move every index waiting in ``started`` into ``into`` (and return it)."""
    while not started.empty():
        into.add(started.get())
    return into


def _pool_round(
    fn: Callable[[T], R], tasks: Sequence[T], indices: list[int], workers: int, context: Any
) -> Iterator[tuple[int, R]]:
    """Yield (index, result) until done; raise _Crashed with the indices that had started but not finished.

    The started indices travel through a pipe whose kernel buffer holds only some thousands of them: a worker
    whose ``put`` finds it full blocks, with every other worker behind it. So the indices are drained each time
    a result arrives (a crash needs them; without that drain a map over more than ~6,000 tasks hung).
    """
    started = context.SimpleQueue()  # written synchronously: an index put just before a crash is not lost
    started_indices: set[int] = set()
    finished: set[int] = set()
    initargs = (started, os.getpid())
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=initargs) as pool:
        futures = {pool.submit(_call, fn, i, tasks[i]): i for i in indices}
        try:
            for future in as_completed(futures):
                index = futures.pop(future)
                result = future.result()
                finished.add(index)
                _drain(started, started_indices)
                yield index, result
        except BrokenProcessPool:
            raise _Crashed(_drain(started, started_indices) - finished, finished) from None
        finally:  # closed early (GeneratorExit) or failed: do not run the tasks that have not started
            pool.shutdown(wait=True, cancel_futures=True)


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
    this process, where a crash cannot be contained. Iterate in the thread that keeps running for the whole
    map (normally the main thread): on Linux, workers are tied to the thread that started them.
    """
    if num_processes <= 1 or len(tasks) <= 1:
        yield from map(fn, tasks)
        return
    context = multiprocessing.get_context("spawn")
    remaining = dict.fromkeys(range(len(tasks)))  # ordered, O(1) removal
    while remaining:
        try:
            order = list(remaining)
            for index, result in _pool_round(fn, tasks, order, min(num_processes, len(order)), context):
                del remaining[index]
                yield result
        except _Crashed as crash:
            suspects = sorted(crash.suspects) or list(remaining)
            for index in suspects:
                del remaining[index]
                try:
                    yield from (result for _, result in _pool_round(fn, tasks, [index], 1, context))
                except _Crashed:
                    yield on_crash(tasks[index], CRASH_REASON)
