"""ConvexAdam on any pair of dense feature maps (MIND-SSC, or the PCA of an SSL encoder's features).

Siebert, Hansen & Heinrich, "Fast 3D registration with accurate optimisation and little learning" (Learn2Reg 2021)
and Heinrich & Hansen's journal version ("Convex Adam", IEEE TMI 2024). Both maps lie on the same grid (the fixed
image's); the result is a displacement field ``u`` (3, X, Y, Z) in voxels of that grid, in array-axis order, such
that fixed voxel ``x`` corresponds to moving voxel ``x + u(x)`` (the moving image is warped by sampling it at
``x + u(x)``).

Stage 1, coupled convex optimisation (discrete, global), from the ``convexadam`` package (PyPI, Apache-2.0, by the
authors; its ``correlate``, ``coupled_convex`` and ``inverse_consistency``):

* both maps are average-pooled by ``grid_spacing`` ``g``;
* the SSD cost ``C(x, d) = sum_c (F_c(x) - M_c(x + d))^2`` (box-filtered twice, 3^3) is computed for every
  integer displacement ``d`` in ``[-r, r]^3`` coarse cells (``r = displacement_range``, so up to ``r * g`` voxels);
* six rounds alternate ``d(x) = argmin_d C(x, d) + theta_j |d - ubar(x)|^2`` with ``ubar = smooth(d)`` (3^3
  average), ``theta_j`` rising from 0.003 to 1 (the convex coupling of the global smoothness prior);
* forward and backward fields are made inverse consistent (15 fixed-point iterations) and upsampled.

Stage 2, Adam instance optimisation (written here: the package fuses it with MIND-SSC inside ``convex_adam_pt``,
which accepts images, not features), on a grid of ``adam_grid_spacing`` ``a`` voxels per cell:

``L(P) = (1/N) sum_x sum_c (F^a_c(x) - M^a_c(x + S(P)(x)))^2 + lambda * sum_k mean_x (d_k S(P)(x))^2``

where ``F^a``, ``M^a`` are the maps average-pooled by ``a``, ``S`` is ``smoothing_passes`` passes of a
``smoothing_kernel``^3 average filter (replicate border), ``d_k`` the forward difference along axis ``k``, and
``lambda = regularisation`` (the diffusion regulariser). ``P`` starts from stage 1's field, runs
``adam_iterations`` steps of Adam with ``adam_lr`` (in cells of the Adam grid), and ``S(P) * a`` is upsampled
trilinearly to full resolution. For MIND-SSC (12 channels) the data term equals the package's ``12 x`` channel mean.

The defaults are the package's (``convex_adam_pt``): g 6, r 4, a 2, 80 iterations, lr 1, lambda 1.25, smoothing
3 passes of 3^3. Volumes are padded (replicating the border) to multiples of ``g`` and ``a`` and the field is cropped
back, so any shape works.
"""

from __future__ import annotations

import logging
import math
import warnings

import torch
import torch.nn.functional as F

from nnssl.registration.settings import ConvexAdamSettings

logger = logging.getLogger(__name__)


def _convexadam_utils():
    """The ``convexadam`` package's utilities; its import turns every warning off process-wide
    (``warnings.filterwarnings("ignore")``), which ``catch_warnings`` undoes on exit."""
    with warnings.catch_warnings():
        from convexAdam import convex_adam_utils
    return convex_adam_utils


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """(1, C, X, Y, Z) padded at the end of each axis (replicating the border) to multiples of ``multiple``."""
    shape = x.shape[2:]
    target = [int(math.ceil(n / multiple)) * multiple for n in shape]
    pad = [0, target[2] - shape[2], 0, target[1] - shape[1], 0, target[0] - shape[0]]
    if any(pad):
        x = F.pad(x, pad, mode="replicate")
    return x


