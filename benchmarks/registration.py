"""Registration of the shipped demo pair: Dice, deformation quality and seconds per pair, per feature source, with
the ``convexadam`` package's own MIND-SSC pipeline (``convex_adam_pt``) as the reference measured in the same run.

The pair (``demo_registration``): the ICBM152 template (fixed) and the ITK examples' subject (moving,
skull-stripped), grey/white-matter labels, affine pre-alignment (computed once and shared). Rows:

* ``convexadam package (MIND)``: ``convexAdam.convex_adam_MIND.convex_adam_pt`` on the fixed image and the
  pre-aligned moving image on the fixed grid (its defaults), labels warped with its field;
* ``nnssl MIND-SSC``: :func:`nnssl.registration.pipeline.register_prepared` without an encoder;
* ``random-init <arch>`` / ``pre-trained <arch>`` for every ``--checkpoint`` given (features, PCA 8, ConvexAdam).

Ratios are against the package's row (Dice) and its seconds.

    python benchmarks/registration.py --checkpoint demo_output/.../checkpoint_final.pth --spacing 1.5
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", action="append", default=[], help="encoder checkpoint(s) to compare")
    parser.add_argument("--spacing", type=float, default=1.5, help="grid spacing in mm (default 1.5)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from nnssl.evaluation.api import prepare_eval_set
    from nnssl.evaluation.encoder import FrozenEncoder
    from nnssl.evaluation.eval_set import load_eval_set
    from nnssl.evaluation.probes import dice_per_label, nanmean
    from nnssl.registration.convex_adam import _convexadam_utils
    from nnssl.registration.geometry import affine_prealignment, moving_positions, sample_moving, voxel_map
    from nnssl.registration.metrics import deformation_quality
    from nnssl.registration.pipeline import plan_at_spacing, register_prepared, registration_plan

    pair_set = load_eval_set("demo_registration")
    pair = pair_set.pairs[0]
    names = {v: n for n, v in pair_set.labels.items()}
    values = sorted(v for v in names if v)
    prepared = prepare_eval_set(pair_set, registration_plan(args.spacing))
    fixed, moving = prepared[pair.fixed], prepared[pair.moving]
    tick = time.perf_counter()
    world = affine_prealignment(fixed.data[0], fixed.affine, moving.data[0], moving.affine)
    affine_seconds = time.perf_counter() - tick
    matrix = voxel_map(fixed.affine, moving.affine, world)
    positions = moving_positions(fixed.shape, matrix)
    moving_on_fixed = sample_moving(moving.data[:1], positions)[0]
    label_on_fixed = sample_moving(moving.label[None], positions, mode="nearest", outside="zeros")[0]
    affine_dice = nanmean(list(dice_per_label(label_on_fixed.numpy(), fixed.label, values).values()))
    rows = []

    _convexadam_utils()  # imports the package without its process-wide warnings filter
    import warnings

    with warnings.catch_warnings():
        from convexAdam.convex_adam_MIND import convex_adam_pt

        tick = time.perf_counter()
        field = convex_adam_pt(
            torch.as_tensor(fixed.data[0]), moving_on_fixed, device=torch.device(args.device), dtype=torch.float32
        )
        seconds = time.perf_counter() - tick
    u = torch.as_tensor(np.moveaxis(field, -1, 0), dtype=torch.float32)
    final = moving_positions(fixed.shape, matrix, u)
    warped = sample_moving(moving.label[None], final, mode="nearest", outside="zeros")[0].numpy()
    quality = deformation_quality(u)
    dice = nanmean(list(dice_per_label(warped, fixed.label, values).values()))
    rows.append(("convexadam package (MIND)", dice, quality["sdlogj"], 100 * quality["folding_fraction"], seconds))

    result = register_prepared(fixed, moving, None, world_transform=world, label_names=names, device=args.device)
    m = before = result.metrics
    rows.append(("nnssl MIND-SSC", m["mean_dice_after"], m["sdlogj"], m["folding_percent"], m["seconds"]["total"]))

    for path in args.checkpoint:
        for label, seed in (("random-init", 0), ("pre-trained", None)):
            encoder = FrozenEncoder.from_checkpoint(path, args.device, random_init_seed=seed)
            f = prepare_eval_set(pair_set, plan_at_spacing(encoder.adaptation_plan, args.spacing))
            result = register_prepared(
                f[pair.fixed], f[pair.moving], encoder, world_transform=world, label_names=names, device=args.device
            )
            m = result.metrics
            rows.append(
                (
                    f"{label} {encoder.backbone.arch.name}",
                    m["mean_dice_after"],
                    m["sdlogj"],
                    m["folding_percent"],
                    m["seconds"]["total"],
                )
            )

    print(f"pair {pair.fixed} <- {pair.moving}, grid {list(fixed.shape)} at {args.spacing} mm, device {args.device}")
    print(
        f"mean Dice before {before['mean_dice_before']:.4f}, after the affine step {affine_dice:.4f} "
        f"({affine_seconds:.1f} s)"
    )
    reference_dice, reference_seconds = rows[0][1], rows[0][4]
    print(f"{'features':<34}{'mean Dice':>10}{'x ref':>8}{'SDlogJ':>9}{'fold %':>9}{'seconds':>9}{'x ref':>8}")
    for name, dice, sdlogj, folding, seconds in rows:
        print(
            f"{name:<34}{dice:>10.4f}{dice / reference_dice:>8.3f}{sdlogj:>9.3f}{folding:>9.4f}"
            f"{seconds:>9.1f}{seconds / reference_seconds:>8.2f}"
        )


if __name__ == "__main__":
    main()
