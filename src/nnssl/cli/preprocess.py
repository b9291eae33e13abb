"""``nnssl_preprocess -d ID [ID ...] -c CONFIG [...] [-np N [...]] [-part P -total_parts T]``: write blosc2 cases.

Needs ``<plans_name>.json`` (``nnssl_plan_experiment``). One ``-np`` value applies to every configuration (upstream's
default of three values failed with one configuration, bug B12). Bad images are reported and skipped; the exit
code is 0 when the run finished (even with bad images), 1 on a setup error (missing plans, variables, bad flags) or
a full disk ("no space left on <folder>", with what was kept and how to continue).
"""

from __future__ import annotations

import argparse
import logging
import sys

from nnssl.cli.common import SETUP_ERRORS, add_read_policy_arguments, error_message

CONFIGURATIONS = ("onemmiso", "median", "noresample")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (upstream's flags)."""
    parser = argparse.ArgumentParser(
        prog="nnssl_preprocess",
        allow_abbrev=False,
        description="Crop, normalize and resample every image of a dataset into blosc2 cases under "
        "$nnssl_preprocessed/<Dataset>/<plans_name>_<config>/. Resumable: finished cases are skipped.",
    )
    parser.add_argument("-d", nargs="+", required=True, help="dataset ids or names")
    parser.add_argument(
        "-c", nargs="+", default=["onemmiso"], choices=CONFIGURATIONS, help="configurations (default: onemmiso)"
    )
    parser.add_argument("-plans_name", default="nnsslPlans", help="plans identifier (default: nnsslPlans)")
    parser.add_argument("-part", type=int, default=0, help="which part of the image list to do (0-based)")
    parser.add_argument("-total_parts", type=int, default=1, help="number of contiguous parts (cluster arrays)")
    parser.add_argument(
        "-np", nargs="+", type=int, default=[4], help="processes: one value for all configurations, or one each"
    )
    add_read_policy_arguments(parser)
    parser.add_argument("--verbose", action="store_true", help="log more")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nnssl_preprocess``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.np) not in (1, len(args.c)):
        parser.error(f"-np takes one value or one per configuration ({len(args.c)}), got {len(args.np)}")
    if args.total_parts < 1 or not 0 <= args.part < args.total_parts:
        parser.error(f"-part must be in 0..{args.total_parts - 1} and -total_parts >= 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from nnssl.preprocessing.api import preprocess_dataset

    for dataset in args.d:
        try:
            preprocess_dataset(
                dataset, args.c, args.plans_name, args.np, args.part, args.total_parts, args.verbose,
                progress=not args.no_progress, max_voxels=args.max_voxels, resample_sheared=args.resample_sheared,
            )  # fmt: skip
        except SETUP_ERRORS as err:
            sys.stderr.write(f"nnssl_preprocess: error: {error_message(err)}\n")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
