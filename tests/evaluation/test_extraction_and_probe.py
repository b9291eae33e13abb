"""Extraction and probe end to end: the CLIs, and every Demo preset's checkpoint through both."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from nnssl.architectures.adaptation_plan import build_adaptation_plan
from nnssl.cli.extract_features import main as extract_main
from nnssl.cli.probe import main as probe_main
from nnssl.config import architecture_of
from nnssl.evaluation.api import FeatureSettings, evaluate_encoder
from nnssl.evaluation.encoder import FrozenEncoder
from nnssl.evaluation.eval_set import load_eval_set
from nnssl.methods import METHODS
from nnssl.presets import preset_table, resolve_config

from .helpers import PLANS, synthetic_eval_set, tiny_payload


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(tiny_payload("ResEncTiny"), path)
    return path


def test_extract_features_cli_writes_maps_embeddings_and_a_shared_pca(tmp_path, checkpoint):
    synthetic_eval_set(tmp_path)
    out = tmp_path / "features"
    code = extract_main(
        [
            str(checkpoint),
            "-i",
            str(tmp_path / "case0.nii.gz"),
            str(tmp_path / "case1.nii.gz"),
            "-o",
            str(out),
            "--pca",
            "3",
            "--stages",
            "2,3",
            "-device",
            "cpu",
        ]
    )
    assert code == 0
    summary = json.loads((out / "features.json").read_text())
    assert summary["images"] == ["case0", "case1"] and summary["stages"] == [2, 3]
    maps = nib.load(out / "case0_features.nii.gz")
    assert maps.shape == (8, 9, 10, 32 + 64)  # 40x36x32 voxels (canonical z, y, x order) at stride 4, channels last
    assert np.allclose(np.abs(maps.affine[:3, :3]).sum(0), 4.0)  # 1 mm voxels, 4 per cell
    # cell 0 covers the LPS-first corner: voxels x 39..36, y 35..32, z 0..3 of the RAS-identity image
    assert np.allclose(maps.affine @ [0, 0, 0, 1], [37.5, 33.5, 1.5, 1])
    assert np.load(out / "embeddings.npy").shape == (2, 8 + 16 + 32 + 64)
    pca = nib.load(out / "case1_pca.nii.gz")
    assert pca.shape == (8, 9, 10, 3) and np.allclose(pca.affine, maps.affine)
    basis = np.load(out / "pca_basis.npz")
    assert basis["components"].shape == (3, 96)


def test_extract_features_reports_a_bad_image_and_keeps_the_others(tmp_path, checkpoint):
    synthetic_eval_set(tmp_path)
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    code = extract_main(
        [
            str(checkpoint),
            "-i",
            str(tmp_path / "case0.nii.gz"),
            str(tmp_path / "broken.nii.gz"),
            "-o",
            str(tmp_path / "out"),
            "--no_maps",
        ]
    )
    summary = json.loads((tmp_path / "out" / "features.json").read_text())
    assert code == 2 and summary["images"] == ["case0"] and "broken" in summary["failures"]


def test_probe_cli_compares_random_init_and_writes_scores(tmp_path, checkpoint, capsys):
    eval_set = synthetic_eval_set(tmp_path, num_train=2)
    out = tmp_path / "scores.json"
    assert (
        probe_main([str(checkpoint), "--eval_set", str(eval_set), "--random_init", "-o", str(out), "--stages", "0,1"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "probe/dice_bright" in printed and "random init" in printed
    scores = json.loads(out.read_text())
    assert set(scores) == {"random init", "pre-trained"}
    # bright and dark blobs differ from the background at the finest stages: easy for any encoder
    assert scores["pre-trained"]["scores"]["probe/dice_bright"] > 0.6


def test_probe_cli_names_a_file_without_weights(tmp_path):
    path = tmp_path / "nothing.pth"
    torch.save({"something": 1}, path)
    assert probe_main([str(path), "--eval_set", "demo"]) == 1


DEMO_PRESETS = sorted(name for name, *_ in preset_table() if name.startswith("Demo"))


@pytest.mark.parametrize("preset", DEMO_PRESETS)
def test_every_demo_preset_checkpoint_goes_through_extraction_and_probe(preset, tmp_path):
    cfg = resolve_config(preset)
    arch = architecture_of(cfg)  # with the preset's arch.* keys
    torch.manual_seed(0)
    method = METHODS.get(cfg.method)(cfg.method_cfg, arch, cfg.train.patch_size)
    patch = method.network_patch_size()
    payload = {
        "network_weights": method.backbone().state_dict(),
        "nnssl_adaptation_plan": build_adaptation_plan(arch, PLANS, "onemmiso", patch, 1),
    }
    encoder = FrozenEncoder.from_weights(payload)
    assert encoder.window == tuple(patch)
    eval_set = load_eval_set(synthetic_eval_set(tmp_path, shape=tuple(patch)))  # one window per image
    report = evaluate_encoder(encoder, eval_set, settings=FeatureSettings(overlap=0.0), max_voxels=3000)
    assert 0.0 <= report.scores()["probe/mean_dice"] <= 1.0
