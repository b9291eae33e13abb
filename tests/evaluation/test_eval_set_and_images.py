"""The evaluation-set JSON is validated with every problem named; images keep their world geometry."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from nnssl.evaluation.eval_set import EvalSetError, load_eval_set
from nnssl.evaluation.images import prepare_image

from .helpers import plan_for, synthetic_eval_set, write_nifti


def test_shipped_demo_set_is_valid():
    demo = load_eval_set("demo")
    assert demo.has_dense_task and demo.num_classes == 7
    assert [c.id for c in demo.split("train", labelled=True)] == ["icbm152"]
    assert [c.id for c in demo.split("test", labelled=True)] == ["colin27"]


def test_every_problem_is_named_with_its_location(tmp_path):
    synthetic_eval_set(tmp_path)
    write_nifti(np.zeros((5, 5, 5), np.uint8), tmp_path / "small_label.nii.gz")
    data = {
        "labels": {"tumour": 1, "edema": 1},
        "classes": ["a"],
        "cases": [
            {"id": "x", "image": "case0.nii.gz", "label": "small_label.nii.gz", "split": "train"},
            {"id": "x", "image": "missing.nii.gz", "split": "validation", "class": "b", "extra": 1},
        ],
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(EvalSetError) as err:
        load_eval_set(path)
    text = str(err.value)
    for expected in (
        "labels: no entry has value 0",
        "labels: values repeat",
        "cases[0]: the label map",
        "is not on the grid",
        "cases[1].id: 'x' is used twice",
        "cases[1].split: 'validation'",
        "cases[1].image:",
        "does not exist",
        "cases[1].class: 'b' is not among",
        "cases[1]: unknown keys ['extra']",
    ):
        assert expected in text, expected


def test_invalid_json_names_line(tmp_path):
    path = tmp_path / "e.json"
    path.write_text('{"cases": [\n}')
    with pytest.raises(EvalSetError, match="line 2"):
        load_eval_set(path)


def test_prepared_image_keeps_world_positions(tmp_path):
    """A marker voxel lands, after reorientation, cropping and resampling to 1 mm, where the affine says it is."""
    shape = (30, 24, 20)
    image = np.full(shape, 1.0, dtype=np.float32)
    image[:2] = 0  # cropped away as background
    marker = (17, 9, 12)
    image[marker] = 50.0
    affine = np.array([[-2.0, 0, 0, 30.0], [0, 1.5, 0, -20.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])  # LAS, anisotropic
    path = write_nifti(image, tmp_path / "img.nii.gz", affine)
    label = np.zeros(shape, dtype=np.uint8)
    label[marker] = 1
    label_path = write_nifti(label, tmp_path / "lab.nii.gz", affine)
    prepared = prepare_image(path, plan_for("ResEncTiny"), label_path)
    peak = np.unravel_index(np.argmax(prepared.data[0]), prepared.shape)
    world = (prepared.affine @ np.r_[peak, 1])[:3]
    expected = (affine @ np.r_[marker, 1])[:3]
    assert np.all(np.abs(world - expected) <= np.array([2.0, 1.5, 3.0]) / 2 + 0.51)
    assert np.allclose(np.abs(prepared.affine[:3, :3]).sum(0), 1.0)  # 1 mm voxels
    assert prepared.label is not None and prepared.label.shape == prepared.shape and prepared.label.max() == 1
    assert nib.aff2axcodes(affine) == ("L", "A", "S")
