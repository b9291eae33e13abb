"""A method in another installed package registers itself and its presets through the ``nnssl.methods`` entry point.

The package is built in the test from the module printed in ``documentation/adding_a_method.md`` (so the how-to is
tested as written): a package folder plus a ``.dist-info`` with ``entry_points.txt`` on ``PYTHONPATH`` is an
installed distribution for ``importlib.metadata``. A fresh interpreter then sees the method, its presets, the
contract test passes on it, and a broken plugin is skipped with a warning.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOWTO = ROOT / "documentation" / "adding_a_method.md"


def plugin_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", HOWTO.read_text(), flags=re.S)
    module = [b for b in blocks if b.startswith("# rotation_plugin/__init__.py")]
    assert len(module) == 1, "adding_a_method.md must print the plugin module exactly once"
    return module[0]


def install_distribution(site: Path, name: str, source: str, entry: str) -> None:
    package = site / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(source)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[nnssl.methods]\n{name} = {entry}\n")


def run(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    install_distribution(folder, "rotation_plugin", plugin_source(), "rotation_plugin:register")
    return folder


def test_plugin_method_and_presets_are_registered(site: Path) -> None:
    code = (
        "from nnssl.presets import PRESETS, resolve_config, flatten_preset\n"
        "from nnssl.methods import METHODS\n"
        "print('METHOD', 'RotationPrediction' in METHODS)\n"
        "for name in ('RotationTrainer', 'RotationEvaTrainer', 'DemoRotation_ResEncTiny', 'DemoRotation_PrimusTiny'):\n"
        "    print('PRESET', name, flatten_preset(name)[:2], resolve_config(name).optim.name)\n"
    )
    result = run(site, "-c", code)
    assert result.returncode == 0, result.stderr
    assert "METHOD True" in result.stdout
    assert "PRESET RotationTrainer ('RotationPrediction', 'ResEncL') sgd" in result.stdout
    assert "PRESET RotationEvaTrainer ('RotationPrediction', 'PrimusM') adamw" in result.stdout
    assert "PRESET DemoRotation_PrimusTiny ('RotationPrediction', 'PrimusTiny') adamw" in result.stdout


def test_contract_test_exercises_the_plugin_method(site: Path) -> None:
    result = run(
        site, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/methods/test_method_contract.py", "-k", "Rotation"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "3 passed" in result.stdout  # two backbone families + the presets check


def test_a_broken_plugin_is_skipped_with_a_warning(tmp_path: Path) -> None:
    install_distribution(tmp_path, "broken_plugin", "raise ImportError('missing dependency xyz')\n", "broken_plugin")
    result = run(tmp_path, "-c", "from nnssl.presets import PRESETS; print(len(PRESETS.names()))")
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) > 50  # nnssl's own presets are all there
    assert "broken_plugin" in result.stderr and "missing dependency xyz" in result.stderr
