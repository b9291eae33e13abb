"""Shared pieces of the evaluation tests: a plans dict, tiny encoders, synthetic labelled NIfTI sets."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from nnssl.architectures import ARCHITECTURES
from nnssl.architectures.adaptation_plan import build_adaptation_plan
from nnssl.backbones import Features
from nnssl.evaluation.encoder import FrozenEncoder

PLANS = {
    "transpose_forward": [0, 1, 2],
    "configurations": {
        "onemmiso": {
            "data_identifier": "nnsslPlans_onemmiso",
            "preprocessor_name": "DefaultPreprocessor",
            "spacing_style": "onemmiso",
            "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False],
            "spacing": [1.0, 1.0, 1.0],
            "patch_size": [160, 160, 160],
        }
    },
}


def plan_for(architecture: str, patch=(32, 32, 32), spacing=(1.0, 1.0, 1.0)) -> dict:
    plans = json.loads(json.dumps(PLANS))
    plans["configurations"]["onemmiso"]["spacing"] = list(spacing)
    return build_adaptation_plan(ARCHITECTURES.get(architecture), plans, "onemmiso", patch, 1)


def tiny_payload(architecture: str, patch=(32, 32, 32), seed: int = 0) -> dict:
    """``network_weights`` + ``nnssl_adaptation_plan`` of a freshly initialised tiny network."""
    torch.manual_seed(seed)
    network = ARCHITECTURES.get(architecture).build(1, 1, patch)
    return {"network_weights": network.state_dict(), "nnssl_adaptation_plan": plan_for(architecture, patch)}


class PoolingBackbone(nn.Module):
    """A purely local 'encoder': average pooling by ``stride`` (its features are known in closed form)."""

    family = "cnn"

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.scale = nn.Parameter(torch.ones(1))

    def map_shapes(self, input_size):
        grid = tuple(int(s) // self.stride for s in input_size)
        return [(1, grid), (1, grid)]

    def encode(self, x: torch.Tensor) -> Features:
        m = torch.nn.functional.avg_pool3d(x, self.stride) * self.scale
        return Features(maps=[m, m * 2], native_grid=tuple(m.shape[2:]))


def pooling_encoder(stride: int = 4, window=(16, 16, 16)) -> FrozenEncoder:
    return FrozenEncoder(PoolingBackbone(stride), {"pretrain_num_input_channels": 1}, window)


def write_nifti(array: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def synthetic_eval_set(folder: Path, shape=(40, 36, 32), num_train: int = 1) -> Path:
    """Volumes with bright blobs labelled 1 and dark blobs labelled 2 on a noisy background, and the JSON."""
    rng = np.random.default_rng(0)
    cases = []
    for index in range(num_train + 1):
        image = rng.normal(0, 0.1, size=shape).astype(np.float32) + 1.0
        label = np.zeros(shape, dtype=np.uint8)
        for value, intensity in ((1, 3.0), (2, -1.0)):
            for _ in range(3):
                centre = [rng.integers(6, s - 6) for s in shape]
                box = tuple(slice(c - 4, c + 4) for c in centre)
                image[box] = intensity + rng.normal(0, 0.1, size=(8, 8, 8))
                label[box] = value
        write_nifti(image, folder / f"case{index}.nii.gz")
        write_nifti(label, folder / f"case{index}_label.nii.gz")
        split = "train" if index < num_train else "test"
        cases.append(
            {"id": f"case{index}", "image": f"case{index}.nii.gz", "label": f"case{index}_label.nii.gz", "split": split}
        )
    data = {"name": "blobs", "labels": {"background": 0, "bright": 1, "dark": 2}, "cases": cases}
    path = folder / "eval_set.json"
    path.write_text(json.dumps(data))
    return path
