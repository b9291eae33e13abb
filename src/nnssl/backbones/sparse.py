"""Sparse (masked) convolution for CNN encoders, as SparK needs it, without touching the network's modules.

Tian et al. 2023, "Designing BERT for Convolutional Networks: Sparse and Hierarchical Masked Modeling" (SparK): the
encoder treats the visible units of a masked input as a sparse set, so a convolution never sees masked positions
and a norm never counts them. With ``A_s`` the (B, 1, *grid_s) visible map of a feature grid ``s`` (1 = visible):

    conv_sparse(x) = conv(x) * A_s          pool_sparse(x) = pool(x) * A_s
    IN_sparse(x)   = ((x - mu_A) / sqrt(var_A + eps) * w + b) * A_s,   mu_A, var_A over {A_s = 1} per sample, channel

Masked positions therefore hold exactly 0 after every operation, and with the input zeroed at masked voxels the
encoder's output does not depend on what the masked voxels held. ``A_s`` comes from the mask units: a grid ``s``
that is a whole multiple ``r`` of the unit grid repeats each unit ``r`` times per axis; a grid coarser than the
units (a feature voxel covers several units) is fully active (upstream nnssl's rule: ResEnc-L's 5^3 bottleneck at
160^3 with 16^3 units is not sparsified). Anything else is refused.

:class:`SparseEncoding` is a context manager that installs forward hooks on the encoder's ``Conv3d``,
``AvgPool3d``/``MaxPool3d`` and ``InstanceNorm3d`` modules and removes them on exit: the parameter names stay those
of the downstream network, and the mask lives in the context object (no module-global state; upstream kept it in a
module variable). A norm hook recomputes the norm from the module's input (the module's own output is discarded).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nnssl.transforms.masking import UnitMask

#: Modules whose output is zeroed at masked positions.
MASKED_OUTPUT_TYPES = (nn.Conv3d, nn.AvgPool3d, nn.MaxPool3d)
#: Norms with statistics over visible positions.
SPARSE_NORM_TYPES = (nn.InstanceNorm3d,)
#: Norms that cannot be made sparse here (statistics across the batch, or over channels per voxel need no change).
UNSUPPORTED_NORM_TYPES = (nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm)


def unit_repeat(grid: Sequence[int], unit_grid: Sequence[int]) -> int | None:
    """Feature voxels per mask unit and axis on ``grid``; None when ``grid`` is coarser than the units (fully active).

    Raises ValueError when the mask units do not tile the feature grid (e.g. units of 12 voxels on a stride-8 map).
    """
    grid, unit_grid = tuple(int(g) for g in grid), tuple(int(u) for u in unit_grid)
    if all(g < u for g, u in zip(grid, unit_grid)):
        return None
    ratios = {g // u for g, u in zip(grid, unit_grid)}
    if len(ratios) == 1 and all(g % u == 0 for g, u in zip(grid, unit_grid)):
        return ratios.pop()
    raise ValueError(
        f"The mask units (grid {list(unit_grid)}) do not tile an encoder feature map of grid {list(grid)}: sparse "
        "convolution needs every stage's total stride to divide method.block_size or exceed it (use a power of two "
        "such as 16)."
    )


def visible_map(mask: UnitMask, grid: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """(B, 1, *grid): 1 at feature voxels of visible units, 0 at masked ones; None when ``grid`` is fully active."""
    repeat = unit_repeat(grid, mask.grid)
    if repeat is None:
        return None
    b = mask.masked.shape[0]
    visible = (~mask.masked).view(b, 1, *mask.grid).to(dtype)
    for axis in (2, 3, 4):
        visible = visible.repeat_interleave(repeat, dim=axis)
    return visible


def masked_instance_norm(x: torch.Tensor, active: torch.Tensor, norm: nn.InstanceNorm3d) -> torch.Tensor:
    """``norm`` (an InstanceNorm3d, its ``eps`` and affine parameters) with statistics over ``active`` positions only.

    Per sample and channel: mean and biased variance over the voxels where ``active`` is 1, in fp32; the output is 0
    where ``active`` is 0.
    """
    a = active.to(torch.float32)
    xf = x.float()
    count = a.sum(dim=(2, 3, 4), keepdim=True).clamp_min(1.0)
    mean = (xf * a).sum(dim=(2, 3, 4), keepdim=True) / count
    centred = (xf - mean) * a
    var = (centred * centred).sum(dim=(2, 3, 4), keepdim=True) / count
    y = centred * torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        y = y * norm.weight.float().view(1, -1, 1, 1, 1) + norm.bias.float().view(1, -1, 1, 1, 1)
        y = y * a
    return y.to(x.dtype)


class SparseEncoding:
    """``with SparseEncoding(encoder, mask):`` runs ``encoder`` as a sparse network on the visible units of ``mask``.

    ``active(grid)`` gives the visible map of a feature grid (None: fully active), cached per grid. The hooks exist
    only inside the ``with`` block.
    """

    def __init__(self, encoder: nn.Module, mask: UnitMask) -> None:
        unsupported = sorted({type(m).__name__ for m in encoder.modules() if isinstance(m, UNSUPPORTED_NORM_TYPES)})
        if unsupported:
            raise ValueError(
                f"Sparse encoding supports InstanceNorm3d only; this encoder uses {', '.join(unsupported)}."
            )
        self.encoder = encoder
        self.mask = mask
        self._cache: dict[tuple[int, ...], torch.Tensor | None] = {}
        self._handles: list = []

    def active(self, grid: Sequence[int]) -> torch.Tensor | None:
        key = tuple(int(g) for g in grid)
        if key not in self._cache:
            self._cache[key] = visible_map(self.mask, key)
        return self._cache[key]

    def _mask_output(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        a = self.active(output.shape[2:])
        return output if a is None else output * a.to(output.dtype)

    def _sparse_norm(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        a = self.active(args[0].shape[2:])
        return output if a is None else masked_instance_norm(args[0], a, module)  # type: ignore[arg-type]

    def __enter__(self) -> SparseEncoding:
        for module in self.encoder.modules():
            if isinstance(module, MASKED_OUTPUT_TYPES):
                self._handles.append(module.register_forward_hook(self._mask_output))
            elif isinstance(module, SPARSE_NORM_TYPES):
                self._handles.append(module.register_forward_hook(self._sparse_norm))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
