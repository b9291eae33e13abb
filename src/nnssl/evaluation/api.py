"""Putting a frozen encoder to use: features of images, and probe scores on a labelled evaluation set.

* :func:`extract_to_folder` (``nnssl_extract_features``): every image preprocessed as the checkpoint's plan says,
  dense features by sliding window, written as NIfTI maps that overlay the image (``<name>_features.nii.gz``, channels
  in the 4th dimension), global embeddings (``embeddings.npy`` + ``embeddings.json`` naming the rows), and optionally
  a PCA to ``k`` channels with one basis fitted over all images (``<name>_pca.nii.gz``, ``pca_basis.npz``).
* :func:`evaluate_encoder` (``nnssl_probe`` and the evaluation during pre-training): the dense linear probe (Dice per
  label on the test cases) and, when the set has classes, linear and kNN classification accuracy on global
  embeddings (:mod:`nnssl.evaluation.probes`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnssl.evaluation.encoder import FrozenEncoder
from nnssl.evaluation.eval_set import EvalSet
from nnssl.evaluation.images import PreparedImage, grid_affine, list_inputs, prepare_image
from nnssl.evaluation.pca import SharedPCA
from nnssl.evaluation.probes import (
    DenseProbeResult,
    dense_probe,
    knn_classification,
    linear_classification,
)
from nnssl.evaluation.sliding_window import VolumeFeatures, sliding_window_features

logger = logging.getLogger(__name__)


@dataclass
class FeatureSettings:
    """How features are computed: encoder ``stages`` (None: the native dense stage), window ``overlap``, windows per
    forward pass (``window_batch``: bounds the memory) and Gaussian blending."""

    stages: tuple[int, ...] | None = None
    overlap: float = 0.5
    window_batch: int = 2
    gaussian: bool = True


@dataclass
class ProbeReport:
    """What :func:`evaluate_encoder` measured; ``scores()`` flattens it for metrics.jsonl."""

    eval_set: str
    dense: DenseProbeResult | None = None
    label_names: dict[int, str] = field(default_factory=dict)
    linear_accuracy: float | None = None
    knn_accuracy: float | None = None
    seconds: float = 0.0

    def scores(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.dense is not None:
            out["probe/mean_dice"] = self.dense.mean_dice
            for value, dice in self.dense.per_label.items():
                out[f"probe/dice_{self.label_names.get(value, value)}"] = dice
        if self.linear_accuracy is not None:
            out["probe/linear_accuracy"] = self.linear_accuracy
        if self.knn_accuracy is not None:
            out["probe/knn_accuracy"] = self.knn_accuracy
        return out

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"eval_set": self.eval_set, "seconds": round(self.seconds, 2), "scores": self.scores()}
        if self.dense is not None:
            data["dice_per_case"] = {
                case: {self.label_names.get(v, str(v)): d for v, d in scores.items()}
                for case, scores in self.dense.per_case.items()
            }
            data["train_voxels"] = self.dense.train_voxels
        return data


def prepare_eval_set(eval_set: EvalSet, adaptation_plan: dict[str, Any]) -> dict[str, PreparedImage]:
    """Every case of ``eval_set`` read and preprocessed as ``adaptation_plan`` says (labels carried along)."""
    prepared = {}
    for case in eval_set.cases:
        prepared[case.id] = prepare_image(
            case.image, adaptation_plan, case.label, case.modality, name=case.id, mask_path=case.mask
        )
    return prepared


def features_of(
    encoder: FrozenEncoder, image: PreparedImage, settings: FeatureSettings, progress: bool = False
) -> VolumeFeatures:
    return sliding_window_features(
        encoder,
        image.data,
        stages=settings.stages,
        overlap=settings.overlap,
        window_batch=settings.window_batch,
        gaussian=settings.gaussian,
        progress=progress,
        desc=image.name,
    )


def evaluate_encoder(
    encoder: FrozenEncoder,
    eval_set: EvalSet,
    prepared: dict[str, PreparedImage] | None = None,
    settings: FeatureSettings | None = None,
    max_voxels: int = 50_000,
    seed: int = 0,
    progress: bool = False,
) -> ProbeReport:
    """Probe scores of ``encoder`` on ``eval_set`` (its images ``prepared`` once by :func:`prepare_eval_set` when
    evaluating several encoders); see the module docstring."""
    started = time.perf_counter()
    settings = settings or FeatureSettings()
    prepared = prepared if prepared is not None else prepare_eval_set(eval_set, encoder.adaptation_plan)
    needed = {c.id for c in eval_set.cases if (c.label and eval_set.has_dense_task) or c.cls is not None}
    features = {case_id: features_of(encoder, prepared[case_id], settings, progress) for case_id in sorted(needed)}
    report = ProbeReport(eval_set=eval_set.name, label_names={v: n for n, v in eval_set.labels.items()})
    if eval_set.has_dense_task:
        train = [
            (features[c.id].dense, features[c.id].stride, prepared[c.id].label)
            for c in eval_set.split("train", labelled=True)
        ]
        test = [
            (c.id, features[c.id].dense, features[c.id].stride, prepared[c.id].label)
            for c in eval_set.split("test", labelled=True)
        ]
        report.dense, _ = dense_probe(train, test, eval_set.num_classes, max_voxels=max_voxels, seed=seed)
    if eval_set.has_classification_task:
        index = {name: i for i, name in enumerate(eval_set.classes)}
        train_cases = eval_set.split("train", classified=True)
        test_cases = eval_set.split("test", classified=True)
        train_x = torch.stack([features[c.id].embedding for c in train_cases])
        train_y = torch.tensor([index[c.cls] for c in train_cases])
        test_x = torch.stack([features[c.id].embedding for c in test_cases])
        test_y = torch.tensor([index[c.cls] for c in test_cases])
        n = len(eval_set.classes)
        report.linear_accuracy = float((linear_classification(train_x, train_y, test_x, n) == test_y).float().mean())
        report.knn_accuracy = float((knn_classification(train_x, train_y, test_x, n) == test_y).float().mean())
    report.seconds = time.perf_counter() - started
    return report


def format_report(reports: dict[str, ProbeReport]) -> str:
    """A plain-text table: one row per score, one column per report (e.g. random init vs pre-trained)."""
    names = list(reports)
    keys: list[str] = []
    for report in reports.values():
        keys += [k for k in report.scores() if k not in keys]
    width = max([len(k) for k in keys] + [5])
    lines = [f"{'score':<{width}}  " + "  ".join(f"{n:>14}" for n in names)]
    for key in keys:
        cells = []
        for name in names:
            value = reports[name].scores().get(key)
            cells.append(f"{value:>14.3f}" if value is not None else f"{'-':>14}")
        lines.append(f"{key:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """(C, X, Y, Z) -> a NIfTI with the channels in the 4th dimension (a single channel: 3D)."""
    import nibabel as nib

    data = np.moveaxis(array, 0, -1) if array.shape[0] > 1 else array[0]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data, dtype=np.float32), affine), str(path))


def extract_to_folder(
    encoder: FrozenEncoder,
    inputs: Sequence[str],
    output_folder: str | Path,
    settings: FeatureSettings | None = None,
    pca_channels: int = 0,
    write_maps: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Write features of every image named by ``inputs`` (files, folders, pretrain_data.json) into
    ``output_folder``; returns the summary also written as ``features.json``. One unreadable image is reported and
    skipped, the others are written."""
    settings = settings or FeatureSettings()
    out = Path(output_folder)
    out.mkdir(parents=True, exist_ok=True)
    images = list_inputs(inputs)
    names, embeddings, failures = [], [], {}
    pca_inputs: list[tuple[str, torch.Tensor, np.ndarray]] = []
    from tqdm import tqdm

    from nnssl.progress import show_progress

    for name, path, modality in tqdm(images, desc="images", disable=not show_progress(progress)):
        try:
            image = prepare_image(path, encoder.adaptation_plan, modality=modality, name=name)
        except Exception as err:  # noqa: BLE001 - one bad image must not lose the others
            failures[name] = f"{path}: {err}"
            logger.warning("Skipped %s: %s", path, err)
            continue
        features = features_of(encoder, image, settings, progress=False)
        affine = grid_affine(image.affine, features.stride)
        if write_maps:
            _save_nifti(features.dense.numpy(), affine, out / f"{name}_features.nii.gz")
        if pca_channels:
            pca_inputs.append((name, features.dense, affine))
        names.append(name)
        embeddings.append(features.embedding.numpy())
    summary: dict[str, Any] = {
        "encoder": encoder.backbone.arch.name,
        "window": list(encoder.window),
        "stages": list(settings.stages or encoder.default_stages()),
        "overlap": settings.overlap,
        "images": names,
        "failures": failures,
    }
    if embeddings:
        np.save(out / "embeddings.npy", np.stack(embeddings).astype(np.float32))
    if pca_inputs:
        pca = SharedPCA.fit([d for _, d, _ in pca_inputs], k=pca_channels)
        np.savez(
            out / "pca_basis.npz",
            mean=pca.mean.numpy(),
            components=pca.components.numpy(),
            explained_variance_ratio=pca.explained_variance_ratio.numpy(),
        )
        for name, dense, affine in pca_inputs:
            _save_nifti(pca.transform(dense).numpy(), affine, out / f"{name}_pca.nii.gz")
        summary["pca_explained_variance_ratio"] = [round(float(v), 4) for v in pca.explained_variance_ratio]
    (out / "features.json").write_text(json.dumps(summary, indent=2))
    return summary


__all__ = [
    "FeatureSettings",
    "ProbeReport",
    "evaluate_encoder",
    "extract_to_folder",
    "format_report",
    "prepare_eval_set",
]
