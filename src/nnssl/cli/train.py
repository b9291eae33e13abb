"""``nnssl_train DATASET CONFIG -tr PRESET ...``: start or continue a pre-training run (upstream's flags).

``-tr`` names a preset (``nnssl_train --list`` shows them); the default is ``BaseMAETrainer`` (upstream's
default ``nnsslTrainer`` does not exist). ``--set section.field=value`` overrides any configuration field.
User errors (unknown preset or key, missing data, resume mismatch, an unreadable checkpoint, a run that
went non-finite) end with a one-paragraph message and exit code 1, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nnssl.presets import DEFAULT_PRESET, preset_table


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that end a run with a message and exit code 1 (imported here: ``--help`` stays fast)."""
    from nnssl.data.loader import UnreadableCasesError
    from nnssl.engine.checkpoint import CheckpointError
    from nnssl.engine.run import RunError
    from nnssl.engine.trainer import NonFiniteTrainingError, ResumeMismatchError
    from nnssl.overrides import ConfigError
    from nnssl.paths import MissingEnvironmentVariable

    return (
        RunError,
        ConfigError,
        CheckpointError,
        ResumeMismatchError,
        NonFiniteTrainingError,
        MissingEnvironmentVariable,
        FileNotFoundError,
        UnreadableCasesError,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnssl_train",
        description="Self-supervised pre-training on a preprocessed dataset. Outputs go to "
        "$nnssl_results/DatasetXXX_Name/<preset>__<plans>__<configuration>/fold_all/.",
    )
    parser.add_argument("dataset_name_or_id", nargs="?", help="dataset id (745) or name (Dataset745_OpenMind)")
    parser.add_argument("configuration", nargs="?", help="preprocessing configuration, e.g. onemmiso")
    parser.add_argument("-tr", dest="preset", default=DEFAULT_PRESET, help=f"preset name (default {DEFAULT_PRESET})")
    parser.add_argument("-p", dest="plans", default="nnsslPlans", help="plans identifier (default nnsslPlans)")
    parser.add_argument("-num_gpus", type=int, default=1, help="processes on this node (DDP via spawn)")
    parser.add_argument("-pretrained_weights", default=None, help="checkpoint whose matching weights are loaded")
    parser.add_argument("--c", dest="resume", action="store_true", help="continue from final > latest > best")
    parser.add_argument("-device", default="cuda", choices=("cpu", "cuda", "mps"), help="default cuda")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. --set optim.lr=1e-3 --set train.batch_size=4 --set method.mask_ratio=0.6",
    )
    parser.add_argument("--list", action="store_true", help="list the presets and exit")
    return parser


def format_preset_list() -> str:
    rows = [("preset", "method", "architecture")] + [row[:3] for row in preset_table()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(" ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        sys.stdout.write(format_preset_list())
        return 0
    if args.dataset_name_or_id is None or args.configuration is None:
        parser.error("DATASET and CONFIGURATION are required (or use --list).")
    if args.num_gpus < 1:
        parser.error("-num_gpus must be at least 1.")
    from nnssl.engine.run import RunRequest, configure_console_logging, run_training

    configure_console_logging()
    request = RunRequest(
        dataset=args.dataset_name_or_id,
        configuration=args.configuration,
        preset=args.preset,
        plans_name=args.plans,
        overrides=tuple(args.overrides),
        num_gpus=args.num_gpus,
        device=args.device,
        resume=args.resume,
        pretrained_weights=args.pretrained_weights,
    )
    try:
        run_training(request)
    except user_errors() as err:
        sys.stderr.write(f"nnssl_train: error: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
