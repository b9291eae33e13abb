"""``nnssl_probe CKPT --eval_set SET``: how good are a frozen encoder's features? Dense linear probe Dice per label
(and linear / kNN classification accuracy when the set has classes), optionally beside a random-init encoder of the
same architecture. ``SET`` is an evaluation-set JSON (documentation/evaluation.md) or ``demo``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from nnssl.cli.extract_features import add_feature_arguments, device_of, feature_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnssl_probe",
        description="Probe a frozen pre-trained encoder on a labelled evaluation set (Dice per label, accuracy).",
    )
    parser.add_argument("checkpoint", help="checkpoint or export with network_weights + nnssl_adaptation_plan")
    parser.add_argument("--eval_set", default="demo", help="evaluation-set JSON, or 'demo' for the shipped set")
    parser.add_argument("--random_init", action="store_true", help="also probe a random-init encoder (baseline)")
    parser.add_argument("--max_voxels", type=int, default=50_000, help="training voxels of the dense probe")
    parser.add_argument("--seed", type=int, default=0, help="seed of the voxel sampling and of the random init")
    parser.add_argument("-o", dest="output", default=None, help="write the scores to this JSON file")
    add_feature_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from nnssl.engine.checkpoint import CheckpointError
    from nnssl.evaluation.api import evaluate_encoder, format_report, prepare_eval_set
    from nnssl.evaluation.encoder import FrozenEncoder
    from nnssl.evaluation.eval_set import EvalSetError, load_eval_set

    try:
        eval_set = load_eval_set(args.eval_set)
        device = device_of(args)
        encoders = {"pre-trained": FrozenEncoder.from_checkpoint(args.checkpoint, device, args.precision)}
        if args.random_init:
            encoders = {
                "random init": FrozenEncoder.from_checkpoint(
                    args.checkpoint, device, args.precision, random_init_seed=args.seed
                ),
                **encoders,
            }
        prepared = prepare_eval_set(eval_set, encoders["pre-trained"].adaptation_plan)
        reports = {
            name: evaluate_encoder(
                encoder, eval_set, prepared, feature_settings(args), max_voxels=args.max_voxels, seed=args.seed
            )
            for name, encoder in encoders.items()
        }
    except (CheckpointError, EvalSetError, FileNotFoundError, KeyError, ValueError, RuntimeError) as err:
        sys.stderr.write(f"nnssl_probe: error: {err}\n")
        return 1
    sys.stdout.write(format_report(reports) + "\n")
    if args.output:
        Path(args.output).write_text(json.dumps({n: r.to_dict() for n, r in reports.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
