"""Images for a frozen encoder: read, preprocessed exactly as the checkpoint's plan says, with their world geometry.

:func:`prepare_image` reads a file (:func:`nnssl.imageio.read_image`: canonical LPS voxel order), applies the
adaptation plan's ``pretrain_plan`` configuration with the same code as ``nnssl_preprocess``
(:func:`nnssl.preprocessing.preprocess_case`: transpose, crop to the nonzero region, normalisation, resampling to
the configuration's spacing) and returns the voxel-to-world (RAS, NIfTI convention) affine of the preprocessed grid,
so that feature maps computed on it can be written as NIfTI files that overlay the original image in any viewer.
A label map given with the image is carried through the same steps (nearest-label resampling).

Affine of the preprocessed grid, composed from the recorded steps: canonical index ``a`` -> LPS world
``origin + (a_2 s_2, a_1 s_1, a_0 s_0)`` (reader), transposed axes ``b_k = a_{t_k}``, crop ``b = c + start``,
resampling with pixel-edge alignment (``scipy.ndimage.zoom(grid_mode=True)``, what nnssl's resampling does)
``c = (r + 0.5) * n_old / n_new - 0.5``, and LPS -> RAS ``diag(-1, -1, 1)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: File endings read as images when a folder is given.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


@dataclass
class PreparedImage:
    """One preprocessed image: ``data`` (C, X, Y, Z) float32, ``affine`` (4x4, RAS) of that grid, ``label`` (X, Y, Z)
    int on the same grid when a label map was given, and the preprocessing ``properties``."""

    name: str
    data: np.ndarray
    affine: np.ndarray
    label: np.ndarray | None = None
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape[1:])  # type: ignore[return-value]


def single_configuration(adaptation_plan: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(name, configuration plan)`` of the plan's one ``pretrain_plan`` configuration."""
    configurations = adaptation_plan["pretrain_plan"].get("configurations") or {}
    if len(configurations) != 1:
        raise ValueError(
            f"adaptation plan: pretrain_plan must hold exactly one configuration, found {sorted(configurations)}."
        )
    ((name, config),) = configurations.items()
    return name, config


def canonical_affine(properties: Mapping[str, Any]) -> np.ndarray:
    """RAS affine of the reader's canonical array (axes ordered z, y, x; LPS directions; ``canonical_origin``)."""
    spacing = [float(s) for s in properties["spacing"]]
    origin = np.asarray(properties.get("canonical_origin", (0.0, 0.0, 0.0)), dtype=np.float64)
    lps = np.zeros((4, 4))
    lps[2, 0], lps[1, 1], lps[0, 2] = spacing[0], spacing[1], spacing[2]
    lps[:3, 3] = origin
    lps[3, 3] = 1.0
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def preprocessed_affine(canonical: np.ndarray, properties: Mapping[str, Any], transpose: Sequence[int]) -> np.ndarray:
    """RAS affine of the preprocessed grid, from the canonical affine and the steps ``preprocess_case`` recorded."""
    permute = np.zeros((4, 4))
    for k, axis in enumerate(transpose):
        permute[int(axis), k] = 1.0
    permute[3, 3] = 1.0
    start = [int(b[0]) for b in properties["bbox_used_for_cropping"]]
    crop = np.eye(4)
    crop[:3, 3] = start
    old = np.asarray(properties["shape_after_cropping_and_before_resampling"], dtype=np.float64)
    new = np.asarray(properties["shape_after_resampling"], dtype=np.float64)
    scale = old / new
    resample = np.eye(4)
    resample[:3, :3] = np.diag(scale)
    resample[:3, 3] = 0.5 * scale - 0.5
    return canonical @ permute @ crop @ resample


def grid_affine(affine: np.ndarray, stride: int) -> np.ndarray:
    """The affine of a map with one cell per ``stride``^3 voxels of a grid with ``affine`` (cell centres)."""
    cell = np.eye(4)
    cell[:3, :3] *= stride
    cell[:3, 3] = (stride - 1) / 2.0
    return affine @ cell


