"""``nnssl_convert_openmind``: write ``$nnssl_raw/Dataset745_OpenMind/pretrain_data.json`` from an OpenMind download."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nnssl.data.conversion.openmind import METADATA_CSV, OPENMIND_DATASET_NAME, convert_openmind
from nnssl.paths import MissingEnvironmentVariable


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = argparse.ArgumentParser(
        prog="nnssl_convert_openmind",
        description=(
            f"Build $nnssl_raw/{OPENMIND_DATASET_NAME}/pretrain_data.json from the OpenMind release "
            f"({METADATA_CSV} plus the OpenMind/ image folder). Rows whose image file is missing are skipped and "
            "listed in missing_images.txt next to the JSON."
        ),
    )
    parser.add_argument(
        "--openmind_root_dir",
        type=Path,
        required=True,
        help=f"Folder that holds {METADATA_CSV} and the OpenMind/ image folder (top level of the download).",
    )
    parser.add_argument("--no_progress", action="store_true", help="Do not show the progress bar.")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the conversion; returns the exit code (1 with a message on a user error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        convert_openmind(args.openmind_root_dir, progress=not args.no_progress)
    except (MissingEnvironmentVariable, OSError, ValueError) as err:
        sys.stderr.write(f"nnssl_convert_openmind: error: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
