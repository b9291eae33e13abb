"""``nnssl_plan_experiment -d ID [ID ...] [-pl PLANNER] [-overwrite_plans_name NAME]``: write nnsslPlans.json.

Needs ``dataset_fingerprint.json`` (``nnssl_extract_fingerprint``). Exit code 0 on success, 1 with a message on
stderr for a missing environment variable, fingerprint or an unknown planner (with close-match suggestions).
"""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (upstream flags plus -overwrite_plans_name)."""
    parser = argparse.ArgumentParser(
        prog="nnssl_plan_experiment",
        description="Plan target spacings (onemmiso, median, noresample), axis transpose and normalization from "
        "dataset_fingerprint.json and write <plans_name>.json next to it.",
    )
    parser.add_argument("-d", nargs="+", required=True, help="dataset ids or names")
    parser.add_argument(
        "-pl",
        default="ExperimentPlanner",
        help="experiment planner (default ExperimentPlanner; an unknown name lists the known ones)",
    )
    parser.add_argument(
        "-overwrite_plans_name", default=None, help="plans name to write instead of nnsslPlans (file <name>.json)"
    )
    parser.add_argument(
        "-storage_precision",
        default="float32",
        help="how preprocessing stores image voxels: float32 (lossless, default), float16 (half the disk), or "
        "mantissa<N> (float32 keeping N of 23 mantissa bits); recorded in the plans",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nnssl_plan_experiment``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from nnssl.paths import MissingEnvironmentVariable
    from nnssl.planning.planner import PLANNERS, plan_experiment_for_dataset

    if args.pl not in PLANNERS:
        try:
            PLANNERS.get(args.pl)
        except KeyError as err:
            sys.stderr.write(f"nnssl_plan_experiment: error: {err.args[0]}\n")
        return 1
    for dataset in args.d:
        try:
            plan_experiment_for_dataset(
                dataset, plans_name=args.overwrite_plans_name, planner=args.pl, storage_precision=args.storage_precision
            )
        except (MissingEnvironmentVariable, FileNotFoundError, ValueError) as err:
            sys.stderr.write(f"nnssl_plan_experiment: error: {err}\n")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
