"""Residual-encoder U-Nets: the real ResEnc-L of nnssl/nnU-Net and a tiny CPU variant.

Both are ``dynamic_network_architectures.architectures.unet.ResidualEncoderUNet``.

* ``ResEncL`` is the preset nnU-Net's ``PretrainedTrainer`` rebuilds by name: 6 stages with
  features (32, 64, 128, 256, 320, 320), 3x3x3 kernels, strides (1, 2, 2, 2, 2, 2) (total
  down-sampling 32), residual blocks per stage (1, 3, 4, 6, 6, 6), one conv per decoder stage,
  conv bias, InstanceNorm3d(eps=1e-5, affine=True), LeakyReLU(inplace=True), no deep supervision.
* ``ResEncTiny`` is the same class with 4 stages (8, 16, 32, 64), strides (1, 2, 2, 2) and one block per
  stage. It is stored in the adaptation plan as the dynamic class ``ResidualEncoderUNet`` with its full
  keyword arguments (classes as dotted import paths), so nnU-Net can rebuild it without knowing the name.

Weights that transfer downstream: ``encoder.stages`` (encoder), ``encoder.stem`` (stem); the first
convolution is reachable under two module paths (``encoder.stem.convs.0.conv`` and its alias
``encoder.stem.convs.0.all_modules.0``), both listed in ``keys_to_in_proj``.

InstanceNorm needs more than one voxel per channel, so the bottleneck must be at least 2 voxels wide:
ResEnc-L takes patches of at least 64^3 (sides multiples of 32), ResEncTiny at least 16^3 (multiples of 8);
the builders check this.
"""

from __future__ import annotations

import pydoc
from typing import Any

from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from torch import nn

from nnssl.architectures.spec import ArchitectureSpec

RESIDUAL_ENCODER_UNET_PATH = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
CLASS_KWARGS = ("conv_op", "norm_op", "dropout_op", "nonlin")


def class_path(cls: type) -> str:
    """Dotted import path of a class, as nnU-Net stores it in plans (``torch.nn.modules.conv.Conv3d``)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _resenc_kwargs(
    features: list[int], strides: list[int], blocks: list[int], decoder_convs: list[int]
) -> dict[str, Any]:
    n_stages = len(features)
    return {
        "n_stages": n_stages,
        "features_per_stage": list(features),
        "conv_op": class_path(nn.Conv3d),
        "kernel_sizes": [[3, 3, 3] for _ in range(n_stages)],
        "strides": [[s, s, s] for s in strides],
        "n_blocks_per_stage": list(blocks),
        "n_conv_per_stage_decoder": list(decoder_convs),
        "conv_bias": True,
        "norm_op": class_path(nn.InstanceNorm3d),
        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": class_path(nn.LeakyReLU),
        "nonlin_kwargs": {"inplace": True},
    }


#: ResEnc-L exactly as upstream's ``get_res_enc_l`` (upstream-nnssl.md 6.1), in nnU-Net's dynamic form.
RESENC_L_KWARGS: dict[str, Any] = _resenc_kwargs(
    features=[32, 64, 128, 256, 320, 320],
    strides=[1, 2, 2, 2, 2, 2],
    blocks=[1, 3, 4, 6, 6, 6],
    decoder_convs=[1, 1, 1, 1, 1],
)

#: The tiny CPU variant (same class, 4 stages).
RESENC_TINY_KWARGS: dict[str, Any] = _resenc_kwargs(
    features=[8, 16, 32, 64],
    strides=[1, 2, 2, 2],
    blocks=[1, 1, 1, 1],
    decoder_convs=[1, 1, 1],
)


def resolve_class_kwargs(arch_kwargs: dict[str, Any], requiring_import: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Copy of ``arch_kwargs`` with the dotted paths in ``requiring_import`` replaced by the classes.

    This is what nnU-Net's ``get_network_from_plans`` does with ``pydoc.locate``; a path that does not
    import raises ImportError naming the key and the path.
    """
    kwargs = dict(arch_kwargs)
    for key in requiring_import:
        value = kwargs.get(key)
        if value is None or not isinstance(value, str):
            continue
        located = pydoc.locate(value)
        if located is None:
            raise ImportError(
                f"arch_kwargs['{key}'] = '{value}' cannot be imported (pydoc.locate returned None). "
                "Store the full dotted path of an installed class, e.g. 'torch.nn.modules.conv.Conv3d'."
            )
        kwargs[key] = located
    return kwargs


def build_residual_encoder_unet(arch_kwargs: dict[str, Any], in_channels: int, out_channels: int) -> nn.Module:
    """A ``ResidualEncoderUNet`` from nnU-Net-style dynamic kwargs, initialised as nnU-Net does.

    nnU-Net applies the class's ``initialize`` (He init, last norm of each residual block zeroed).
    Deep supervision is off (the pre-training and the adaptation check both use a single output).
    """
    kwargs = resolve_class_kwargs(arch_kwargs, CLASS_KWARGS)
    kwargs.setdefault("deep_supervision", False)
    network = ResidualEncoderUNet(input_channels=in_channels, num_classes=out_channels, **kwargs)
    network.apply(ResidualEncoderUNet.initialize)
    return network


def check_bottleneck(name: str, arch_kwargs: dict[str, Any], patch_size: tuple[int, int, int]) -> None:
    """Raise ValueError unless the bottleneck keeps at least 2 voxels per axis (InstanceNorm needs them)."""
    total = 1
    for stride in arch_kwargs["strides"]:
        total *= int(stride[0])
    if any(int(p) < 2 * total or int(p) % total for p in patch_size):
        raise ValueError(
            f"{name} down-samples by {total}; its InstanceNorm needs at least 2 bottleneck voxels per axis, so "
            f"every patch side must be a multiple of {total} and at least {2 * total}. Got {list(patch_size)}."
        )


def build_resenc_l(in_channels: int, out_channels: int, patch_size: tuple[int, int, int]) -> nn.Module:
    """ResEnc-L (upstream 6.1) for patches with sides that are multiples of 32 and at least 64."""
    check_bottleneck("ResEncL", RESENC_L_KWARGS, patch_size)
    return build_residual_encoder_unet(RESENC_L_KWARGS, in_channels, out_channels)


def build_resenc_tiny(in_channels: int, out_channels: int, patch_size: tuple[int, int, int]) -> nn.Module:
    """ResEncTiny: the CPU test network (4 stages, 0.32M parameters), patches of at least 16^3."""
    check_bottleneck("ResEncTiny", RESENC_TINY_KWARGS, patch_size)
    return build_residual_encoder_unet(RESENC_TINY_KWARGS, in_channels, out_channels)


_RESENC_KEYS = {
    "key_to_encoder": "encoder.stages",
    "key_to_stem": "encoder.stem",
    "keys_to_in_proj": ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"),
    "key_to_lpe": None,
}

RESENC_L = ArchitectureSpec(
    name="ResEncL",
    build=build_resenc_l,
    arch_class_name="ResEncL",
    patch_multiple=32,
    **_RESENC_KEYS,
)

RESENC_TINY = ArchitectureSpec(
    name="ResEncTiny",
    build=build_resenc_tiny,
    arch_class_name="ResidualEncoderUNet",
    patch_multiple=8,
    arch_kwargs=RESENC_TINY_KWARGS,
    arch_kwargs_requiring_import=CLASS_KWARGS,
    tiny=True,
    **_RESENC_KEYS,
)

RESENC_SPECS: tuple[ArchitectureSpec, ...] = (RESENC_L, RESENC_TINY)
