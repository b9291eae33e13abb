"""``nnssl_extract_fingerprint -d ID [-np N] [--clean] [--verbose]``: header fingerprint of one raw dataset.

Reads ``$nnssl_raw/<DatasetName>/pretrain_data.json`` and writes ``$nnssl_preprocessed/<DatasetName>/
dataset_fingerprint.json`` (see :mod:`nnssl.planning.fingerprint`). Exit code 0 on success, 1 with a message on
stderr for a missing environment variable, dataset or collection file.
"""

from __future__ import annotations

import argparse
import logging
import sys

from nnssl.cli.common import add_read_policy_arguments


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (upstream flags)."""
    parser = argparse.ArgumentParser(
        prog="nnssl_extract_fingerprint",
        description="Read the header of every image of a raw dataset (no voxels) and write dataset_fingerprint.json. "
        "Unreadable files are listed under 'excluded' with their reason.",
    )
    parser.add_argument("-d", required=True, help="dataset id (e.g. 745) or name (e.g. Dataset745_OpenMind)")
    parser.add_argument(
        "-np",
        type=int,
        default=None,
        help="number of worker processes (default: $nnUNet_def_n_proc or 8)",
    )
    parser.add_argument("--clean", action="store_true", help="recompute the fingerprint even if it exists")
    add_read_policy_arguments(parser)
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nnssl_extract_fingerprint``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from nnssl.cli.common import SETUP_ERRORS, error_message
    from nnssl.planning.fingerprint import default_num_processes, extract_fingerprint_for_dataset

    num_processes = default_num_processes() if args.np is None else args.np
    try:
        extract_fingerprint_for_dataset(
            args.d,
            num_processes=num_processes,
            clean=args.clean,
            max_voxels=args.max_voxels,
            resample_sheared=args.resample_sheared,
        )
    except SETUP_ERRORS as err:
        sys.stderr.write(f"nnssl_extract_fingerprint: error: {error_message(err)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
