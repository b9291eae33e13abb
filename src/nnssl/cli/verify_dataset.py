"""``nnssl_verify_dataset -d ID [...] -c CONFIG [...] [--redo]``: decode every stored case; list or redo damaged ones.

See :mod:`nnssl.preprocessing.verify`. Exit code 0 when every stored case is sound (or was redone), 2 when damaged
cases remain (they are listed, and written to ``verification_failures.json``), 1 on a setup error.
"""

from __future__ import annotations

import argparse
import logging
import sys

from nnssl.cli.preprocess import CONFIGURATIONS


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments (the dataset flags of ``nnssl_preprocess``)."""
    parser = argparse.ArgumentParser(
        prog="nnssl_verify_dataset",
        allow_abbrev=False,
        description="Decode every preprocessed case of a dataset (checksums, every chunk, finite values), list the "
        "damaged ones in <plans>_<config>/verification_failures.json and, with --redo, preprocess them again.",
    )
    parser.add_argument("-d", nargs="+", required=True, help="dataset ids or names")
    parser.add_argument(
        "-c", nargs="+", default=["onemmiso"], choices=CONFIGURATIONS, help="configurations (default: onemmiso)"
    )
    parser.add_argument("-plans_name", default="nnsslPlans", help="plans identifier (default: nnsslPlans)")
    parser.add_argument("-np", type=int, default=4, help="processes (default 4)")
    parser.add_argument("--redo", action="store_true", help="delete damaged cases and preprocess them again")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar while redoing")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nnssl_verify_dataset``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from nnssl.paths import MissingEnvironmentVariable
    from nnssl.preprocessing.verify import verify_configuration

    damaged = 0
    for dataset in args.d:
        for config in args.c:
            try:
                report = verify_configuration(dataset, config, args.plans_name, args.np, args.redo,
                                              progress=not args.no_progress)  # fmt: skip
            except (MissingEnvironmentVariable, FileNotFoundError, KeyError, ValueError) as err:
                message = err.args[0] if isinstance(err, KeyError) and err.args else err
                sys.stderr.write(f"nnssl_verify_dataset: error: {message}\n")
                return 1
            damaged += len(report.still_damaged if args.redo else report.damaged)
    return 2 if damaged else 0


if __name__ == "__main__":
    sys.exit(main())
