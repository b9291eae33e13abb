"""Loader workers ignore SIGTERM (a scheduler signals the whole process group; the main process saves first), so
multiprocessing's exit-time terminate() cannot stop them: a program that exited with a loader or its iterator still
referenced, or after a worker had raised (torch's shutdown of the collected iterator did not reach that worker),
waited for its workers forever. CI hung that way after the last test (tests/data/test_unreadable_cases.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnssl.data.case_store import write_case

_SCRIPT = """
import gc, sys
from nnssl.config import DataConfig, RunConfig, TrainConfig
from nnssl.data.loader import build_train_loader

cfg = RunConfig(preset="t", method="MAE", architecture="ResEncTiny",
                train=TrainConfig(batch_size=2, patch_size=(16, 16, 16), seed=1), data=DataConfig(num_workers=1))
KEEP = sys.argv.pop(1)
if KEEP == "raised":  # every case unreadable: the workers raise UnreadableCasesError
    for path in sys.argv[1:]:
        data = bytearray(open(path, "rb").read())
        data[int(len(data) * 0.9):int(len(data) * 0.97)] = b"\\xff" * (int(len(data) * 0.97) - int(len(data) * 0.9))
        open(path, "wb").write(bytes(data))
loader = build_train_loader(sys.argv[1:], cfg, None)
batches = iter(loader.make_iter(0))
workers = [w.pid for w in loader.loader._iterator._workers]
try:
    next(batches)
except Exception as err:  # the traceback keeps the iterator alive, as pytest.raises does
    RAISED = err
    del loader
    gc.collect()
print(" ".join(str(pid) for pid in workers), flush=True)
if KEEP == "raised":
    assert type(RAISED).__name__ == "UnreadableCasesError", RAISED
    del RAISED, batches  # the iterator is collected now; torch's shutdown of it does not stop the raising worker
    gc.collect()
elif KEEP == "loader":
    KEPT = loader  # the loader is still referenced at exit
else:
    KEPT = batches  # only the iterator survives (what an exception traceback keeps), its loader is gone
    del loader
    gc.collect()
"""


def _cases(root: Path, n: int = 2) -> list[str]:
    rng = np.random.default_rng(0)
    for i in range(n):
        write_case(root / f"case{i}", rng.standard_normal((1, 24, 24, 24)).astype(np.float32), {"unique_id": f"u{i}"})
    return [str(root / f"case{i}.b2nd") for i in range(n)]


@pytest.mark.parametrize("kept", ["loader", "iterator", "raised"])
def test_a_program_exits_while_its_loader_workers_still_run(tmp_path: Path, kept: str) -> None:
    script = tmp_path / "exit_with_loader.py"
    script.write_text(_SCRIPT)
    args = [sys.executable, str(script), kept, *_cases(tmp_path)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 1
    for pid in pids:  # the workers are gone too, not orphaned
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
