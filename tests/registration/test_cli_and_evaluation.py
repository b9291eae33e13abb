"""``nnssl_register`` end to end (MIND-SSC on the demo pair, a tiny encoder), its errors, pairs in evaluation
sets and the registration scores of an encoder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from nnssl.cli.register import main
from nnssl.evaluation.api import prepare_eval_set
from nnssl.evaluation.eval_set import EvalSetError, load_eval_set, parse_eval_set
from nnssl.registration.evaluation import evaluate_registration
from nnssl.registration.pipeline import registration_plan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluation"))
from helpers import synthetic_eval_set, tiny_payload  # noqa: E402

PAIR = load_eval_set("demo_registration")


def test_mind_registration_of_the_demo_pair_writes_every_output(tmp_path, capsys):
    fixed, moving = PAIR.case("icbm152"), PAIR.case("itk_subject")
    out = tmp_path / "out"
    argv = [fixed.image, moving.image, "--mind", "--affine", "--spacing", "4", "-o", str(out), "--figure"]
    argv += ["--fixed_label", fixed.label, "--moving_label", moving.label, "--moving_mask", moving.mask]
    argv += ["--label_names", '{"GM": 1, "WM": 2}', "--adam_iterations", "40"]
    assert main(argv) == 0
    assert "mean Dice after affine" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mean_dice_before"] < 0.05  # the two brains lie in different world positions
    assert metrics["mean_dice_after_affine"] > 0.4
    assert set(metrics["dice_after"]) == {"GM", "WM"}
    assert metrics["settings"]["convex_adam"]["adam_iterations"] == 40
    fixed_image = nib.load(out / "fixed.nii.gz")
    field = nib.load(out / "displacement.nii.gz")
    assert field.shape == (*fixed_image.shape, 1, 3)
    assert field.header.get_intent()[0] == "displacement vector"
    assert np.allclose(field.affine, fixed_image.affine)
    warped_label = np.asarray(nib.load(out / "warped_label.nii.gz").dataobj)
    assert set(np.unique(warped_label)) <= {0, 1, 2}
    assert (out / "figure.png").stat().st_size > 20_000


def synthetic_pair(folder: Path) -> Path:
    """Two blob volumes of the synthetic evaluation set as a registration pair."""
    path = synthetic_eval_set(folder)
    data = json.loads(path.read_text())
    data["pairs"] = [{"fixed": "case1", "moving": "case0"}]
    path.write_text(json.dumps(data))
    return path


def test_registration_with_a_checkpoint_encoder(tmp_path):
    torch.save(tiny_payload("ResEncTiny"), tmp_path / "encoder.pth")
    pair = load_eval_set(synthetic_pair(tmp_path))
    a, b = pair.case("case1"), pair.case("case0")
    out = tmp_path / "out"
    argv = [a.image, b.image, "-c", str(tmp_path / "encoder.pth"), "--pca", "4", "-o", str(out)]
    argv += ["--fixed_label", a.label, "--moving_label", b.label, "--adam_iterations", "10", "-device", "cpu"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["features"].endswith("(stages [0, 1, 2, 3])")  # every map of stride <= 8
    assert metrics["feature_channels"] == 4 and len(metrics["pca_explained_variance_ratio"]) == 4
    assert 0.0 <= metrics["mean_dice_after"] <= 1.0


def test_command_line_errors_name_the_problem(tmp_path, capsys):
    assert main(["nope.nii.gz", "nope2.nii.gz", "--mind", "-o", str(tmp_path)]) == 1
    assert "fixed nope.nii.gz does not exist" in capsys.readouterr().err
    image = PAIR.case("icbm152").image
    assert main([image, image, "--mind", "-o", str(tmp_path), "--smoothing_kernel", "2"]) == 1
    assert "smoothing_kernel must be an odd number" in capsys.readouterr().err
    assert main([image, image, "--mind", "--random_init", "-o", str(tmp_path)]) == 1
    assert "--random_init needs -c" in capsys.readouterr().err


def test_pairs_are_validated_with_their_location(tmp_path):
    data = json.loads(synthetic_pair(tmp_path).read_text())
    data["cases"].append({"id": "plain", "image": data["cases"][0]["image"], "split": "test"})
    data["pairs"] = [
        {"fixed": "case1", "moving": "missing"},
        {"fixed": "case1", "moving": "plain"},
        {"fixed": "case0", "moving": "case0"},
        {"fixed": "case1", "moving": "case0", "affine": "yes"},
    ]
    with pytest.raises(EvalSetError) as err:
        parse_eval_set(data, tmp_path / "eval_set.json")
    text = str(err.value)
    assert "pairs[0].moving: 'missing' is not a case id" in text
    assert "pairs[1].moving: case 'plain' has no label map" in text
    assert "pairs[2]: fixed and moving are the same case 'case0'" in text
    assert "pairs[3].affine: 'yes' must be true or false" in text


def test_registration_scores_of_mind_on_a_pair_set(tmp_path):
    pair = load_eval_set(synthetic_pair(tmp_path))
    prepared = prepare_eval_set(pair, registration_plan(1.0))
    scores = evaluate_registration(None, pair, prepared)
    assert {"registration/mean_dice", "registration/sdlogj", "registration/folding_percent"} <= set(scores)
    assert {"registration/dice_bright", "registration/dice_dark"} <= set(scores)
    assert 0.0 <= scores["registration/mean_dice"] <= 1.0
