"""Start-up: the data path never loads the engine or the methods, and console scripts parse --help without torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

DATA_PATH = [
    "nnssl.data.case_store",
    "nnssl.data.sampling",
    "nnssl.data.loader",
    "nnssl.data.splits",
    "nnssl.transforms.spatial",
    "nnssl.preprocessing.verify",
]


def _console_scripts() -> list[str]:
    """Every ``nnssl.cli`` module behind a console script of pyproject.toml (``name = "nnssl.cli.X:main"``)."""
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    return sorted(set(re.findall(r'^nnssl_\w+ = "nnssl\.cli\.(\w+):main"', text, flags=re.MULTILINE)))


CLIS = _console_scripts()


def _loaded_after(code: str) -> list[str]:
    """Module names loaded by ``code`` in a fresh interpreter."""
    probe = f"import sys\n{code}\nimport json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_data_path_does_not_import_the_engine_or_methods() -> None:
    loaded = _loaded_after("\n".join(f"import {m}" for m in DATA_PATH))
    heavy = [m for m in loaded if m.split(".")[0] in ("timm", "torchvision", "dynamic_network_architectures")]
    ours = [m for m in loaded if m.startswith(("nnssl.engine", "nnssl.methods", "nnssl.architectures"))]
    assert not heavy and not ours, (heavy, ours)


@pytest.mark.parametrize("cli", CLIS)
def test_console_scripts_build_their_parser_without_torch(cli: str) -> None:
    loaded = _loaded_after(f"from nnssl.cli.{cli} import build_parser\nbuild_parser()")
    assert not [m for m in loaded if m.split(".")[0] in ("torch", "SimpleITK", "timm", "scipy")], cli