def smooth_field(field: torch.Tensor, kernel: int, passes: int) -> torch.Tensor:
    """``passes`` passes of a ``kernel``^3 average filter over (1, 3, X, Y, Z), the border replicated."""
    half = kernel // 2
    for _ in range(passes):
        if kernel > 1:
            field = F.avg_pool3d(F.pad(field, [half] * 6, mode="replicate"), kernel, stride=1)
    return field


def diffusion_regulariser(field: torch.Tensor) -> torch.Tensor:
    """``sum_k mean (d_k u)^2``: squared forward differences of (1, 3, X, Y, Z) along each spatial axis."""
    total = field.new_zeros(())
    for axis in (2, 3, 4):
        n = field.shape[axis]
        if n > 1:
            total = total + (field.narrow(axis, 1, n - 1) - field.narrow(axis, 0, n - 1)).pow(2).mean()
    return total


def sampling_grid(displacement: torch.Tensor) -> torch.Tensor:
    """The ``grid_sample`` grid (1, X, Y, Z, 3) (align_corners=False, xyz order) that samples voxel ``x + u(x)``
    for a displacement ``u`` (1, 3, X, Y, Z) in voxels, array-axis order."""
    shape = displacement.shape[2:]
    axes = [torch.arange(n, device=displacement.device, dtype=displacement.dtype) for n in shape]
    mesh = torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]
    position = mesh + displacement
    size = torch.tensor(shape, device=displacement.device, dtype=displacement.dtype).view(1, 3, 1, 1, 1)
    normalised = (2.0 * position + 1.0) / size - 1.0
    return normalised.permute(0, 2, 3, 4, 1).flip(-1)


