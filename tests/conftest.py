"""Shared fixtures: isolated nnssl root folders, demo data, and the gpu marker."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def nnssl_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point nnssl_raw / nnssl_preprocessed / nnssl_results at fresh folders under tmp_path."""
    roots = {}
    for name in ("nnssl_raw", "nnssl_preprocessed", "nnssl_results"):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.setenv(name, str(folder))
        roots[name] = folder
    return roots


@pytest.fixture
def demo_raw_dataset(nnssl_env: dict[str, Path]) -> Path:
    """The shipped demo collection written under $nnssl_raw; returns its pretrain_data.json."""
    from nnssl.data.demo import write_demo_dataset

    return write_demo_dataset()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when no CUDA device is present."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
