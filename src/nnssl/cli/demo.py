"""``nnssl_demo``: the whole pipeline on the shipped demo volumes, on the CPU, in a few minutes.

collection (5 real MR/CT volumes) -> fingerprint -> plans -> blosc2 preprocessing (onemmiso) -> a short MAE
pre-training with a CPU-sized preset, probed every few epochs on the shipped labelled set (brain lobes on two real
T1w brains, documentation/evaluation.md), ending with a table of the probe's Dice per label for a random-init
encoder beside the pre-trained one. Everything goes under ``--output_dir``: the demo sets ``nnssl_raw``,
``nnssl_preprocessed`` and ``nnssl_results`` to sub-folders of it for its own process and never touches
folders that those variables name outside it. It ends by printing where the checkpoint and
``progress.png`` are. Run it again to continue: finished preprocessing is skipped, training starts anew
unless ``--c`` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from nnssl.cli.train import STOP_EXIT_CODES, user_errors

logger = logging.getLogger("nnssl.demo")

CONFIGURATION = "onemmiso"
#: Evaluation during the demo's pre-training (the presets keep it off; ``--no_eval`` drops it here too).
DEMO_EVAL = ("train.eval_every_n_epochs=4", "eval.set=demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnssl_demo",
        description="Run collection -> fingerprint -> plan -> preprocess -> MAE pre-training on the shipped demo data.",
    )
    parser.add_argument("--output_dir", default="demo_output", help="folder for all outputs (default: ./demo_output)")
    parser.add_argument("-tr", dest="preset", default="DemoMAE_ResEncTiny", help="preset (default DemoMAE_ResEncTiny)")
    parser.add_argument("-np", dest="num_processes", type=int, default=2, help="processes for preprocessing")
    parser.add_argument("-device", default="cpu", choices=("cpu", "cuda", "mps"), help="training device (default cpu)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--c", dest="resume", action="store_true", help="continue the previous demo training")
    parser.add_argument("--no_eval", action="store_true", help="skip the probe during and after pre-training (faster)")
    return parser


def _use_output_dir(output_dir: Path) -> dict[str, Path]:
    roots = {name: output_dir / name for name in ("nnssl_raw", "nnssl_preprocessed", "nnssl_results")}
    for name, folder in roots.items():
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(folder)
    return roots


def run_demo(args: argparse.Namespace) -> Path:
    """Run every step; returns the training output folder."""
    from nnssl.data.demo import DEMO_DATASET_NAME, write_demo_dataset
    from nnssl.engine.run import RunRequest, run_training
    from nnssl.planning.fingerprint import extract_fingerprint_for_dataset
    from nnssl.planning.planner import plan_experiment_for_dataset
    from nnssl.preprocessing.api import preprocess_dataset

    output_dir = Path(args.output_dir).resolve()
    _use_output_dir(output_dir)
    started = time.perf_counter()
    logger.info("Demo outputs go to %s", output_dir)
    write_demo_dataset()
    extract_fingerprint_for_dataset(DEMO_DATASET_NAME, num_processes=args.num_processes, clean=True)
    plan_experiment_for_dataset(DEMO_DATASET_NAME)
    preprocess_dataset(DEMO_DATASET_NAME, [CONFIGURATION], num_processes=args.num_processes)
    logger.info("Data ready after %.0f s; pre-training with preset %s", time.perf_counter() - started, args.preset)
    folder = run_training(
        RunRequest(
            dataset=DEMO_DATASET_NAME,
            configuration=CONFIGURATION,
            preset=args.preset,
            overrides=(() if args.no_eval else DEMO_EVAL) + tuple(args.overrides),
            device=args.device,
            resume=args.resume,
            replace_previous_run=not args.resume,
        ),
        reraise_signal=False,
    )
    logger.info("Demo finished in %.0f s", time.perf_counter() - started)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nnssl.engine.run import TrainingStopped, configure_console_logging

    configure_console_logging()
    try:
        folder = run_demo(args)
    except TrainingStopped as stopped:
        sys.stderr.write(f"{stopped}\n")
        return STOP_EXIT_CODES.get(stopped.signal_name, 0)
    except user_errors() as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    checkpoint = folder / "checkpoint_final.pth"
    if not checkpoint.is_file():
        checkpoint = folder / "checkpoint_latest.pth"
    if not args.no_eval and checkpoint.is_file():
        sys.stdout.write(probe_table(checkpoint, args.device) + "\n")
    sys.stdout.write(f"checkpoint: {checkpoint}\nprogress plot: {folder / 'progress.png'}\n")
    return 0


def probe_table(checkpoint: Path, device: str) -> str:
    """The dense probe on the shipped labelled set: a random-init encoder beside the demo's pre-trained one."""
    from nnssl.config import EvalConfig
    from nnssl.evaluation.api import FeatureSettings, evaluate_encoder, format_report, prepare_eval_set
    from nnssl.evaluation.encoder import FrozenEncoder
    from nnssl.evaluation.eval_set import load_eval_set

    settings = EvalConfig()
    eval_set = load_eval_set("demo")
    encoders = {
        "random init": FrozenEncoder.from_checkpoint(checkpoint, device, random_init_seed=0),
        "pre-trained": FrozenEncoder.from_checkpoint(checkpoint, device),
    }
    prepared = prepare_eval_set(eval_set, encoders["pre-trained"].adaptation_plan)
    features = FeatureSettings(overlap=settings.overlap, window_batch=settings.window_batch)
    reports = {
        name: evaluate_encoder(encoder, eval_set, prepared, features, max_voxels=settings.max_voxels)
        for name, encoder in encoders.items()
    }
    heading = f"Dense linear probe on '{eval_set.name}' (train: icbm152, test: colin27; Dice on the test brain):"
    return heading + "\n" + format_report(reports)


if __name__ == "__main__":
    sys.exit(main())
