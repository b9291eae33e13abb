"""Engine fixtures: the shipped demo data preprocessed once per session, and a fresh results folder per test."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_preprocessed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with ``nnssl_raw`` and ``nnssl_preprocessed`` holding the demo dataset, preprocessed for onemmiso."""
    from nnssl.cli.plan_and_preprocess import main as plan_and_preprocess
    from nnssl.data.demo import write_demo_dataset

    root = tmp_path_factory.mktemp("demo_data")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("nnssl_raw", "nnssl_preprocessed", "nnssl_results"):
            (root / name).mkdir()
            mp.setenv(name, str(root / name))
        write_demo_dataset()
        assert plan_and_preprocess(["-d", "1", "-c", "onemmiso", "-np", "1", "-npfp", "1", "--no_progress"]) == 0
    return root


@pytest.fixture
def demo_env(demo_preprocessed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The preprocessed demo data and an empty ``nnssl_results`` (returned) for this test."""
    for name in ("nnssl_raw", "nnssl_preprocessed"):
        monkeypatch.setenv(name, str(demo_preprocessed / name))
    for name in ("nnUNet_n_proc_DA", "nnUNet_compile"):
        monkeypatch.delenv(name, raising=False)
    results = tmp_path / "results"
    results.mkdir()
    monkeypatch.setenv("nnssl_results", str(results))
    return results
