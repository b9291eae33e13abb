"""What ``nnssl_register`` writes: NIfTI files on the fixed image's preprocessed grid, metrics JSON, a figure.

* ``fixed.nii.gz``: the fixed image as registered (preprocessed: normalised, cropped, resampled), so every other
  file overlays it in a viewer.
* ``displacement.nii.gz``: the whole fixed -> moving mapping (affine pre-alignment included) as a displacement in
  world millimetres, RAS (NIfTI convention), shape (X, Y, Z, 1, 3), intent ``NIFTI_INTENT_DISPVECT`` (1006): the
  fixed point ``p`` corresponds to the moving point ``p + d(p)``. (ITK/ANTs store LPS vectors: negate the first two
  components to use it there.)
* ``displacement_voxels.nii.gz``: the deformable part ``u`` in voxels of this grid (array-axis order), what the
  metrics are computed on.
* ``warped.nii.gz`` / ``warped_label.nii.gz``: the moving image (trilinear) and labels (nearest) on the fixed grid.
* ``metrics.json``: Dice per label before / after the affine step / after, SDlogJ, folding %, seconds, settings.
* ``figure.png`` (on request): middle slices of fixed, moving (after the affine step), warped, and the deformed grid
  over the warped image.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from nnssl.registration.pipeline import RegistrationResult

logger = logging.getLogger(__name__)

#: NIfTI intent code of displacement vector fields.
NIFTI_INTENT_DISPVECT = 1006


def _save(array: np.ndarray, affine: np.ndarray, path: Path, intent: int | None = None) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(np.ascontiguousarray(array), affine)
    if intent is not None:
        image.header.set_intent(intent)
    nib.save(image, str(path))


def save_result(result: RegistrationResult, folder: str | Path, figure: bool = False) -> dict[str, str]:
    """Write ``result`` into ``folder`` (created); returns ``{kind: path}`` of what was written."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    affine = result.fixed.affine
    written = {}
    files = {
        "fixed": (result.fixed.data[0].astype(np.float32), None),
        "displacement": (result.world_displacement()[:, :, :, None, :], NIFTI_INTENT_DISPVECT),
        "displacement_voxels": (
            np.moveaxis(result.displacement.numpy(), 0, -1)[:, :, :, None, :].astype(np.float32),
            NIFTI_INTENT_DISPVECT,
        ),
        "warped": (result.warped.astype(np.float32), None),
    }
    if result.warped_label is not None:
        files["warped_label"] = (result.warped_label.astype(np.int16), None)
    for kind, (array, intent) in files.items():
        path = out / f"{kind}.nii.gz"
        _save(array, affine, path, intent)
        written[kind] = str(path)
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(result.metrics, indent=2))
    written["metrics"] = str(metrics_path)
    if figure:
        figure_path = out / "figure.png"
        save_figure(result, figure_path)
        written["figure"] = str(figure_path)
    return written


def _deformed_grid_lines(displacement: np.ndarray, axis: int, index: int, every: int):
    """Lines of the deformed grid in the slice ``index`` along ``axis``: the in-plane positions ``x + u(x)``."""
    plane = [a for a in range(3) if a != axis]
    u = np.take(displacement, index, axis=axis + 1)  # (3, n0, n1)
    n0, n1 = u.shape[1:]
    rows, cols = np.meshgrid(np.arange(n0), np.arange(n1), indexing="ij")
    y = rows + u[plane[0]]
    x = cols + u[plane[1]]
    lines = [(x[i, :], y[i, :]) for i in range(0, n0, every)]
    lines += [(x[:, j], y[:, j]) for j in range(0, n1, every)]
    return lines


def save_figure(result: RegistrationResult, path: str | Path, grid_every: int = 6) -> None:
    """A PNG: one row per view (the three middle slices), columns fixed / moving / warped / deformed grid; fixed
    label contours (when given) on every panel."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fixed = result.fixed.data[0]
    displacement = result.displacement.numpy()
    shape = fixed.shape
    panels = [("fixed", fixed), ("moving (before)", result.moving_before), ("warped", result.warped)]
    low, high = np.percentile(fixed, [1, 99.5])
    fig, axes = plt.subplots(3, 4, figsize=(11, 8.25), squeeze=False)
    for row, axis in enumerate(range(3)):
        index = shape[axis] // 2
        for col, (title, volume) in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(np.take(volume, index, axis=axis), cmap="gray", vmin=low, vmax=high, origin="lower")
            if result.fixed.label is not None:
                ax.contour(
                    np.take(result.fixed.label, index, axis=axis) > 0, levels=[0.5], colors="tab:orange", linewidths=0.6
                )
            ax.set_title(f"{title}, axis {axis} slice {index}", fontsize=8)
            ax.axis("off")
        ax = axes[row][3]
        ax.imshow(np.take(result.warped, index, axis=axis), cmap="gray", vmin=low, vmax=high, origin="lower")
        for xs, ys in _deformed_grid_lines(displacement, axis, index, grid_every):
            ax.plot(xs, ys, color="tab:cyan", linewidth=0.5)
        ax.set_xlim(-0.5, np.take(fixed, index, axis=axis).shape[1] - 0.5)
        ax.set_ylim(-0.5, np.take(fixed, index, axis=axis).shape[0] - 0.5)
        ax.set_title(f"deformation grid (every {grid_every} voxels)", fontsize=8)
        ax.axis("off")
    metrics = result.metrics
    summary = f"{metrics.get('features', '')}"
    if "mean_dice_after" in metrics:
        summary += f" | mean Dice {metrics['mean_dice_before']:.3f}"
        if "mean_dice_after_affine" in metrics:
            summary += f" -> {metrics['mean_dice_after_affine']:.3f} (affine)"
        summary += f" -> {metrics['mean_dice_after']:.3f}"
    summary += f" | SDlogJ {metrics['sdlogj']:.3f}, folding {metrics['folding_percent']:.3f}%"
    fig.suptitle(summary, fontsize=9)
    fig.tight_layout()
    fig.savefig(str(path), dpi=80)
    plt.close(fig)


__all__ = ["NIFTI_INTENT_DISPVECT", "save_figure", "save_result"]
