"""``nnssl_train DATASET CONFIG -tr PRESET ...``: start or continue a pre-training run (upstream's flags).

``-tr`` names a preset (``nnssl_train --list`` shows them); the default is ``BaseMAETrainer`` (upstream's
default ``nnsslTrainer`` does not exist). ``--set section.field=value`` overrides any configuration field;
``--config RUN_FOLDER/config.json`` re-runs an exported configuration. Upstream's flags: ``--c`` continues,
``--val`` / ``--val_best`` validate the final / best checkpoint without training, ``--disable_checkpointing``
writes no checkpoint, ``--npz`` is accepted and ignored (pre-training exports no predictions).
User errors (unknown preset or key, missing data, resume mismatch, an unreadable checkpoint, a run that
went non-finite, a folder in use by another run) end with a one-paragraph message and exit code 1, without a
traceback. A run stopped by SIGTERM or SIGUSR1 exits 0 after saving ``checkpoint_latest.pth``; by Ctrl-C, 130.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from nnssl.presets import DEFAULT_PRESET, preset_table

logger = logging.getLogger("nnssl.cli.train")


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that end a run with a message and exit code 1 (imported here: ``--help`` stays fast)."""
    from nnssl.data.loader import UnreadableCasesError
    from nnssl.engine.checkpoint import CheckpointError
    from nnssl.engine.run import RunError
    from nnssl.engine.run_lock import RunLockedError
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
        RunLockedError,
        FileNotFoundError,
        UnreadableCasesError,
    )


#: Exit codes after a graceful stop: 0 for the cluster signals (as documented upstream), 128 + 2 for Ctrl-C.
STOP_EXIT_CODES = {"SIGTERM": 0, "SIGUSR1": 0, "SIGINT": 128 + signal.SIGINT}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnssl_train",
        description="Self-supervised pre-training on a preprocessed dataset. Outputs go to "
        "$nnssl_results/DatasetXXX_Name/<preset>__<plans>__<configuration>/fold_all/.",
    )
    parser.add_argument("dataset_name_or_id", nargs="?", help="dataset id (745) or name (Dataset745_OpenMind)")
    parser.add_argument("configuration", nargs="?", help="preprocessing configuration, e.g. onemmiso")
    parser.add_argument("-tr", dest="preset", default=None, help=f"preset name (default {DEFAULT_PRESET})")
    parser.add_argument("-p", dest="plans", default="nnsslPlans", help="plans identifier (default nnsslPlans)")
    parser.add_argument("-num_gpus", type=int, default=1, help="processes on this node (DDP via spawn)")
    parser.add_argument("-pretrained_weights", default=None, help="checkpoint whose matching weights are loaded")
    parser.add_argument(
        "--c", dest="resume", action="store_true", help="continue from the most advanced checkpoint, its configuration"
    )
    parser.add_argument(
        "-device",
        default=None,
        choices=("cpu", "cuda", "mps"),
        help="default: cuda if available, else mps, else cpu",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. --set optim.lr=1e-3 --set train.batch_size=4 --set method.mask_ratio=0.6",
    )
    parser.add_argument("--config", dest="config_file", default=None, help="re-run a run folder's config.json")
    validation = parser.add_mutually_exclusive_group()
    validation.add_argument("--val", action="store_true", help="only validate checkpoint_final.pth (no training)")
    validation.add_argument("--val_best", action="store_true", help="only validate checkpoint_best.pth")
    parser.add_argument(
        "--disable_checkpointing", action="store_true", help="write no checkpoint (train.save_checkpoints=false)"
    )
    parser.add_argument("--npz", action="store_true", help="accepted for upstream scripts; has no effect here")
    parser.add_argument(
        "--list", action="store_true", help="list the presets, then every method by backbone family, and exit"
    )
    return parser


def format_preset_list() -> str:
    """One line per preset: name, method, architecture and its one-line description."""
    rows = [("preset", "method", "architecture", "description")] + [
        (name, method, arch, description.splitlines()[0] if description else "")
        for name, method, arch, description in preset_table()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(" ".join([*(c.ljust(w) for c, w in zip(r[:3], widths)), r[3]]).rstrip() for r in rows) + "\n"


def format_method_table() -> str:
    """One line per method: its full-size presets (upstream trainer names, variants ``<name>_...`` left out) on the
    CNN (ResEnc-L) and the transformer (Primus-M), and its CPU demo presets; ``-`` where a family has none."""
    from nnssl.architectures import ARCHITECTURES

    by_method: dict[str, dict[str, list[str]]] = {}
    for name, method, arch, _ in preset_table():
        spec = ARCHITECTURES.get(arch)
        column = "demo" if spec.tiny else spec.family
        by_method.setdefault(method, {"cnn": [], "transformer": [], "demo": []})[column].append(name)

    def base_names(names: list[str]) -> str:
        bases = [n for n in names if not any(n.startswith(other + "_") for other in names if other != n)]
        return ", ".join(sorted(bases)) if bases else "- (none)"

    rows = [("method", "CNN (ResEnc-L)", "transformer (Primus-M)", "demo (CPU)")]
    for method in sorted(by_method):
        columns = by_method[method]
        transformer = base_names(columns["transformer"])
        if not columns["transformer"] and columns["cnn"]:
            transformer = "- (CNN-only method)"
        rows.append((method, base_names(columns["cnn"]), transformer, ", ".join(sorted(columns["demo"])) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(" ".join([*(c.ljust(w) for c, w in zip(r[:3], widths)), r[3]]).rstrip() for r in rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        sys.stdout.write(format_preset_list())
        sys.stdout.write("\nMethods by backbone family (variants <name>_... omitted; documentation/methods.md):\n")
        sys.stdout.write(format_method_table())
        return 0
    if args.dataset_name_or_id is None or args.configuration is None:
        parser.error("DATASET and CONFIGURATION are required (or use --list).")
    if args.num_gpus < 1:
        parser.error("-num_gpus must be at least 1.")
    from nnssl.engine.run import RunRequest, TrainingStopped, configure_console_logging, default_device, run_training

    configure_console_logging()
    if args.npz:
        logger.warning("--npz has no effect: pre-training writes no predictions (upstream ignored it as well).")
    overrides = list(args.overrides)
    if args.disable_checkpointing:
        overrides.insert(0, "train.save_checkpoints=false")
    if args.config_file and args.preset is not None:
        sys.stderr.write("nnssl_train: error: --config sets the preset from the file; leave out -tr.\n")
        return 1
    request = RunRequest(
        dataset=args.dataset_name_or_id,
        configuration=args.configuration,
        preset=args.preset or DEFAULT_PRESET,
        plans_name=args.plans,
        overrides=tuple(overrides),
        num_gpus=args.num_gpus,
        device=args.device or default_device(),
        resume=args.resume,
        pretrained_weights=args.pretrained_weights,
        config_file=args.config_file,
        validation_only="final" if args.val else "best" if args.val_best else None,
    )
    try:
        run_training(request, reraise_signal=False)
    except TrainingStopped as stopped:
        code = STOP_EXIT_CODES.get(stopped.signal_name, 0)
        sys.stderr.write(f"nnssl_train: {stopped}; exit code {code}.\n")
        return code
    except user_errors() as err:
        sys.stderr.write(f"nnssl_train: error: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
