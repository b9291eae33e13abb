"""Spatial transformers for registration heads and on-device spatial augmentation (GVSL, methods.md 4.9).

Two warps built on ``torch.nn.functional.grid_sample`` (trilinear, zeros outside the volume):

* :func:`affine_warp` ``(x, theta)``: ``theta`` (B, 3, 4) in the normalised coordinates of ``affine_grid``
  (``align_corners=False``; coordinates span [-1, 1] over the volume, so one matrix warps an image and a feature map
  of another resolution alike; columns act on (last, middle, first) array axis as ``affine_grid`` defines). The
  identity matrix returns the input (up to float rounding).
* :func:`displacement_warp` ``(x, u)``: ``u`` (B, 3, X, Y, Z) displacement in voxels, channel ``k`` along array axis
  ``k``; ``out[p] = x[p + u(p)]`` (trilinear, its own 8-neighbour gather). ``u = 0`` and integer translations
  reproduce voxels exactly. Upstream's ``DeformableTransformer`` normalises with ``N - 1`` but samples
  ``grid_sample(align_corners=False)``, so its zero displacement zooms the image by ``N / (N - 1)``.

:func:`affine_matrix` builds ``M = Shear Scale R_z R_y R_x`` and the translation column from per-sample parameters,
differentiably (the GVSL code and upstream assemble the matrix with ``torch.tensor(...)`` from Python scalars, which
cuts the graph: their affine head never receives a gradient). :func:`random_spatial` draws GVSL's augmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def affine_warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, X, Y, Z) resampled with the affine ``theta`` (B, 3, 4) (normalised coordinates, see module)."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def identity_grid(shape: tuple[int, int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """(1, 3, X, Y, Z): the voxel coordinates of every position, channel ``k`` = index along array axis ``k``."""
    axes = [torch.arange(s, device=device, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


def displacement_warp(x: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """``out[p] = x[p + u(p)]`` for ``u`` = ``displacement`` (B, 3, X, Y, Z) in voxels (trilinear, zeros outside).

    Trilinear interpolation by gathering the 8 neighbours: at integer positions the weights are exactly 0 and 1, so
    ``u = 0`` and integer translations reproduce voxels exactly; differentiable in ``x`` and in ``u``.
    """
    shape = tuple(int(s) for s in x.shape[2:])
    if tuple(displacement.shape[2:]) != shape or displacement.shape[1] != 3 or displacement.shape[0] != x.shape[0]:
        raise ValueError(f"Displacement {tuple(displacement.shape)} does not match the image {tuple(x.shape)}.")
    b, c = x.shape[:2]
    # positions in fp32 even under autocast: fp16 resolves only 1/8 voxel near 150
    position = identity_grid(shape, x.device, torch.float32) + displacement.float()
    low = torch.floor(position)
    frac = (position - low).to(x.dtype)
    low = low.long()
    flat = x.reshape(b, c, -1)
    out = torch.zeros_like(flat)
    for corner in range(8):
        offset = [(corner >> axis) & 1 for axis in range(3)]
        index, weight, inside = torch.zeros_like(low[:, 0]), torch.ones_like(frac[:, 0]), None
        for axis in range(3):
            coord = low[:, axis] + offset[axis]
            valid = (coord >= 0) & (coord < shape[axis])
            inside = valid if inside is None else inside & valid
            index = index * shape[axis] + coord.clamp(0, shape[axis] - 1)
            weight = weight * (frac[:, axis] if offset[axis] else 1.0 - frac[:, axis])
        weight = (weight * inside).reshape(b, 1, -1)
        out = out + weight * flat.gather(2, index.reshape(b, 1, -1).expand(b, c, -1))
    return out.reshape(x.shape)


def affine_matrix(
    rotation: torch.Tensor, scale: torch.Tensor, shear: torch.Tensor, translation: torch.Tensor
) -> torch.Tensor:
    """(B, 3, 4) ``[Shear Scale R_z R_y R_x | t]`` from angles (B, 3) in radians, scales (B, 3), shear angles (B, 6)
    (xy, xz, yx, yz, zx, zy; the matrix has ``tan`` of them off the diagonal) and translations (B, 3)."""
    b = rotation.shape[0]
    one, zero = torch.ones_like(rotation[:, 0]), torch.zeros_like(rotation[:, 0])
    cx, cy, cz = torch.cos(rotation).unbind(1)
    sx, sy, sz = torch.sin(rotation).unbind(1)
    r_x = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], 1).view(b, 3, 3)
    r_y = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], 1).view(b, 3, 3)
    r_z = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], 1).view(b, 3, 3)
    t = torch.tan(shear)
    shear_m = torch.stack([one, t[:, 0], t[:, 1], t[:, 2], one, t[:, 3], t[:, 4], t[:, 5], one], 1).view(b, 3, 3)
    linear = shear_m @ torch.diag_embed(scale) @ r_z @ r_y @ r_x
    return torch.cat([linear, translation.unsqueeze(-1)], dim=-1)


def gaussian_kernel1d(sigma: float, device=None) -> torch.Tensor:
    """Normalised 1D Gaussian of radius ``int(4 sigma + 0.5)`` (scipy's truncation)."""
    radius = max(1, int(4.0 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_smooth(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of every channel of (B, C, X, Y, Z) (zeros outside)."""
    kernel = gaussian_kernel1d(sigma, field.device).to(field.dtype)
    c, r = field.shape[1], kernel.numel() // 2
    out = field
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        padding = [0, 0, 0]
        padding[axis] = r
        out = F.conv3d(out, kernel.view(shape).expand(c, 1, *shape[2:]), padding=tuple(padding), groups=c)
    return out


@dataclass(frozen=True)
class SpatialAugmentation:
    """GVSL's spatial augmentation (the GVSL code and upstream ``SpatialTransforms``), applied identically to the
    fixed image, its appearance-augmented copy and the moving image: per pair a rotation ``U(-r, r)`` about each
    axis, a scale ``U(scale)`` per axis, six shears ``U(-s, s)``, a translation ``U(-t, t)`` of the half-side per
    axis, then an elastic displacement: ``U(-1, 1)`` noise per voxel and axis, Gaussian-smoothed with
    ``sigma ~ U(elastic_sigma)`` voxels and scaled by ``alpha ~ U(elastic_alpha)``."""

    rotation_deg: float = 20.0
    scale: tuple[float, float] = (0.75, 1.25)
    shear_deg: float = 10.0
    translation: float = 0.1
    elastic_alpha: tuple[float, float] = (0.0, 512.0)
    elastic_sigma: tuple[float, float] = (10.0, 13.0)

    def draw(self, batch: int, shape: tuple[int, int, int], device=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(theta, displacement)`` for ``batch`` pairs: (B, 3, 4) and (B, 3, *shape) (None without elastic)."""

        def uniform(low: float, high: float, *size: int) -> torch.Tensor:
            return torch.rand(*size, device=device) * (high - low) + low

        rot, shear = math.radians(self.rotation_deg), math.radians(self.shear_deg)
        theta = affine_matrix(
            uniform(-rot, rot, batch, 3),
            uniform(self.scale[0], self.scale[1], batch, 3),
            uniform(-shear, shear, batch, 6),
            uniform(-self.translation, self.translation, batch, 3),
        )
        if self.elastic_alpha[1] <= 0:
            return theta, None
        fields = []
        for _ in range(batch):
            noise = torch.rand(1, 3, *shape, device=device) * 2.0 - 1.0
            sigma = float(uniform(*self.elastic_sigma, 1))
            fields.append(gaussian_smooth(noise, sigma) * float(uniform(*self.elastic_alpha, 1)))
        return theta, torch.cat(fields)

    @staticmethod
    def apply(x: torch.Tensor, theta: torch.Tensor, displacement: torch.Tensor | None) -> torch.Tensor:
        """The affine, then the elastic displacement, of ``x`` (B, C, X, Y, Z)."""
        out = affine_warp(x, theta)
        return out if displacement is None else displacement_warp(out, displacement.to(out.dtype))
