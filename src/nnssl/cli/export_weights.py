"""``nnssl_export_weights CKPT OUT``: the weights-only file of a training checkpoint (sharing, fine-tuning).

``OUT`` ending in ``.safetensors`` writes safetensors, anything else a ``torch.load(weights_only=True)`` file
with ``network_weights`` and ``nnssl_adaptation_plan`` (+ the run's ``config`` unless ``--no_config``).
See :mod:`nnssl.engine.export`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnssl_export_weights",
        description="Write network_weights + nnssl_adaptation_plan (+ config) of a checkpoint to a small file.",
    )
    parser.add_argument("checkpoint", help="a checkpoint written by nnssl_train (e.g. fold_all/checkpoint_final.pth)")
    parser.add_argument("output", help="the export: *.pth (torch.load, nnU-Net) or *.safetensors")
    parser.add_argument("--no_config", action="store_true", help="leave out the run's configuration")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from nnssl.engine.checkpoint import CheckpointError
    from nnssl.engine.export import export_weights

    try:
        export_weights(args.checkpoint, args.output, include_config=not args.no_config)
    except (CheckpointError, FileNotFoundError, OSError) as err:
        sys.stderr.write(f"nnssl_export_weights: error: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
