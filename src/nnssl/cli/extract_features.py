"""``nnssl_extract_features CKPT -i IMAGES... -o OUT``: dense features and global embeddings of a frozen encoder.

``CKPT`` is any file with ``network_weights`` + ``nnssl_adaptation_plan`` (nnssl checkpoints and exports, the
OpenMind release checkpoints). Images are files, folders or ``pretrain_data.json`` collections; each is preprocessed
exactly as the checkpoint's plan says and run through the encoder by sliding window. See
documentation/evaluation.md and :func:`nnssl.evaluation.api.extract_to_folder`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def add_feature_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by nnssl_extract_features and nnssl_probe."""
    parser.add_argument(
        "--stages",
        type=lambda t: tuple(int(s) for s in t.split(",") if s.strip()),
        default=None,
        help="encoder stages to use, comma separated (ResEnc: 0 = finest; Primus has one). Default: the stage at "
        "stride 8 (ResEnc) or the token grid (Primus)",
    )
    parser.add_argument("--overlap", type=float, default=0.5, help="window overlap in [0, 1) (default 0.5)")
    parser.add_argument("--window_batch", type=int, default=2, help="windows per forward pass (memory; default 2)")
    parser.add_argument("--no_gaussian", action="store_true", help="average overlapping windows uniformly")
    parser.add_argument("-device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if present")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"), help="auto: bf16 on CUDA")


def feature_settings(args: argparse.Namespace):
    from nnssl.evaluation.api import FeatureSettings

    return FeatureSettings(
        stages=args.stages, overlap=args.overlap, window_batch=args.window_batch, gaussian=not args.no_gaussian
    )


def device_of(args: argparse.Namespace) -> str:
    import torch

    if args.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return args.device


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnssl_extract_features",
        description="Dense feature maps (NIfTI), global embeddings (.npy) and an optional shared PCA of images, from "
        "a frozen pre-trained encoder.",
    )
    parser.add_argument("checkpoint", help="checkpoint or export with network_weights + nnssl_adaptation_plan")
    parser.add_argument(
        "-i", dest="inputs", nargs="+", required=True, help="image files, folders or pretrain_data.json"
    )
    parser.add_argument("-o", dest="output", required=True, help="output folder")
    parser.add_argument("--pca", type=int, default=0, metavar="K", help="also write a PCA to K channels (one basis)")
    parser.add_argument("--no_maps", action="store_true", help="write embeddings (and PCA maps) only")
    add_feature_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from nnssl.engine.checkpoint import CheckpointError
    from nnssl.evaluation.api import extract_to_folder
    from nnssl.evaluation.encoder import FrozenEncoder

    try:
        encoder = FrozenEncoder.from_checkpoint(args.checkpoint, device_of(args), args.precision)
        summary = extract_to_folder(
            encoder,
            args.inputs,
            args.output,
            feature_settings(args),
            pca_channels=args.pca,
            write_maps=not args.no_maps,
        )
    except (CheckpointError, FileNotFoundError, KeyError, ValueError, RuntimeError) as err:
        sys.stderr.write(f"nnssl_extract_features: error: {err}\n")
        return 1
    logging.getLogger("nnssl.extract_features").info(
        "Features of %d image(s) written to %s (%d failed).",
        len(summary["images"]),
        args.output,
        len(summary["failures"]),
    )
    return 2 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
