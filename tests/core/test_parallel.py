"""map_unordered: a worker that dies takes only its own task down, the run never hangs, and workers never
outlive their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nnssl.parallel import CRASH_REASON, map_unordered


def _square_or_die(value: int) -> int:
    if value == 3:
        os._exit(1)  # what a segfault in a reader library looks like to the parent
    return value * value


def _crashed(value: int, reason: str) -> str:
    return f"crashed {value}: {reason}"


def test_a_dying_worker_loses_only_its_task() -> None:
    results = list(map_unordered(_square_or_die, list(range(7)), 2, _crashed))
    assert sorted(r for r in results if isinstance(r, int)) == [0, 1, 4, 16, 25, 36]
    assert [r for r in results if isinstance(r, str)] == [f"crashed 3: {CRASH_REASON}"]


def test_serial_path_gives_the_same_results() -> None:
    assert list(map_unordered(_square_or_die, [0, 1, 2], 1, _crashed)) == [0, 1, 4]
    assert sorted(map_unordered(_square_or_die, [0, 1, 2, 4], 2, _crashed)) == [0, 1, 4, 16]


_MANY_TASKS_SCRIPT = """
import os
from nnssl.parallel import map_unordered

def square_or_die(value):
    if value == 15000:
        os._exit(1)
    return value * value

def crashed(value, reason):
    return -value

if __name__ == "__main__":
    results = list(map_unordered(square_or_die, list(range(20000)), 2, crashed))
    print(len(results), sorted(r for r in results if r < 0), sum(r for r in results if r >= 0))
"""


def test_twenty_thousand_tasks_finish_and_a_late_crash_loses_only_its_task(tmp_path: Path) -> None:
    """Each started task reports its index through a pipe; an undrained pipe filled up after ~6,000 tasks and
    every worker blocked (an OpenMind-sized fingerprint or preprocessing hung). Run in a child process so that
    a regression fails on the timeout instead of hanging the suite."""
    script = tmp_path / "many.py"
    script.write_text(_MANY_TASKS_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = sum(v * v for v in range(20000)) - 15000 * 15000
    assert done.stdout.split("\n")[0] == f"20000 [-15000] {expected}", done.stdout


_ORPHAN_SCRIPT = """
import os, sys, time
from pathlib import Path
from nnssl.parallel import map_unordered

def task(args):
    folder, seconds = args
    (Path(folder) / f"{os.getpid()}.pid").write_text("")
    time.sleep(seconds)
    return seconds

def crashed(args, reason):
    return reason

if __name__ == "__main__":
    folder = sys.argv[1]
    # one worker stays busy for 10 minutes, the other finishes at once and then waits for work
    for _ in map_unordered(task, [(folder, 600.0), (folder, 0.0), (folder, 600.0)], 2, crashed):
        pass
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (exited, not yet reaped) is not running
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_their_parent_is_killed_with_sigkill(tmp_path: Path) -> None:
    script = tmp_path / "orphans.py"
    script.write_text(_ORPHAN_SCRIPT)
    pids = tmp_path / "pids"
    pids.mkdir()
    parent = subprocess.Popen([sys.executable, str(script), str(pids)])
    try:
        deadline = time.monotonic() + 120
        while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:  # both workers have started a task
            time.sleep(0.1)
        workers = [int(p.stem) for p in pids.iterdir()]
        assert len(workers) >= 2 and all(_alive(pid) for pid in workers)
    finally:
        parent.kill()  # SIGKILL: no cleanup code of the parent runs
        parent.wait()
    deadline = time.monotonic() + 30  # a bound on waiting, not a speed requirement: before the fix they never exit
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert survivors == [], f"workers {survivors} outlived their parent"


def _count_started(args: tuple[str, int]) -> int:
    folder, value = args
    (Path(folder) / f"{value}.started").write_text("")
    time.sleep(0.05)
    return value


def test_closing_the_iterator_early_cancels_the_tasks_not_started(tmp_path: Path) -> None:
    results = map_unordered(_count_started, [(str(tmp_path), i) for i in range(40)], 2, _crashed)
    next(results)
    results.close()
    started = len(list(tmp_path.glob("*.started")))
    assert started < 40, "closing the iterator ran every remaining task"
