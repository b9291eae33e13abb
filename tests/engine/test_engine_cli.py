"""nnssl_train: --list, and errors for people (exit code 1, message, no traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_toy import toy_config

from nnssl.cli.train import main
from nnssl.presets import config_to_dict


def test_list_prints_presets(capsys: pytest.CaptureFixture[str]) -> None:
    from nnssl.presets import PRESETS

    assert main(["--list"]) == 0
    presets_part, _, methods_part = capsys.readouterr().out.partition("\n\n")
    lines = presets_part.splitlines()
    assert lines[0].split() == ["preset", "method", "architecture", "description"]
    # then one line per method by backbone family, with upstream's names; SparK is CNN-only
    method_rows = {line.split()[0]: line for line in methods_part.splitlines()[2:]}
    assert "BaseMAETrainer" in method_rows["MAE"] and "BaseEvaMAETrainer" in method_rows["MAE"]
    assert "SparkMAETrainer" in method_rows["SparK"] and "CNN-only" in method_rows["SparK"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["BaseMAETrainer"][:2] == ["MAE", "ResEncL"]
    assert rows["BaseEvaMAETrainer_BS8"][:2] == ["MAE", "PrimusM"]
    assert rows["DemoMAE_ResEncTiny"][:2] == ["MAE", "ResEncTiny"]
    assert len(lines) == len(PRESETS) + 1  # one line per preset
    described = [line for line in lines[1:] if PRESETS.get(line.split()[0]).description]
    for line in described:
        assert line.endswith(PRESETS.get(line.split()[0]).description.splitlines()[0]), line
    assert " ".join(rows["BaseMAETrainer"][2:]).startswith("MAE on ResEnc-L")


def test_unknown_preset_suggests_names(nnssl_env, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["Dataset001_Test", "onemmiso", "-tr", "BaseMAETrainer_BS88", "-device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "Unknown preset 'BaseMAETrainer_BS88'" in err and "BaseMAETrainer_BS8" in err and "--list" in err
    assert "Traceback" not in err


def test_unknown_override_key(nnssl_env, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["Dataset001_Test", "onemmiso", "-device", "cpu", "--set", "optim.learning_rate=1"]) == 1
    assert "Unknown configuration key 'optim.learning_rate'" in capsys.readouterr().err


def test_missing_preprocessed_data_names_the_command(nnssl_env, capsys: pytest.CaptureFixture[str]) -> None:
    root = nnssl_env["nnssl_preprocessed"] / "Dataset004_Demo"
    root.mkdir()
    assert main(["4", "onemmiso", "-tr", "ToyPreset", "-device", "cpu"]) == 1
    assert "nnssl_plan_and_preprocess -d 4 -c onemmiso" in capsys.readouterr().err
    (root / "nnsslPlans.json").write_text('{"configurations": {"onemmiso": {"patch_size": [160, 160, 160]}}}')
    assert main(["Dataset004_Demo", "onemmiso", "-tr", "ToyPreset", "-device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "nnssl_preprocess -d 4 -c onemmiso" in err and "Traceback" not in err
    assert main(["Dataset004_Demo", "median", "-tr", "ToyPreset", "-device", "cpu"]) == 1
    assert "Configuration 'median' is not in" in capsys.readouterr().err


def test_resume_refuses_to_change_the_stored_batch_size(nnssl_env, capsys: pytest.CaptureFixture[str]) -> None:
    folder = nnssl_env["nnssl_results"] / "Dataset004_Demo" / "ToyPreset__nnsslPlans__onemmiso" / "fold_all"
    folder.mkdir(parents=True)
    saved = config_to_dict(toy_config("train.batch_size=4"))
    torch.save({"config": saved, "network_weights": {}}, folder / "checkpoint_latest.pth")
    args = ["Dataset004_Demo", "onemmiso", "-tr", "ToyPreset", "-device", "cpu", "--c"]
    assert main([*args, "--set", "train.batch_size=2"]) == 1
    err = capsys.readouterr().err
    assert "train.batch_size: 4 -> 2" in err and "checkpoint_latest.pth" in err and "Traceback" not in err
    assert (folder / "checkpoint_latest.pth").is_file()


def test_corrupted_checkpoint_on_resume_is_named_not_deleted(nnssl_env, capsys) -> None:
    folder = nnssl_env["nnssl_results"] / "Dataset004_Demo" / "ToyPreset__nnsslPlans__onemmiso" / "fold_all"
    folder.mkdir(parents=True)
    (folder / "checkpoint_final.pth").write_bytes(b"garbage")
    assert main(["Dataset004_Demo", "onemmiso", "-tr", "ToyPreset", "-device", "cpu", "--c"]) == 1
    assert "checkpoint_final.pth" in capsys.readouterr().err
    assert Path(folder / "checkpoint_final.pth").read_bytes() == b"garbage"


def test_missing_results_variable(monkeypatch, capsys) -> None:
    monkeypatch.delenv("nnssl_results", raising=False)
    assert main(["Dataset004_Demo", "onemmiso", "-tr", "ToyPreset", "-device", "cpu"]) == 1
    assert "nnssl_results" in capsys.readouterr().err
