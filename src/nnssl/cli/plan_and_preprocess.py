"""``nnssl_plan_and_preprocess -d ID [...]``: fingerprint -> plan -> preprocess in one command.

Calls :func:`nnssl.planning.fingerprint.extract_fingerprint_for_dataset`,
:func:`nnssl.planning.planner.plan_experiment_for_dataset` and :func:`nnssl.preprocessing.api.preprocess_dataset`.
For large datasets on a cluster, run the three steps separately (``nnssl_extract_fingerprint``,
``nnssl_plan_experiment``, ``nnssl_preprocess -part P -total_parts T``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from nnssl.cli.common import SETUP_ERRORS, add_read_policy_arguments, error_message
from nnssl.cli.preprocess import CONFIGURATIONS

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (upstream's flags)."""
    parser = argparse.ArgumentParser(
        prog="nnssl_plan_and_preprocess",
        allow_abbrev=False,
        description="Extract the dataset fingerprint (headers only), plan the experiment and preprocess.",
    )
    parser.add_argument("-d", nargs="+", required=True, help="dataset ids or names")
    parser.add_argument(
        "-c", nargs="+", default=["onemmiso"], choices=CONFIGURATIONS, help="configurations (default: onemmiso)"
    )
    parser.add_argument("-npfp", type=int, default=8, help="fingerprint processes (default 8)")
    parser.add_argument(
        "-np", nargs="+", type=int, default=[4], help="preprocessing processes: one value or one per configuration"
    )
    parser.add_argument("-pl", default="ExperimentPlanner", help="experiment planner (default ExperimentPlanner)")
    parser.add_argument("--no_pp", action="store_true", help="fingerprint and plan only")
    parser.add_argument("--clean", action="store_true", help="recompute the fingerprint even if it exists")
    add_read_policy_arguments(parser)
    parser.add_argument("--verbose", action="store_true", help="log more")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nnssl_plan_and_preprocess``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.np) not in (1, len(args.c)):
        parser.error(f"-np takes one value or one per configuration ({len(args.c)}), got {len(args.np)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from nnssl.planning.fingerprint import extract_fingerprint_for_dataset
    from nnssl.planning.planner import plan_experiment_for_dataset
    from nnssl.preprocessing.api import preprocess_dataset

    for dataset in args.d:
        try:
            extract_fingerprint_for_dataset(
                dataset,
                args.npfp,
                clean=args.clean,
                progress=not args.no_progress,
                max_voxels=args.max_voxels,
                resample_sheared=args.resample_sheared,
            )
            plan = plan_experiment_for_dataset(dataset, planner=args.pl)
            if args.no_pp:
                continue
            preprocess_dataset(
                dataset, args.c, plan.plans_name, args.np, 0, 1, args.verbose, progress=not args.no_progress,
                max_voxels=args.max_voxels, resample_sheared=args.resample_sheared,
            )  # fmt: skip
        except SETUP_ERRORS as err:
            sys.stderr.write(f"nnssl_plan_and_preprocess: error: {error_message(err)}\n")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
