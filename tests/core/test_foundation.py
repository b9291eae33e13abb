"""paths, registry and serialization: the small shared pieces everything else uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from nnssl.paths import MissingEnvironmentVariable, preprocessed_folder, resolve_dataset_name
from nnssl.registry import Registry
from nnssl.serialization import atomic_path, integral_floats_to_int, is_temporary, load_json, save_json, to_jsonable


def test_missing_variable_names_it_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("nnssl_preprocessed", raising=False)
    with pytest.raises(MissingEnvironmentVariable, match=r"nnssl_preprocessed.*export nnssl_preprocessed="):
        preprocessed_folder()


def test_dataset_id_resolves_to_one_folder(nnssl_env: dict[str, Path]) -> None:
    (nnssl_env["nnssl_raw"] / "Dataset007_Brains").mkdir()
    (nnssl_env["nnssl_preprocessed"] / "Dataset007_Brains").mkdir()
    assert resolve_dataset_name(7) == "Dataset007_Brains"
    assert resolve_dataset_name("Dataset007_Brains") == "Dataset007_Brains"
    with pytest.raises(FileNotFoundError, match="Dataset008_"):
        resolve_dataset_name("8")
    (nnssl_env["nnssl_results"] / "Dataset007_Other").mkdir()
    with pytest.raises(ValueError, match="ambiguous"):
        resolve_dataset_name(7)
    with pytest.raises(ValueError, match="DatasetXXX_Name"):
        resolve_dataset_name("Brains")


def test_registry_lookup_suggests_close_names() -> None:
    registry: Registry[int] = Registry("preset")
    registry.add("BaseMAETrainer", 1)
    registry.add("BaseMAETrainer_BS8", 2)
    assert registry.get("BaseMAETrainer_BS8") == 2
    assert registry.names() == ["BaseMAETrainer", "BaseMAETrainer_BS8"]
    with pytest.raises(KeyError, match="Did you mean: BaseMAETrainer_BS8"):
        registry.get("BaseMAETrainer_BS9")
    with pytest.raises(KeyError, match="already registered"):
        registry.add("BaseMAETrainer", 3)


def test_to_jsonable_and_integral_floats() -> None:
    @dataclass
    class Inner:
        spacing: tuple[float, ...]
        array: np.ndarray

    value = to_jsonable({"x": Inner((1.0, 0.5), np.arange(3)), "n": np.int64(4), "p": Path("/a")})
    assert value == {"x": {"spacing": [1.0, 0.5], "array": [0, 1, 2]}, "n": 4, "p": "/a"}
    assert integral_floats_to_int({"s": [1.0, 0.5, 2.0]}) == {"s": [1, 0.5, 2]}


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        assert is_temporary(tmp)
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    save_json({"a": [1, 2]}, target)
    assert load_json(target) == {"a": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_load_json_names_the_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        load_json(broken)
    with pytest.raises(ValueError):
        save_json({"nan": float("nan")}, tmp_path / "nan.json")
