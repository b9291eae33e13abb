"""Feedback without a terminal: no progress-bar floods in log files; no FutureWarning at start."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from nnssl.progress import show_progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_only_on_an_interactive_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LSF_JOBID", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    assert show_progress(True, _Terminal())
    assert not show_progress(False, _Terminal())
    assert not show_progress(True, io.StringIO())  # a file or a pipe
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert not show_progress(True, _Terminal())


def test_fingerprint_writes_no_carriage_returns_into_a_log(demo_raw_dataset, nnssl_env, capsys) -> None:
    from nnssl.cli.extract_fingerprint import main

    assert main(["-d", "1", "-np", "1"]) == 0  # progress requested (the default), stderr is not a terminal
    err = capsys.readouterr().err
    assert "\r" not in err and "fingerprint (headers)" not in err
    assert (nnssl_env["nnssl_preprocessed"] / "Dataset001_Demo" / "dataset_fingerprint.json").is_file()


def test_no_future_warning_at_start() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning", "-c", "import nnssl.cli.train, nnssl.methods"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