def prepare_image(
    path: str | os.PathLike[str],
    adaptation_plan: Mapping[str, Any],
    label_path: str | os.PathLike[str] | None = None,
    modality: str | None = None,
    name: str | None = None,
    mask_path: str | os.PathLike[str] | None = None,
) -> PreparedImage:
    """Read ``path`` (and ``label_path``) and preprocess it as the checkpoint's plan says; see the module docstring.
    ``mask_path``: a mask on the image's grid; voxels where it is 0 are set to 0 first (e.g. skull stripping), so the
    crop to the nonzero region and the normalisation see the masked image."""
    from nnssl.imageio import read_image
    from nnssl.imageio.reader import read_mask
    from nnssl.preprocessing.preprocess_case import preprocess_case

    data, properties = read_image(path)
    masks = {}
    if label_path is not None:
        label, _ = read_mask(label_path)
        if tuple(label.shape[1:]) != tuple(data.shape[1:]):
            raise ValueError(
                f"label map {label_path} has shape {tuple(label.shape[1:])} but image {path} has "
                f"{tuple(data.shape[1:])}; a label map must lie on its image's voxel grid."
            )
        masks["label"] = label
    if mask_path is not None:
        mask, _ = read_mask(mask_path)
        if tuple(mask.shape[1:]) != tuple(data.shape[1:]):
            raise ValueError(
                f"mask {mask_path} has shape {tuple(mask.shape[1:])} but image {path} has {tuple(data.shape[1:])}; "
                "a mask must lie on its image's voxel grid."
            )
        data = np.where(mask[:1] > 0, data, 0).astype(data.dtype, copy=False)
    _, config = single_configuration(adaptation_plan)
    plan = adaptation_plan["pretrain_plan"]
    out, out_masks, props = preprocess_case(data, masks, properties, config, plan, modality=modality)
    transpose = [int(a) for a in (plan.get("transpose_forward") or [0, 1, 2])]
    affine = preprocessed_affine(canonical_affine(properties), props, transpose)
    label_out = out_masks["label"][0].astype(np.int16) if "label" in out_masks else None
    return PreparedImage(name=name or image_name(path), data=out, affine=affine, label=label_out, properties=props)


def image_name(path: str | os.PathLike[str]) -> str:
    """The file name without its image ending (``sub-01_T1w.nii.gz`` -> ``sub-01_T1w``)."""
    base = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return Path(base).stem


def list_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[tuple[str, str, str | None]]:
    """``(name, path, modality)`` of every image named by ``inputs``: files, folders (their image files, sorted) or
    ``pretrain_data.json`` collections (every image, its modality selects the normalisation). Names are unique."""
    from nnssl.data.collection import Collection

    found: list[tuple[str, str, str | None]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(IMAGE_SUFFIXES))
            if not files:
                raise FileNotFoundError(f"{path} holds no image file ({', '.join(IMAGE_SUFFIXES)}).")
            found += [(image_name(p), str(p), None) for p in files]
        elif path.name.endswith(".json"):
            collection = Collection.load(path)
            found += [(img.unique_id, img.image_path, img.modality) for img in collection.iter_images()]
        elif path.is_file():
            found.append((image_name(path), str(path), None))
        else:
            raise FileNotFoundError(f"{path} does not exist (give image files, folders or a pretrain_data.json).")
    seen: dict[str, int] = {}
    unique = []
    for name, path_text, modality in found:
        count = seen.get(name, 0)
        seen[name] = count + 1
        unique.append((name if count == 0 else f"{name}_{count}", path_text, modality))
    return unique


__all__ = [
    "IMAGE_SUFFIXES",
    "PreparedImage",
    "canonical_affine",
    "grid_affine",
    "image_name",
    "list_inputs",
    "prepare_image",
    "preprocessed_affine",
    "single_configuration",
]
