"""Signals: SIGTERM/SIGINT to a whole process group (workers included) stop a run cleanly after saving
checkpoint_latest; a Python caller of run_training gets the signal back afterwards."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch
from run_helpers import QUICK_RUN, run_folder

from nnssl.engine import Trainer
from nnssl.engine.run import RunRequest, TrainingStopped, run_training

LONG_RUN = [a if a != "data.num_workers=0" else "data.num_workers=2" for a in QUICK_RUN] + [
    "--set",
    "train.iterations_per_epoch=100000",
    "--set",
    "train.num_epochs=1",
]


def _group_members(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _signal_group_after_first_step(sig: int, env: dict[str, str]) -> tuple[int, str, int]:
    """Start nnssl_train in its own process group, wait for the first step, signal the group; (rc, output, members)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nnssl.cli.train", *LONG_RUN],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # a process group of its own, as a SLURM job step
    )
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "First step done" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(timeout=240), "".join(lines)
        members = len(_group_members(proc.pid))
        os.killpg(proc.pid, sig)  # what scancel / a SLURM time limit / Ctrl-C in a terminal do
        rc = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    return rc, "".join(lines), members


@pytest.mark.parametrize(
    ("sig", "code"),
    [
        (signal.SIGTERM, 0),
        (signal.SIGINT, 130),
        pytest.param(signal.SIGUSR1, 0, marks=pytest.mark.slow),
    ],
)
def test_signal_to_the_process_group_saves_latest_and_exits_cleanly(demo_env: Path, sig: int, code: int) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rc, output, members = _signal_group_after_first_step(sig, env)
    assert members >= 3, output  # the main process and its 2 DataLoader workers all got the signal
    assert rc == code, output
    assert "Traceback" not in output and "DataLoader worker" not in output, output
    name = signal.Signals(sig).name
    assert f"Received {name}: stopping after the current iteration" in output
    assert f"nnssl_train: stopped by {name}; continue with --c" in output
    latest = torch.load(run_folder(demo_env) / "checkpoint_latest.pth", weights_only=True)
    assert latest["global_step"] >= 1 and latest["epoch_progress"]["iteration"] == latest["global_step"]
    assert f"Stopped at epoch 0, step {latest['global_step']} ({name})" in output


def _request() -> RunRequest:
    overrides = tuple(a for a in QUICK_RUN[6:] if a != "--set")
    return RunRequest(
        dataset="1", configuration="onemmiso", preset="DemoMAE_ResEncTiny", device="cpu", overrides=overrides
    )


@pytest.fixture
def signal_at(monkeypatch: pytest.MonkeyPatch):
    """``signal_at(sig, step)``: the run sends ``sig`` to its own process during global step ``step``."""
    original = Trainer.train_step
    chosen: dict[str, int] = {}

    def train_step(self, batch):
        result = original(self, batch)
        if result.step == chosen["step"]:
            os.kill(os.getpid(), chosen["sig"])
        return result

    monkeypatch.setattr(Trainer, "train_step", train_step)
    return lambda sig, step: chosen.update(sig=sig, step=step)


def test_a_python_caller_gets_sigterm_back_after_the_graceful_stop(demo_env: Path, signal_at) -> None:
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        signal_at(signal.SIGTERM, 1)
        folder = run_training(_request())
        assert received == [signal.SIGTERM]  # re-raised to the caller's handler once the checkpoint was saved
        assert torch.load(folder / "checkpoint_latest.pth", weights_only=True)["global_step"] == 2
        received.clear()
        signal_at(signal.SIGTERM, 4)
        with pytest.raises(TrainingStopped) as info:
            run_training(dataclasses.replace(_request(), resume=True), reraise_signal=False)
        assert info.value.signal_name == "SIGTERM" and received == []  # the CLI's choice: no re-raise
        assert torch.load(folder / "checkpoint_latest.pth", weights_only=True)["global_step"] == 5
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_ctrl_c_in_a_python_caller_saves_then_raises_keyboard_interrupt(demo_env: Path, signal_at) -> None:
    # The caller this test is about has Python's default Ctrl-C handler. In some full-suite runs an earlier test (not
    # identified yet) left another SIGINT handler in the pytest process, and the run then correctly handed the signal
    # to that handler instead: say so in the warnings summary, and set the default for this test.
    found = signal.getsignal(signal.SIGINT)
    if found is not signal.default_int_handler:
        warnings.warn(f"SIGINT handler left by an earlier test: {found!r}", stacklevel=1)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        signal_at(signal.SIGINT, 1)
        with pytest.raises(KeyboardInterrupt):
            run_training(_request())
        assert torch.load(run_folder(demo_env) / "checkpoint_latest.pth", weights_only=True)["global_step"] == 2
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