def warp(volume: torch.Tensor, displacement: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """(1, C, X, Y, Z) sampled at ``x + u(x)`` (``mode`` "bilinear" = trilinear, or "nearest"), border replicated."""
    grid = sampling_grid(displacement.to(volume.dtype))
    return F.grid_sample(volume, grid, mode=mode, padding_mode="border", align_corners=False)


def coupled_convex_stage(fixed: torch.Tensor, moving: torch.Tensor, settings: ConvexAdamSettings) -> torch.Tensor:
    """Stage 1 on (1, C, X, Y, Z) maps whose sides are multiples of ``grid_spacing``: the field (1, 3, X, Y, Z) in
    voxels."""
    utils = _convexadam_utils()
    g, r = settings.grid_spacing, settings.displacement_range
    shape = tuple(int(n) for n in fixed.shape[2:])
    channels = int(fixed.shape[1])
    device, dtype = fixed.device, fixed.dtype
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Default grid_sample and affine_grid behavior")
        fixed_coarse = F.avg_pool3d(fixed, g, stride=g)
        moving_coarse = F.avg_pool3d(moving, g, stride=g)
        mesh = F.affine_grid(
            r * torch.eye(3, 4, device=device, dtype=dtype)[None],
            (1, 1, 2 * r + 1, 2 * r + 1, 2 * r + 1),
            align_corners=True,
        )
        mesh = mesh.permute(0, 4, 1, 2, 3).reshape(3, -1, 1)
        cost, best = utils.correlate(fixed_coarse, moving_coarse, r, g, shape, channels)
        forward = utils.coupled_convex(cost, best.to(device), mesh, g, shape)
        if settings.inverse_consistency:
            coarse_shape = torch.tensor([n // g - 1 for n in shape], device=device, dtype=dtype)
            scale = coarse_shape.view(1, 3, 1, 1, 1) / 2
            cost_b, best_b = utils.correlate(moving_coarse, fixed_coarse, r, g, shape, channels)
            backward = utils.coupled_convex(cost_b, best_b.to(device), mesh, g, shape)
            consistent, _ = utils.inverse_consistency((forward / scale).flip(1), (backward / scale).flip(1), iter=15)
            coarse = consistent.flip(1) * scale * g
        else:
            coarse = forward * g
        return F.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)


def adam_stage(
    fixed: torch.Tensor, moving: torch.Tensor, initial: torch.Tensor, settings: ConvexAdamSettings
) -> torch.Tensor:
    """Stage 2 on (1, C, X, Y, Z) maps (sides multiples of ``adam_grid_spacing``) from the field ``initial``
    (1, 3, X, Y, Z) in voxels; returns the refined field at full resolution."""
    a = settings.adam_grid_spacing
    shape = tuple(int(n) for n in fixed.shape[2:])
    coarse_shape = tuple(n // a for n in shape)
    with torch.no_grad():
        fixed_a = F.avg_pool3d(fixed, a, stride=a)
        moving_a = F.avg_pool3d(moving, a, stride=a)
        start = F.interpolate(initial, size=coarse_shape, mode="trilinear", align_corners=False) / a
        # grid_sample's float32 normalisation puts identity samples ~1e-6 off the voxel centres; Adam, being scale-
        # invariant, turns the resulting tiny but consistent gradients into steps of up to ~0.1 voxel where fixed and
        # moving are equal. Subtracting that rounding error makes zero displacement sample the moving map exactly.
        identity = sampling_grid(torch.zeros_like(start))
        rounding = F.grid_sample(moving_a, identity, padding_mode="border", align_corners=False) - moving_a
        # sampling_grid(u) = identity + 2 u / size (xyz order), computed once instead of a mesh per iteration
        per_voxel = 2.0 / torch.tensor(coarse_shape, dtype=start.dtype, device=start.device).flip(0)
    params = torch.nn.Parameter(start.float().clone())
    optimizer = torch.optim.Adam([params], lr=settings.adam_lr)
    smoothed = params
    for _ in range(settings.adam_iterations):
        optimizer.zero_grad(set_to_none=True)
        smoothed = smooth_field(params, settings.smoothing_kernel, settings.smoothing_passes)
        grid = identity + smoothed.permute(0, 2, 3, 4, 1).flip(-1) * per_voxel
        moved = F.grid_sample(moving_a, grid, padding_mode="border", align_corners=False) - rounding
        data = (moved - fixed_a).pow(2).sum(1).mean()
        loss = data + settings.regularisation * diffusion_regulariser(smoothed)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = smooth_field(params, settings.smoothing_kernel, settings.smoothing_passes) * a
        return F.interpolate(final, size=shape, mode="trilinear", align_corners=False)


def convex_adam(fixed: torch.Tensor, moving: torch.Tensor, settings: ConvexAdamSettings | None = None) -> torch.Tensor:
    """Displacement (3, X, Y, Z) in voxels registering ``moving`` to ``fixed`` (both (C, X, Y, Z) on one grid,
    on any device; float32); see the module docstring."""
    settings = (settings or ConvexAdamSettings()).check()
    if fixed.shape != moving.shape or fixed.ndim != 4:
        raise ValueError(
            f"fixed and moving feature maps must both be (C, X, Y, Z) of one shape, got {tuple(fixed.shape)} and "
            f"{tuple(moving.shape)}"
        )
    shape = tuple(int(n) for n in fixed.shape[1:])
    multiple = math.lcm(settings.grid_spacing, settings.adam_grid_spacing)
    f = _pad_to_multiple(fixed[None].float(), multiple)
    m = _pad_to_multiple(moving[None].float(), multiple)
    if min(n // settings.grid_spacing for n in f.shape[2:]) < 2:
        raise ValueError(
            f"the volume {shape} is too small for grid_spacing {settings.grid_spacing}: every axis needs at least two "
            "coarse cells; lower grid_spacing."
        )
    field = coupled_convex_stage(f, m, settings)
    if settings.adam_iterations > 0:
        with torch.enable_grad():
            field = adam_stage(f, m, field, settings)
    return field[0, :, : shape[0], : shape[1], : shape[2]].detach()


__all__ = [
    "ConvexAdamSettings",
    "adam_stage",
    "convex_adam",
    "coupled_convex_stage",
    "diffusion_regulariser",
    "sampling_grid",
    "smooth_field",
    "warp",
]
