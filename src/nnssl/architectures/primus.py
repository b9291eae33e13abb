"""Primus (S/B/M/L) and a tiny CPU variant, plus the token helpers masked-token methods need.

The networks are dynamic-network-architectures' (dna) Primus (Wald et al. 2025, "Primus: Enforcing
Attention Usage for 3D Medical Image Segmentation", arXiv:2503.01835): an 8^3 patch embedding
(``down_projection.proj``, a Conv3d with kernel = stride = 8), an Eva encoder (``eva``: learned absolute
positional embedding ``eva.pos_embed`` of shape (1, N, D) plus 3D RoPE, SwiGLU MLP ratio 8/3, qkv bias,
LayerScale ``init_values`` 0.1, ``scale_attn_inner=True``, final LayerNorm) and a ``PatchDecode``
transposed-convolution decoder (``up_projection``).

===========  =========  =====  =====  ==========
preset       embed dim  depth  heads  parameters
===========  =========  =====  =====  ==========
PrimusS      396        12     6      23.1 M
PrimusB      792        12     12     91.7 M
PrimusM      864        16     12     144.9 M
PrimusL      1056       24     16     323.4 M
PrimusTiny   72         2      3      (CPU tests)
===========  =========  =====  =====  ==========

Pre-training builds the presets with drop-path 0.2 (upstream's ``BaseEvaMAETrainer``); nnU-Net's
downstream ``PretrainedTrainer_Primus`` builds them with drop-path 0. Drop-path has no parameters, so the
state dicts are identical.

Token order (pinned by ``tests/architectures/test_architectures.py``)
--------------------------------------------------------------------
A patch of shape (X, Y, Z) gives the token grid (W, H, D) = (X/8, Y/8, Z/8). dna >= a2520df flattens
``b c w h d -> b (w h d) c``: token ``t`` is the patch at grid position
``(w, h, d) = (t // (H*D), (t // D) % H, t % D)``, i.e. C order, first array axis slowest, last fastest
(``numpy.unravel_index(t, (W, H, D))``). Its voxels are ``x[..., 8w:8w+8, 8h:8h+8, 8d:8d+8]``. The RoPE
table (``eva.rope.get_embed()``, timm ``RotaryEmbeddingCat`` with 'ij' meshgrid indexing) and
``eva.pos_embed`` use the same order. Upstream's EvaMAE flattened as (h w d) and rebuilt its loss mask as
(w h d) (bugs B3/B4); every helper here uses (w h d) only, via :func:`flatten_tokens`/:func:`unflatten_tokens`.

Running the encoder on a subset of tokens
-----------------------------------------
dna 0.4.4's ``Eva`` has a ``patch_drop_rate`` argument, but it cannot be used with the installed timm
(1.0.x): ``Eva.__init__`` passes ``return_indices=True`` to ``timm.layers.PatchDropout``, which no longer
accepts it (TypeError), and even with an older timm, ``Eva._pos_embed`` hands the gathered RoPE table of
shape (B, K, 2*head_dim) to the attention without the head axis, which does not broadcast against
q/k of shape (B, heads, K, head_dim) for batch sizes other than 1. ``Eva.forward`` itself takes no
indices. :func:`eva_forward_tokens` therefore re-implements ``Eva.forward_features`` for a given
``keep_indices`` tensor: add ``pos_embed`` to the full sequence, gather the kept tokens, gather the
matching RoPE rows and add the head axis (B, 1, K, 2*head_dim), run the blocks and the final norm. With
``keep_indices=None`` it equals ``eva(tokens)[0]`` exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.primus import Primus, PrimusB, PrimusL, PrimusM, PrimusS
from dynamic_network_architectures.building_blocks.eva import Eva
from einops import rearrange
from timm.layers import apply_keep_indices_nlc
from timm.layers.pos_embed_sincos import build_rotary_pos_embed
from torch import nn
from torch.utils.checkpoint import checkpoint

from nnssl.architectures.spec import ArchitectureSpec

#: Default side of the cubic patch embedding (one token = TOKEN_SIZE^3 voxels); ``arch.token_size`` changes it.
TOKEN_SIZE = 8
#: Drop-path rate of the Eva encoder during pre-training (upstream BaseEvaMAETrainer); 0 downstream.
PRETRAIN_DROP_PATH = 0.2
#: The preset classes nnU-Net rebuilds by name.
PRIMUS_PRESET_CLASSES: dict[str, type[Primus]] = {
    "PrimusS": PrimusS,
    "PrimusB": PrimusB,
    "PrimusM": PrimusM,
    "PrimusL": PrimusL,
}
PRIMUS_PATH = "dynamic_network_architectures.architectures.primus.Primus"
#: (embed_dim, depth, heads) of the presets, as dna's ``_PRIMUS_CONFIGS``; the defaults of ``arch.*`` overrides.
PRIMUS_PRESET_SHAPES: dict[str, tuple[int, int, int]] = {
    "PrimusS": (396, 12, 6),
    "PrimusB": (792, 12, 12),
    "PrimusM": (864, 16, 12),
    "PrimusL": (1056, 24, 16),
}

#: Keyword arguments of the tiny CPU variant (dna ``Primus`` class, rebuilt dynamically downstream;
#: ``input_shape`` is added per patch size by the adaptation plan). RoPE needs
#: embed_dim / heads / 1.5 to be an integer divisible by 4: 72 / 3 / 1.5 = 16.
PRIMUS_TINY_KWARGS: dict = {
    "embed_dim": 72,
    "patch_embed_size": [TOKEN_SIZE] * 3,
    "eva_depth": 2,
    "eva_numheads": 3,
    "drop_path_rate": 0.0,
    "init_values": 0.1,
    "scale_attn_inner": True,
}


def primus_shape_problems(token_size: int, embed_dim: int, depth: int, num_heads: int) -> list[tuple[str, Any, str]]:
    """``(key, value, what is allowed)`` for every Primus shape setting dna cannot build (empty: all fine).

    * ``arch.token_size``: a power of two >= 2 (dna's ``PatchDecode`` up-samples in log2(t) stride-2 stages);
    * ``arch.num_heads`` >= 1 and ``arch.depth`` >= 1;
    * ``arch.embed_dim``: the Eva's 3D RoPE needs ``rope_dim = embed_dim / num_heads / 1.5`` to be an integer divisible
      by 4, i.e. ``embed_dim`` a multiple of ``6 * num_heads`` (Primus-M: 864 = 6 * 12 * 12; 180 = 6 * 3 * 10).
    """
    problems: list[tuple[str, Any, str]] = []
    if token_size < 2 or token_size & (token_size - 1):
        problems.append(("arch.token_size", token_size, "a power of two >= 2 (2, 4, 8, 16; PatchDecode halves it)"))
    if depth < 1:
        problems.append(("arch.depth", depth, ">= 1 (Eva blocks)"))
    if num_heads < 1:
        problems.append(("arch.num_heads", num_heads, ">= 1"))
    elif embed_dim < 1 or embed_dim % (6 * num_heads):
        low = max(1, embed_dim // (6 * num_heads)) * 6 * num_heads
        problems.append(
            (
                "arch.embed_dim",
                embed_dim,
                f"a multiple of 6 * arch.num_heads = {6 * num_heads} (RoPE: embed_dim / num_heads / 1.5 must be an "
                f"integer divisible by 4), e.g. {low} or {low + 6 * num_heads}",
            )
        )
    return problems


def primus_variant(
    spec: ArchitectureSpec,
    token_size: int | None = None,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
) -> ArchitectureSpec:
    """``spec`` (a Primus entry) with another token size, width, depth or head count (``None``: the entry's own).

    Unchanged settings return ``spec`` itself, so the presets stay exactly as registered (``PrimusM`` is built by
    name downstream). Anything else becomes dna's generic ``Primus`` class path with ``arch_kwargs`` (as PrimusTiny),
    which nnU-Net rebuilds dynamically: ``embed_dim``, ``patch_embed_size = [t, t, t]``, ``eva_depth``,
    ``eva_numheads``, ``init_values`` 0.1, ``scale_attn_inner`` and ``drop_path_rate`` 0 (the downstream network;
    pre-training variants of the S/B/M/L presets are built with drop-path :data:`PRETRAIN_DROP_PATH`, which has no
    parameters). ``token_size`` and ``patch_multiple`` of the entry become ``t``. Raises ValueError naming the
    ``arch.*`` key of an impossible shape (:func:`primus_shape_problems`).
    """
    if spec.arch_kwargs is not None:
        base = (
            int(spec.arch_kwargs["patch_embed_size"][0]),
            int(spec.arch_kwargs["embed_dim"]),
            int(spec.arch_kwargs["eva_depth"]),
            int(spec.arch_kwargs["eva_numheads"]),
        )
        drop_path = float(spec.arch_kwargs.get("drop_path_rate", 0.0))
    elif spec.name in PRIMUS_PRESET_SHAPES:
        base = (int(spec.token_size or TOKEN_SIZE), *PRIMUS_PRESET_SHAPES[spec.name])
        drop_path = PRETRAIN_DROP_PATH
    else:
        raise ValueError(f"Architecture '{spec.name}' is not a Primus; arch.* keys apply to Primus entries only.")
    wanted = tuple(b if v is None else int(v) for v, b in zip((token_size, embed_dim, depth, num_heads), base))
    if wanted == base:
        return spec
    t, dim, blocks, heads = wanted
    problems = primus_shape_problems(t, dim, blocks, heads)
    if problems:
        key, value, allowed = problems[0]
        raise ValueError(f"'{key}' = {value!r} is not allowed on {spec.name}: it must be {allowed}.")
    kwargs = {
        **(spec.arch_kwargs or {}),
        "embed_dim": dim,
        "patch_embed_size": [t] * 3,
        "eva_depth": blocks,
        "eva_numheads": heads,
        "drop_path_rate": 0.0,
        "init_values": 0.1,
        "scale_attn_inner": True,
    }
    label = ",".join(f"{k}={v}" for k, v, b in zip(("t", "dim", "depth", "heads"), wanted, base) if v != b)

    def build(in_channels: int, out_channels: int, patch_size: tuple[int, int, int]) -> nn.Module:
        return build_primus_dynamic({**kwargs, "drop_path_rate": drop_path}, in_channels, out_channels, patch_size)

    build.__name__ = f"build_{spec.name}_variant"
    build.__doc__ = f"{spec.name} with {label} (dna Primus, drop-path {drop_path} in pre-training)."
    return dataclasses.replace(
        spec,
        name=f"{spec.name}[{label}]",
        build=build,
        arch_class_name=PRIMUS_PATH,
        arch_kwargs=kwargs,
        arch_kwargs_requiring_import=(),
        token_size=t,
        patch_multiple=t,
    )


def primus_token_grid(patch_size: Sequence[int], token_size: int = TOKEN_SIZE) -> tuple[int, int, int]:
    """Token grid (W, H, D) of a patch: each side divided by ``token_size``; a remainder is an error."""
    if len(patch_size) != 3:
        raise ValueError(f"Primus needs a 3D patch size, got {list(patch_size)}.")
    bad = [int(p) for p in patch_size if int(p) % token_size != 0 or int(p) <= 0]
    if bad:
        raise ValueError(
            f"Patch size {list(patch_size)} is not divisible by the token size {token_size} (sides {bad}). "
            f"Use a multiple of {token_size} on every axis, e.g. 160 or 32."
        )
    return tuple(int(p) // token_size for p in patch_size)  # type: ignore[return-value]


def flatten_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, W, H, D) feature grid -> (B, W*H*D, C) tokens in dna's (w h d) order."""
    return rearrange(x, "b c w h d -> b (w h d) c")


def unflatten_tokens(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """(B, W*H*D, C) tokens in (w h d) order -> (B, C, W, H, D); inverse of :func:`flatten_tokens`."""
    w, h, d = (int(g) for g in grid)
    return rearrange(tokens, "b (w h d) c -> b c w h d", w=w, h=h, d=d)


def token_grid_positions(grid: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """(N, 3) long tensor: row ``t`` is the grid position (w, h, d) of token ``t``."""
    w, h, d = (int(g) for g in grid)
    axes = [torch.arange(n, device=device) for n in (w, h, d)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def resampled_pos_embed(pos_embed: torch.Tensor, build_grid: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """(1, N, D) learned positional embedding of ``build_grid`` -> (1, N', D) for ``grid`` (trilinear, (w h d))."""
    if tuple(grid) == tuple(build_grid):
        return pos_embed
    volume = unflatten_tokens(pos_embed, build_grid)
    volume = F.interpolate(volume, size=tuple(int(g) for g in grid), mode="trilinear", align_corners=False)
    return flatten_tokens(volume)


def rope_table(eva: Eva, grid: Sequence[int]) -> torch.Tensor | None:
    """The RoPE table (N', 2 * rope_dim) of dna's Eva for ``grid`` (``eva.rope.get_embed()`` at the build grid).

    Other grids are rebuilt with timm's ``build_rotary_pos_embed`` and the encoder's ``ref_feat_shape``, so the
    new grid maps onto the same normalised extent as the build grid.
    """
    rope = eva.rope
    if rope is None:
        return None
    if rope.feat_shape is not None and tuple(grid) == tuple(rope.feat_shape):
        return rope.get_embed()
    reference = rope.get_embed()
    sin, cos = build_rotary_pos_embed(
        feat_shape=[int(g) for g in grid],
        dim=rope.dim,
        max_res=rope.max_res,
        temperature=rope.temperature,
        linear_bands=rope.linear_bands,
        in_pixels=rope.in_pixels,
        ref_feat_shape=rope.ref_feat_shape,
        grid_offset=getattr(rope, "grid_offset", 0.0),
        grid_indexing=getattr(rope, "grid_indexing", "ij"),
        device=reference.device,
        dtype=reference.dtype,
    )
    return torch.cat([sin, cos], dim=-1)


def eva_forward_tokens(
    eva: Eva,
    tokens: torch.Tensor,
    keep_indices: torch.Tensor | None = None,
    grid: Sequence[int] | None = None,
    build_grid: Sequence[int] | None = None,
) -> torch.Tensor:
    """Run dna's Eva encoder on all tokens of a grid or on the subset ``keep_indices``.

    ``tokens`` is (B, N, D) in (w h d) order. Without ``grid`` (or with ``grid == build_grid``) N must equal the
    encoder's grid (``pos_embed`` and RoPE are built for one grid). ``keep_indices`` (B, K) long selects, per
    sample, the tokens that enter the blocks; the learned ``pos_embed`` is added before the selection and the RoPE
    rows are gathered with the same indices, so every kept token keeps its own position. Returns (B, K, D) (K = N
    without indices), row ``k`` belonging to token ``keep_indices[:, k]``. Equal to ``eva(tokens)[0]`` without
    indices at the build grid; honours ``eva.grad_checkpointing``.

    A ``grid`` other than ``build_grid`` (DINO's local crops) resamples ``pos_embed`` trilinearly
    (:func:`resampled_pos_embed`) and rebuilds RoPE for that grid (:func:`rope_table`); token dropping is only
    defined at the build grid.
    """
    if eva.num_prefix_tokens:
        raise ValueError("eva_forward_tokens does not support register/prefix tokens (num_reg_tokens must be 0).")
    other_grid = grid is not None and build_grid is not None and tuple(grid) != tuple(build_grid)
    if other_grid and keep_indices is not None:
        raise ValueError(f"Token dropping needs the build grid {tuple(build_grid)}, got the grid {tuple(grid)}.")
    if not other_grid and eva.pos_embed is not None and tokens.shape[1] != eva.pos_embed.shape[1]:
        raise ValueError(
            f"Got {tokens.shape[1]} tokens but the encoder was built for {eva.pos_embed.shape[1]} "
            "(pos_embed). Build the network with the patch size you feed it."
        )
    x = tokens
    if eva.pos_embed is not None:
        x = x + (resampled_pos_embed(eva.pos_embed, build_grid, grid).to(x.dtype) if other_grid else eva.pos_embed)
    x = eva.pos_drop(x)
    rope = rope_table(eva, grid) if other_grid else (eva.rope.get_embed() if eva.rope is not None else None)
    if keep_indices is not None:
        x = x.gather(1, keep_indices.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        if rope is not None:
            rope = apply_keep_indices_nlc(x, rope, keep_indices).unsqueeze(1)
    return run_eva_blocks(eva, x, rope)


def run_eva_blocks(eva: nn.Module, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
    """Eva's blocks (with gradient checkpointing when enabled) and final norm on tokens ``x`` with ``rope``."""
    for block in eva.blocks:
        if eva.grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, rope=rope, use_reentrant=False)
        else:
            x = block(x, rope=rope)
    return eva.norm(x)


def build_primus_preset(
    name: str, in_channels: int, out_channels: int, patch_size: Sequence[int], drop_path_rate: float
) -> Primus:
    """A dna Primus preset (``PrimusS``/``B``/``M``/``L``) with 8^3 tokens for ``patch_size``."""
    primus_token_grid(patch_size)
    cls = PRIMUS_PRESET_CLASSES[name]
    return cls(
        input_channels=in_channels,
        output_channels=out_channels,
        patch_embed_size=(TOKEN_SIZE,) * 3,
        input_shape=tuple(int(p) for p in patch_size),
        drop_path_rate=drop_path_rate,
        init_values=0.1,
        scale_attn_inner=True,
    )


def build_primus_dynamic(kwargs: dict, in_channels: int, out_channels: int, patch_size: Sequence[int]) -> Primus:
    """dna ``Primus`` from dynamic kwargs (the nnU-Net rebuild path); ``input_shape`` = ``patch_size``."""
    primus_token_grid(patch_size, int(kwargs["patch_embed_size"][0]))
    args = dict(kwargs)
    args["patch_embed_size"] = tuple(int(p) for p in args["patch_embed_size"])
    args["input_shape"] = tuple(int(p) for p in patch_size)
    return Primus(input_channels=in_channels, num_classes=out_channels, **args)


def _preset_builder(name: str):
    def build(in_channels: int, out_channels: int, patch_size: tuple[int, int, int]) -> nn.Module:
        return build_primus_preset(name, in_channels, out_channels, patch_size, PRETRAIN_DROP_PATH)

    build.__name__ = f"build_{name}"
    build.__doc__ = f"{name} for pre-training (drop-path {PRETRAIN_DROP_PATH}, 8^3 tokens, grid = patch / 8)."
    return build


def build_primus_tiny(in_channels: int, out_channels: int, patch_size: tuple[int, int, int]) -> nn.Module:
    """PrimusTiny: dna ``Primus`` with 72-d tokens, 2 blocks, 3 heads, no drop-path (deterministic)."""
    return build_primus_dynamic(PRIMUS_TINY_KWARGS, in_channels, out_channels, patch_size)


_PRIMUS_KEYS = {
    "key_to_encoder": "eva",
    "key_to_stem": "down_projection",
    "keys_to_in_proj": ("down_projection.proj",),
    "key_to_lpe": "eva.pos_embed",
    "family": "transformer",
    "token_size": TOKEN_SIZE,
    "patch_multiple": TOKEN_SIZE,
}

PRIMUS_SPECS: tuple[ArchitectureSpec, ...] = (
    *(
        ArchitectureSpec(name=name, build=_preset_builder(name), arch_class_name=name, **_PRIMUS_KEYS)
        for name in PRIMUS_PRESET_CLASSES
    ),
    ArchitectureSpec(
        name="PrimusTiny",
        build=build_primus_tiny,
        arch_class_name=PRIMUS_PATH,
        arch_kwargs=PRIMUS_TINY_KWARGS,
        arch_kwargs_requiring_import=(),
        tiny=True,
        **_PRIMUS_KEYS,
    ),
)
