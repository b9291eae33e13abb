"""``nnssl_register FIXED MOVING -o OUT [-c CKPT | --mind]``: training-free registration with dense features.

Features of a frozen nnssl encoder (any checkpoint or export with ``network_weights`` + ``nnssl_adaptation_plan``)
or the hand-crafted MIND-SSC baseline, one PCA basis for both images, ConvexAdam, optional affine pre-alignment.
Writes the displacement field, the warped image and labels, metrics.json and (``--figure``) figure.png. See
documentation/registration.md and :mod:`nnssl.registration`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from nnssl.cli.extract_features import add_feature_arguments, device_of, feature_settings


def _label_names(text: str | None) -> dict[int, str]:
    """``{"GM": 1, ...}`` (nnU-Net style, a JSON file or inline) -> ``{1: "GM"}``."""
    if not text:
        return {}
    from pathlib import Path

    data = json.loads(Path(text).read_text() if Path(text).is_file() else text)
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        raise ValueError(f"--label_names must map names to integer label values, e.g. '{{\"GM\": 1}}', got {text}")
    return {int(v): str(k) for k, v in data.items()}


def build_parser() -> argparse.ArgumentParser:
    from nnssl.registration.settings import ConvexAdamSettings

    d = ConvexAdamSettings()
    parser = argparse.ArgumentParser(
        prog="nnssl_register",
        description="Register MOVING to FIXED with frozen SSL features (or MIND-SSC) and ConvexAdam; writes the "
        "displacement field, warped image/labels, metrics.json and optionally figure.png.",
    )
    parser.add_argument("fixed", help="fixed image (NIfTI, NRRD, MHA)")
    parser.add_argument("moving", help="moving image")
    parser.add_argument("-o", dest="output", required=True, help="output folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--checkpoint", help="encoder checkpoint or export (features from it)")
    source.add_argument("--mind", action="store_true", help="MIND-SSC features (hand-crafted baseline)")
    parser.add_argument(
        "--random_init",
        action="store_true",
        help="a random-init encoder of the checkpoint's architecture instead of its weights (baseline)",
    )
    parser.add_argument("--fixed_label", help="label map of the fixed image (for Dice)")
    parser.add_argument("--moving_label", help="label map of the moving image (warped, and for Dice)")
    parser.add_argument("--fixed_mask", help="mask of the fixed image (zero outside, e.g. brain mask)")
    parser.add_argument("--moving_mask", help="mask of the moving image")
    parser.add_argument("--label_names", help='names of the label values, JSON file or text: {"GM": 1, "WM": 2}')
    parser.add_argument("--modality", help="modality of both images (selects the plan's normalisation, e.g. CT)")
    parser.add_argument(
        "--spacing",
        type=float,
        default=None,
        help="isotropic grid spacing in mm (default: the checkpoint plan's; 1.5 with --mind)",
    )
    parser.add_argument("--affine", action="store_true", help="affine pre-alignment (mutual information)")
    parser.add_argument(
        "--pca",
        type=int,
        default=8,
        metavar="K",
        help="PCA channels of the encoder features (one basis for both images; 0 keeps all; default 8)",
    )
    parser.add_argument("--feature_scale", type=float, default=1.0, help="mean squared norm of the scaled features")
    parser.add_argument("--mind_radius", type=int, default=1)
    parser.add_argument("--mind_dilation", type=int, default=2)
    group = parser.add_argument_group("ConvexAdam")
    group.add_argument(
        "--grid_spacing",
        type=int,
        default=d.grid_spacing,
        help=f"coarse grid of the convex step (voxels; default {d.grid_spacing})",
    )
    group.add_argument(
        "--displacement_range",
        type=int,
        default=d.displacement_range,
        help=f"search half-width in coarse cells (default {d.displacement_range})",
    )
    group.add_argument("--no_inverse_consistency", action="store_true", help="skip the inverse-consistency step")
    group.add_argument(
        "--adam_grid_spacing",
        type=int,
        default=d.adam_grid_spacing,
        help=f"grid of the Adam step (voxels; default {d.adam_grid_spacing})",
    )
    group.add_argument(
        "--adam_iterations",
        type=int,
        default=d.adam_iterations,
        help=f"Adam iterations (0 skips the step; default {d.adam_iterations})",
    )
    group.add_argument("--adam_lr", type=float, default=d.adam_lr, help=f"Adam learning rate (default {d.adam_lr})")
    group.add_argument(
        "--regularisation",
        type=float,
        default=d.regularisation,
        help=f"weight of the diffusion regulariser (default {d.regularisation})",
    )
    group.add_argument(
        "--smoothing_kernel",
        type=int,
        default=d.smoothing_kernel,
        help=f"odd side of the average filter applied each iteration (default {d.smoothing_kernel})",
    )
    group.add_argument(
        "--smoothing_passes",
        type=int,
        default=d.smoothing_passes,
        help=f"passes of that filter (default {d.smoothing_passes})",
    )
    parser.add_argument("--figure", action="store_true", help="also write figure.png (fixed, moving, warped, grid)")
    add_feature_arguments(parser)
    for action in parser._actions:
        if action.dest == "stages":
            action.help = "encoder stages, comma separated (default: every map of stride <= 8)"
    return parser


def settings_from_args(args: argparse.Namespace):
    from nnssl.registration.pipeline import RegistrationSettings
    from nnssl.registration.settings import ConvexAdamSettings

    convex = ConvexAdamSettings(
        grid_spacing=args.grid_spacing,
        displacement_range=args.displacement_range,
        inverse_consistency=not args.no_inverse_consistency,
        adam_grid_spacing=args.adam_grid_spacing,
        adam_iterations=args.adam_iterations,
        adam_lr=args.adam_lr,
        regularisation=args.regularisation,
        smoothing_kernel=args.smoothing_kernel,
        smoothing_passes=args.smoothing_passes,
    ).check()
    if args.pca < 0:
        raise ValueError(f"--pca must be >= 0, got {args.pca}")
    if not args.feature_scale > 0:
        raise ValueError(f"--feature_scale must be > 0, got {args.feature_scale}")
    return RegistrationSettings(
        pca_channels=args.pca,
        feature_scale=args.feature_scale,
        affine=args.affine,
        mind_radius=args.mind_radius,
        mind_dilation=args.mind_dilation,
        convex_adam=convex,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from nnssl.engine.checkpoint import CheckpointError

    try:
        if args.random_init and not args.checkpoint:
            raise ValueError("--random_init needs -c CHECKPOINT (the architecture to initialise)")
        for flag in ("fixed", "moving", "fixed_label", "moving_label", "fixed_mask", "moving_mask"):
            value = getattr(args, flag)
            if value is not None:
                from pathlib import Path

                if not Path(value).is_file():
                    raise FileNotFoundError(f"{flag.replace('_', ' ')} {value} does not exist")
        settings = settings_from_args(args)
        names = _label_names(args.label_names)
        device = device_of(args)
        from nnssl.registration.outputs import save_result
        from nnssl.registration.pipeline import register_images

        encoder = None
        if args.checkpoint:
            from nnssl.evaluation.encoder import FrozenEncoder

            encoder = FrozenEncoder.from_checkpoint(
                args.checkpoint, device, args.precision, random_init_seed=0 if args.random_init else None
            )
        result = register_images(
            args.fixed,
            args.moving,
            args.fixed_label,
            args.moving_label,
            encoder=encoder,
            settings=settings,
            fixed_mask=args.fixed_mask,
            moving_mask=args.moving_mask,
            spacing=args.spacing,
            modality=args.modality,
            feature_settings=feature_settings(args),
            label_names=names,
            device=device,
        )
        if args.checkpoint:
            result.metrics["checkpoint"] = args.checkpoint + (" (random init)" if args.random_init else "")
        written = save_result(result, args.output, figure=args.figure)
    except (CheckpointError, FileNotFoundError, KeyError, ValueError, RuntimeError) as err:
        sys.stderr.write(f"nnssl_register: error: {err}\n")
        return 1
    m = result.metrics
    lines = [f"features: {m['features']}", f"grid: {m['grid']['shape']} at {m['grid']['spacing']} mm"]
    if "mean_dice_after" in m:
        lines.append(f"mean Dice before:       {m['mean_dice_before']:.4f}")
        if "mean_dice_after_affine" in m:
            lines.append(f"mean Dice after affine: {m['mean_dice_after_affine']:.4f}")
        lines.append(f"mean Dice after:        {m['mean_dice_after']:.4f}   {m['dice_after']}")
    lines.append(f"SDlogJ {m['sdlogj']:.4f}, folding {m['folding_percent']:.4f}%, {m['seconds']['total']:.1f} s")
    lines.append(f"written to {args.output}: {', '.join(sorted(written))}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
