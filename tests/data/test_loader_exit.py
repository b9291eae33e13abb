"""Loader workers ignore SIGTERM (a scheduler signals the whole process group; the main process saves first), so
multiprocessing's exit-time terminate() cannot stop them: a program that exits with a loader still referenced
waited for its workers forever (CI hung after the last test: pytest's exception info kept a loader alive)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from nnssl.data.case_store import write_case

_SCRIPT = """
import itertools, os, sys
from nnssl.config import DataConfig, RunConfig, TrainConfig
from nnssl.data.loader import build_train_loader

paths = sys.argv[1:]
cfg = RunConfig(preset="t", method="MAE", architecture="ResEncTiny",
                train=TrainConfig(batch_size=2, patch_size=(16, 16, 16), seed=1), data=DataConfig(num_workers=2))
KEPT = build_train_loader(paths, cfg, None)  # still referenced at exit, workers running
batches = list(itertools.islice(KEPT.make_iter(0), 2))
workers = [w.pid for w in KEPT.loader._iterator._workers]
print(" ".join(str(pid) for pid in workers), flush=True)
"""


def _cases(root: Path, n: int = 2) -> list[str]:
    rng = np.random.default_rng(0)
    for i in range(n):
        write_case(root / f"case{i}", rng.standard_normal((1, 24, 24, 24)).astype(np.float32), {"unique_id": f"u{i}"})
    return [str(root / f"case{i}.b2nd") for i in range(n)]


def test_a_program_exits_while_its_loader_workers_still_run(tmp_path: Path) -> None:
    script = tmp_path / "exit_with_loader.py"
    script.write_text(_SCRIPT)
    done = subprocess.run([sys.executable, str(script), *_cases(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 2
    for pid in pids:  # the workers are gone too, not orphaned
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
