"""Preprocess one case held in memory: transpose -> crop to nonzero -> normalize -> resample.

:func:`preprocess_case` is pure (arrays in, arrays out); reading files and writing the case store happen in
:mod:`nnssl.preprocessing.api`. Bad input raises :class:`PreprocessingError` with a reason meant for people.

Order of steps (upstream nnssl's):

1. ``transpose_forward`` of the plan on data, masks and spacing.
2. Crop to the bounding box of the nonzero region (any channel != 0, holes filled).
3. Normalize with the modality's scheme (``normalization_by_modality`` else ``normalization_schemes[0]``) and
   ``use_mask_for_norm`` (False: whole-volume statistics, as nnU-Net's pre-trained fine-tuning; see
   :mod:`nnssl.preprocessing.normalization`).
4. Resample data (order 3) and masks (labels preserved) to the configuration's spacing; ``spacing=None``
   (noresample) skips it.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from nnssl.preprocessing.cropping import crop_to_nonzero
from nnssl.preprocessing.normalization import normalize
from nnssl.preprocessing.resampling import RESAMPLERS, compute_new_shape


class PreprocessingError(ValueError):
    """One case cannot be preprocessed; ``str(err)`` is the reason recorded in preprocessing_failures.json."""


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def normalization_scheme(config_plan: Any, modality: str | None) -> str:
    """The scheme for ``modality``: ``normalization_by_modality[modality]``, else ``normalization_schemes[0]``."""
    by_modality = _field(config_plan, "normalization_by_modality") or {}
    if modality is not None:
        for key, scheme in by_modality.items():
            if key.lower() == str(modality).lower():
                return scheme
    schemes = _field(config_plan, "normalization_schemes") or ["ZScoreNormalization"]
    return schemes[0]


def _check_finite(data: np.ndarray) -> None:
    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(data.size - finite.sum()) - n_nan
        raise PreprocessingError(
            f"the image contains non-finite voxels ({n_nan} NaN, {n_inf} Inf); fix or remove the file "
            "(e.g. replace them with 0) and preprocess again"
        )


def preprocess_case(
    data: np.ndarray,
    masks: dict[str, np.ndarray] | None,
    properties: dict[str, Any],
    config_plan: Any,
    plan: Any,
    modality: str | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """Preprocess one case.

    Args:
        data: float image (C, X, Y, Z) in the reader's canonical orientation.
        masks: int masks (1, X, Y, Z) on the same grid, keys "anatomy" / "anonymization".
        properties: reader properties; must contain "spacing" (same axis order as ``data``).
        config_plan: the configuration's plan (ConfigurationPlan or its dict): spacing, normalization,
            resampling functions and kwargs.
        plan: the Plan (or dict) for ``transpose_forward``.
        modality: the image's modality (selects the normalization scheme, e.g. "CT").

    Returns:
        (data float32 (C, X', Y', Z'), masks int8 (1, X', Y', Z'), properties with the steps recorded).
    """
    props = copy.deepcopy(properties)
    masks = dict(masks or {})
    data = np.asarray(data)
    if data.ndim != 4:
        raise PreprocessingError(f"expected image data (C, X, Y, Z), got shape {data.shape}")
    _check_finite(data)
    for kind, mask in masks.items():
        if tuple(mask.shape[1:]) != tuple(data.shape[1:]):
            raise PreprocessingError(
                f"the {kind} mask has shape {tuple(mask.shape[1:])} but the image has {tuple(data.shape[1:])}; "
                "masks must be on the image's grid"
            )
    spacing = [float(s) for s in props["spacing"]]

    transpose = [int(a) for a in (_field(plan, "transpose_forward") or [0, 1, 2])]
    data = np.ascontiguousarray(data.transpose(0, *[a + 1 for a in transpose]), dtype=np.float32)
    masks = {k: np.ascontiguousarray(m.transpose(0, *[a + 1 for a in transpose])) for k, m in masks.items()}
    spacing = [spacing[a] for a in transpose]
    props["spacing_after_transpose"] = spacing

    props["shape_before_cropping"] = list(data.shape[1:])
    try:
        data, masks, foreground, box = crop_to_nonzero(data, masks)
    except ValueError as err:
        raise PreprocessingError(str(err)) from err
    props["bbox_used_for_cropping"] = box
    props["shape_after_cropping_and_before_resampling"] = list(data.shape[1:])

    scheme = normalization_scheme(config_plan, modality)
    data, norm = normalize(data, foreground, scheme, _field(config_plan, "use_mask_for_norm") or [False])
    norm["foreground_voxels"] = int(foreground.sum())
    props["normalization"] = norm

    target = _field(config_plan, "spacing")
    if target is None:
        final_spacing = spacing
    else:
        final_spacing = [float(s) for s in target]
        new_shape = compute_new_shape(data.shape[1:], spacing, final_spacing)
        fn_data = RESAMPLERS.get(_field(config_plan, "resampling_fn_data") or "resample_data_or_seg_to_shape")
        kwargs_data = dict(_field(config_plan, "resampling_fn_data_kwargs") or {"is_seg": False, "order": 3})
        data = fn_data(data, new_shape, spacing, final_spacing, **kwargs_data)
        if masks:
            fn_mask = RESAMPLERS.get(_field(config_plan, "resampling_fn_mask") or "resample_data_or_seg_to_shape")
            kwargs_mask = dict(_field(config_plan, "resampling_fn_mask_kwargs") or {"is_seg": True, "order": 1})
            kwargs_mask["is_seg"] = True
            masks = {k: fn_mask(m, new_shape, spacing, final_spacing, **kwargs_mask) for k, m in masks.items()}
    masks = {k: np.ascontiguousarray(m).astype(np.int8, copy=False) for k, m in masks.items()}
    props["spacing"] = final_spacing
    props["shape_after_resampling"] = list(data.shape[1:])
    props["modality"] = modality
    if not np.isfinite(data).all():
        stats = "; ".join(
            f"channel {c}: mean {ch.get('mean', float('nan')):.3g}, std {ch.get('std', float('nan')):.3g}"
            for c, ch in enumerate(norm["channels"])
        )
        raise PreprocessingError(
            f"after {scheme} ({stats}) some voxels lie beyond float32's range (+-3.4e38): the foreground's "
            "intensities are (nearly) constant while other voxels differ from them by many orders of magnitude. "
            "Check the image's intensities (e.g. its scaling slope) or remove it from pretrain_data.json"
        )
    return np.ascontiguousarray(data, dtype=np.float32), masks, props
