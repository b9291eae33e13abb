"""Assemble and start a pre-training run: what ``nnssl_train DATASET CONFIG -tr PRESET`` does.

Order (every user error is raised before any file or folder is created and before any process is spawned):

1. the configuration (:mod:`nnssl.engine.run_config`): preset + environment + ``--set`` for a new run,
   ``--config FILE``, or, with ``--c``, the configuration stored in the most advanced checkpoint (by step) with
   only the safe ``--set`` changes; every configuration class validates itself;
2. the dataset name, the output folder ``$nnssl_results/<Dataset>/<preset>__<plans>__<config>/fold_all``, the
   plans and preprocessed data (the error names the command to run), ``data.filters`` against the collection,
   the trackers' packages, the device; a new run refuses a folder that already holds checkpoints;
3. the run folder's lock (:mod:`nnssl.engine.run_lock`: one run per folder), then leftover temporary
   checkpoint files of a killed save are removed;
4. one process, ``-num_gpus N`` processes (``torch.multiprocessing.spawn``) or the torchrun processes each
   run :func:`train_worker`: preprocessed images -> subject split (``splits_final.json``) -> filters -> method
   (initialised from ``train.seed``) -> adaptation plan (written, then verified by building the downstream
   network from it alone and loading encoder and stem strictly) -> loaders -> :class:`Trainer` -> ``fit``
   (or, for ``--val``/``--val_best``, only a validation pass of that checkpoint).

A stop signal (SIGTERM, SIGUSR1, SIGINT) ends the run gracefully after ``checkpoint_latest.pth`` is written;
:func:`run_training` then re-raises it (see :mod:`nnssl.engine.signals`) or, for the CLI, raises
:class:`TrainingStopped`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nnssl.config import RunConfig
from nnssl.engine.checkpoint import (
    RESUME_ORDER,
    CheckpointError,
    checkpoint_progress,
    find_resume_checkpoint,
    load_pretrained_weights,
    peek_checkpoint,
    remove_temporary_checkpoints,
)
from nnssl.engine.distributed import (
    DistContext,
    destroy_process_group,
    init_process_group,
    launched_by_torchrun,
    spawn,
    split_batch,
    torchrun_context,
)
from nnssl.engine.logging_sinks import attach_text_log, detach_text_log, missing_trackers
from nnssl.engine.run_config import exported_config, new_run_config, resume_config
from nnssl.engine.run_lock import RunLock
from nnssl.engine.signals import GracefulStop, reraise_stop_signal
from nnssl.engine.trainer import Trainer, derive_seed, seed_everything
from nnssl.paths import dataset_id, preprocessed_folder, resolve_dataset_name, results_folder
from nnssl.serialization import load_json, save_json

logger = logging.getLogger(__name__)

DEFAULT_PLANS = "nnsslPlans"
IN_CHANNELS = 1
#: Offset of the seed that initialises the networks (the same on every rank): ``derive_seed(train.seed, offset)``.
INIT_SEED_OFFSET = 2_000_003
VALIDATION_CHECKPOINTS = {"final": "checkpoint_final.pth", "best": "checkpoint_best.pth"}


class RunError(RuntimeError):
    """A problem with the request or the inputs of a run; the message says what to do."""


class TrainingStopped(Exception):
    """The run stopped on a signal after saving ``checkpoint_latest.pth`` (``run_training(reraise_signal=False)``)."""

    def __init__(self, signum: int, folder: Path) -> None:
        import signal

        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.folder = folder
        super().__init__(f"stopped by {self.signal_name}; continue with --c ({folder})")


@dataclass
class RunRequest:
    """The arguments of ``nnssl_train``.

    ``config_file``: a run's ``config.json`` to re-run exactly (``--config``). ``validation_only``: ``"final"`` or
    ``"best"`` (``--val`` / ``--val_best``) validates that checkpoint and trains nothing. ``replace_previous_run``:
    a new run deletes the checkpoints and metrics of an earlier run in its folder instead of refusing (the demo
    uses it). ``config``: the resolved configuration (set by :func:`run_training` for the worker processes).
    """

    dataset: str
    configuration: str
    preset: str = "BaseMAETrainer"
    plans_name: str = DEFAULT_PLANS
    overrides: Sequence[str] = field(default_factory=tuple)
    num_gpus: int = 1
    device: str = "cuda"
    resume: bool = False
    pretrained_weights: str | None = None
    config_file: str | None = None
    validation_only: str | None = None
    replace_previous_run: bool = False
    config: RunConfig | None = None


def check_preset(preset: str) -> None:
    """An unknown preset is a :class:`RunError` with the closest names."""
    from nnssl.presets import PRESETS

    if preset not in PRESETS:
        try:
            PRESETS.get(preset)
        except KeyError as err:
            raise RunError(f"{err.args[0]} List all presets with: nnssl_train --list") from None


def resolve_run_config(preset: str, overrides: Sequence[str]) -> RunConfig:
    """A new run's configuration: the preset, the environment (``nnUNet_n_proc_DA``, ``nnUNet_compile``), ``--set``."""
    check_preset(preset)
    return new_run_config(preset, overrides)


def default_device() -> str:
    """``cuda`` when a CUDA device exists, else ``mps`` when available, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def output_folder_for(dataset_name: str, preset: str, plans_name: str, configuration: str) -> Path:
    """``$nnssl_results/<Dataset>/<preset>__<plans>__<config>/fold_all`` (upstream's layout)."""
    return results_folder() / dataset_name / f"{preset}__{plans_name}__{configuration}" / "fold_all"


def read_checkpoint_config(path: Path) -> dict[str, Any]:
    """The ``config`` stored in a checkpoint (memory-mapped, so large checkpoints are cheap to inspect)."""
    checkpoint = peek_checkpoint(path)
    if "config" not in checkpoint:
        raise CheckpointError(f"{path} has no 'config' entry: it was not written by nnssl_train and cannot be resumed.")
    return checkpoint["config"]


def check_resume(folder: Path, overrides: Sequence[str] = ()) -> tuple[Path | None, RunConfig | None]:
    """``--c``: the most advanced checkpoint and its stored configuration with ``overrides`` applied.

    ``(None, None)`` when the folder has no checkpoint (a new run starts).
    """
    path = find_resume_checkpoint(folder)
    if path is None:
        logger.warning("--c: no checkpoint in %s; starting a new run.", folder)
        return None, None
    step, epoch = checkpoint_progress(peek_checkpoint(path))
    logger.info("--c: continuing from %s (epoch %d, step %d), the most advanced checkpoint.", path, epoch, step)
    return path, resume_config(read_checkpoint_config(path), overrides, path)


def existing_checkpoints(folder: Path) -> list[tuple[str, int, int]]:
    """``(name, epoch, step)`` of the checkpoints in ``folder`` (unreadable ones: epoch and step -1)."""
    found = []
    for name in RESUME_ORDER:
        path = folder / name
        if path.is_file():
            try:
                step, epoch = checkpoint_progress(peek_checkpoint(path))
            except CheckpointError:
                step = epoch = -1
            found.append((name, epoch, step))
    return found


def check_new_run_folder(folder: Path, replace: bool) -> None:
    """A new run never overwrites an earlier run's checkpoints unless ``replace`` (then they are deleted later)."""
    found = existing_checkpoints(folder)
    if found and not replace:
        listed = ", ".join(f"{n} (epoch {e}, step {s})" for n, e, s in found)
        raise RunError(
            f"{folder} already holds checkpoints of an earlier run: {listed}. Continue that run with --c "
            "(--set train.num_epochs=N extends a finished one), or move the folder away to start a new run there."
        )


def _discard_previous_run(folder: Path) -> None:
    for name in (*RESUME_ORDER, "metrics.jsonl"):
        if (folder / name).is_file():
            (folder / name).unlink()
            logger.warning("Deleted %s of the previous run (a new run was requested).", folder / name)


def check_validation_checkpoint(folder: Path, which: str) -> Path:
    """The checkpoint ``--val`` (``final``) or ``--val_best`` (``best``) validates; missing is a RunError."""
    path = folder / VALIDATION_CHECKPOINTS[which]
    if not path.is_file():
        flag = "--val" if which == "final" else "--val_best"
        raise RunError(f"{flag} validates {path}, which does not exist. Train the run first (or continue it with --c).")
    return path


def filter_images(
    images: list[Any], cfg: RunConfig, dataset_name: str, configuration: str
) -> tuple[list[Any], dict[str, int]]:
    """``images`` that pass ``data.filters`` and how many each filter removed (a filter that cannot work: RunError)."""
    if not cfg.data.filters:
        return list(images), {}
    from nnssl.data.collection import Collection
    from nnssl.data.filters import apply_filters, build_filters

    collection = Collection.load(preprocessed_folder() / dataset_name / f"pretrain_data__{configuration}.json")
    try:
        filters = build_filters(cfg.data.filters, collection)
    except ValueError as err:
        raise RunError(str(err)) from None
    return apply_filters(images, filters)


def check_filters(cfg: RunConfig, dataset_name: str, configuration: str, plans_name: str) -> None:
    """``data.filters`` must keep at least one preprocessed image (else a :class:`RunError`)."""
    if not cfg.data.filters:
        return
    from nnssl.preprocessing.api import preprocessed_images

    images = preprocessed_images(dataset_name, configuration, plans_name=plans_name)
    kept, _ = filter_images(images, cfg, dataset_name, configuration)
    if not kept:
        raise RunError(
            f"data.filters {list(cfg.data.filters)} keep none of the {len(images)} preprocessed images of "
            f"{dataset_name}; loosen or remove them (--set data.filters=)."
        )


def load_plans(dataset_name: str, configuration: str, plans_name: str) -> dict[str, Any]:
    """The plans dict, checked to contain ``configuration`` and its preprocessed data folder."""
    ident = dataset_id(dataset_name)
    root = preprocessed_folder() / dataset_name
    plans_path = root / f"{plans_name}.json"
    if not plans_path.is_file():
        raise RunError(
            f"No plans at {plans_path}. Plan and preprocess the dataset first: "
            f"nnssl_plan_and_preprocess -d {ident} -c {configuration}"
        )
    plans = load_json(plans_path)
    configurations = plans.get("configurations", {})
    if configuration not in configurations:
        raise RunError(f"Configuration '{configuration}' is not in {plans_path} (it has: {', '.join(configurations)}).")
    data_dir = root / f"{plans_name}_{configuration}"
    if not data_dir.is_dir() or not any(data_dir.iterdir()):
        raise RunError(
            f"No preprocessed data in {data_dir}. Preprocess it first: nnssl_preprocess -d {ident} -c {configuration}"
        )
    return plans


def plans_for_run(plans: dict[str, Any], configuration: str, patch_size: Sequence[int]) -> dict[str, Any]:
    """The plans with only ``configuration``, whose patch size is the one the model is trained on."""
    used = dict(plans["configurations"][configuration])
    used["patch_size"] = [int(p) for p in patch_size]
    return {**plans, "configurations": {configuration: used}}


def select_device(kind: str, ctx: DistContext) -> torch.device:
    """``cpu``, ``mps`` or ``cuda:<local rank>``; an unavailable device is a :class:`RunError`."""
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RunError("-device cuda was requested but no CUDA device is available; use -device cpu (or mps).")
        if ctx.local_rank >= torch.cuda.device_count():
            raise RunError(f"Process {ctx.local_rank} needs a GPU, but only {torch.cuda.device_count()} are visible.")
        return torch.device("cuda", ctx.local_rank)
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise RunError("-device mps was requested but MPS is not available; use -device cpu.")
        if ctx.is_distributed:
            raise RunError("Distributed training is not supported on MPS; use -num_gpus 1.")
        return torch.device("mps")
    if kind == "cpu":
        return torch.device("cpu")
    raise RunError(f"Unknown device '{kind}': use cpu, cuda or mps.")


def _epoch_factory(loader: Any) -> Callable[[int], Iterator[dict]]:
    if callable(loader) and not isinstance(loader, Iterator):
        return loader
    logger.warning("The train loader is a single iterator, not make_train_iter(epoch): resume is not batch-exact.")
    iterator = iter(loader)
    return lambda epoch: iterator


def _val_factory(loader: Any) -> Callable[[], Iterator[dict]] | None:
    if loader is None or callable(loader):
        return loader
    return lambda: iter(loader)


def resolve_request(request: RunRequest) -> tuple[RunRequest, str, Path]:
    """Every check that needs no lock: returns the request with its resolved ``config``, the dataset and folder."""
    if request.resume and request.config_file:
        raise RunError("--c continues with the configuration stored in the checkpoint; leave out --config.")
    if request.validation_only and (request.resume or request.config_file):
        raise RunError("--val/--val_best use the configuration stored in the checkpoint; leave out --c and --config.")
    if request.validation_only not in (None, *VALIDATION_CHECKPOINTS):
        raise RunError(f"validation_only must be one of {', '.join(VALIDATION_CHECKPOINTS)}.")
    if request.config_file:
        cfg = exported_config(request.config_file, request.overrides)
        request = dataclasses.replace(request, preset=cfg.preset)
    else:
        check_preset(request.preset)
        cfg = None
    try:
        dataset_name = resolve_dataset_name(request.dataset)
    except ValueError as err:
        raise RunError(f"DATASET '{request.dataset}': {err} Give the id (e.g. 745) or the full name.") from None
    folder = output_folder_for(dataset_name, request.preset, request.plans_name, request.configuration)
    if request.validation_only:
        source = check_validation_checkpoint(folder, request.validation_only)
        cfg = resume_config(read_checkpoint_config(source), request.overrides, source)
    elif request.resume:
        _, cfg = check_resume(folder, request.overrides)
    if cfg is None:
        cfg = resolve_run_config(request.preset, request.overrides)
    if not request.resume and not request.validation_only:
        check_new_run_folder(folder, request.replace_previous_run)
    load_plans(dataset_name, request.configuration, request.plans_name)
    check_filters(cfg, dataset_name, request.configuration, request.plans_name)
    missing = missing_trackers(cfg.train.trackers)
    if missing:
        raise RunError(f"train.trackers needs packages that are not installed: {'; '.join(missing)}.")
    if request.pretrained_weights and not Path(request.pretrained_weights).is_file():
        raise RunError(f"-pretrained_weights {request.pretrained_weights}: no such file.")
    if request.device == "cuda" and not launched_by_torchrun() and request.num_gpus > max(1, torch.cuda.device_count()):
        raise RunError(
            f"-num_gpus {request.num_gpus} needs {request.num_gpus} CUDA devices; "
            f"{torch.cuda.device_count()} are visible."
        )
    select_device(request.device, DistContext())
    if request.num_gpus > 1 and not launched_by_torchrun():
        split_batch(cfg.train.batch_size, request.num_gpus)
    return dataclasses.replace(request, config=cfg), dataset_name, folder


def run_training(request: RunRequest, reraise_signal: bool = True) -> Path:
    """Validate ``request``, then train in one or more processes; returns the output folder.

    After a stop by SIGTERM/SIGUSR1/SIGINT (``checkpoint_latest.pth`` written), the signal is re-raised with the
    handler the caller had (default: the process ends as the signal says), or, with ``reraise_signal=False``,
    :class:`TrainingStopped` is raised for the caller (``nnssl_train``) to choose the exit code.
    """
    request, _, folder = resolve_request(request)
    holds_lock = not launched_by_torchrun() or int(os.environ.get("RANK", "0")) == 0
    lock = RunLock(folder) if holds_lock else None
    stop_signal: int | None = None
    if lock is not None:
        lock.acquire()
    try:
        if lock is not None:
            remove_temporary_checkpoints(folder)
            if request.replace_previous_run and not request.resume and not request.validation_only:
                _discard_previous_run(folder)
        if launched_by_torchrun():
            stop_signal = train_worker(torchrun_context(), request)
        elif request.num_gpus > 1:
            with GracefulStop() as parent:  # the ranks stop on their own; the parent only records the signal
                spawn(train_worker, request.num_gpus, (request,))
            stop_signal = parent.signum
        else:
            stop_signal = train_worker(DistContext(), request)
    finally:
        if lock is not None:
            lock.release()
    if stop_signal is not None:
        if not reraise_signal:
            raise TrainingStopped(stop_signal, folder)
        reraise_stop_signal(stop_signal)
    return folder


def _log_summary(name: str, network: torch.nn.Module, patch_size: Sequence[int], device: torch.device) -> None:
    try:
        from nnssl.architectures.summary import format_summary

        with_flops = device.type == "cuda" or max(patch_size) <= 64  # thop runs a full forward pass
        logger.info("%s", format_summary(name, network, patch_size, IN_CHANNELS, with_flops=with_flops))
    except Exception as err:  # noqa: BLE001 - a summary must never stop a run
        logger.warning("Could not compute the network summary: %s", err)


def train_worker(ctx: DistContext, request: RunRequest) -> int | None:
    """One process of a run (rank ``ctx.rank``): build everything and call :meth:`Trainer.fit`.

    Returns the signal that stopped the run, or None.
    """
    from nnssl.architectures.adaptation_plan import build_adaptation_plan, verify_adaptation_plan
    from nnssl.config import architecture_of
    from nnssl.data.loader import build_train_loader, build_val_loader
    from nnssl.data.splits import load_or_create_split
    from nnssl.methods import METHODS
    from nnssl.preprocessing.api import preprocessed_images

    if not logging.getLogger().handlers:
        configure_console_logging(ctx.rank)
    if not ctx.is_main:
        logging.getLogger("nnssl").setLevel(logging.WARNING)
    cfg = request.config if request.config is not None else resolve_run_config(request.preset, request.overrides)
    dataset_name = resolve_dataset_name(request.dataset)
    folder = output_folder_for(dataset_name, request.preset, request.plans_name, request.configuration)
    device = select_device(request.device, ctx)
    init_process_group(ctx, device)
    handler = None
    try:
        if ctx.is_main:
            handler, log_path = attach_text_log(folder)
            logger.info("Run folder %s (log %s); %d process(es) on %s.", folder, log_path.name, ctx.world_size, device)
        plans = load_plans(dataset_name, request.configuration, request.plans_name)
        images = preprocessed_images(dataset_name, request.configuration, plans_name=request.plans_name)
        split = load_or_create_split(
            preprocessed_folder() / dataset_name,
            [image.subject_uid for image in images],
            min_val=cfg.data.num_val_subjects_min,
            rank=ctx.rank,
            barrier=ctx.barrier if ctx.is_distributed else None,
        )
        if cfg.data.filters:
            total = len(images)
            images, removed = filter_images(images, cfg, dataset_name, request.configuration)
            logger.info(
                "data.filters %s: %d of %d images kept (removed: %s).",
                list(cfg.data.filters),
                len(images),
                total,
                ", ".join(f"{n} by {name}" for name, n in removed.items()),
            )
        train_subjects, val_subjects = set(split["train"]), set(split["val"])
        train_images = [image for image in images if image.subject_uid in train_subjects]
        val_images = [image for image in images if image.subject_uid in val_subjects]
        logger.info("%d training and %d validation images.", len(train_images), len(val_images))

        arch = architecture_of(cfg)  # the registered entry with the arch.* keys applied
        seed_everything(derive_seed(cfg.train.seed, INIT_SEED_OFFSET))  # same initial weights for the same seed
        method = METHODS.get(cfg.method)(cfg.method_cfg, arch, cfg.train.patch_size, in_channels=IN_CHANNELS)
        network_patch = method.network_patch_size()
        bad = [p for p in network_patch if p % arch.patch_multiple]
        if bad:
            raise RunError(
                f"{cfg.method} feeds {arch.name} patches of {tuple(network_patch)}, but every side must be a "
                f"multiple of {arch.patch_multiple}; change train.patch_size (or the method's crop size) "
                "accordingly (e.g. --set train.patch_size=160,160,160)."
            )
        run_plans = plans_for_run(plans, request.configuration, network_patch)
        adaptation_plan = build_adaptation_plan(arch, plans, request.configuration, network_patch, IN_CHANNELS)
        if ctx.is_main and not request.validation_only:
            for target in (folder, folder.parent):
                save_json(run_plans, target / "plans.json")
                save_json(adaptation_plan, target / "adaptation_plan.json")
        verify_adaptation_plan(adaptation_plan, method.backbone().state_dict())
        logger.info("Adaptation plan verified: the downstream network loads encoder and stem strictly.")
        if ctx.is_main:
            _log_summary(cfg.architecture, method.backbone(), network_patch, device)
        ctx.barrier()

        if request.validation_only:
            resume_from: Path | None = folder / VALIDATION_CHECKPOINTS[request.validation_only]
        else:
            resume_from = find_resume_checkpoint(folder) if request.resume else None
        if request.pretrained_weights and resume_from is None:
            loaded, not_loaded = load_pretrained_weights(method.backbone(), request.pretrained_weights)
            method.on_pretrained_weights_loaded(request.pretrained_weights, loaded, not_loaded)

        make_train_iter = _epoch_factory(
            build_train_loader(
                train_images,
                cfg,
                method.train_transform(),
                ctx.rank,
                ctx.world_size,
                device_type=device.type,
                masks=method.batch_masks,
            )
        )
        make_val_iter = _val_factory(
            build_val_loader(
                val_images,
                cfg,
                method.val_transform(),
                ctx.rank,
                ctx.world_size,
                device_type=device.type,
                masks=method.batch_masks,
            )
            if cfg.train.val_iterations > 0 and val_images
            else None
        )
        evaluator = None
        if cfg.train.eval_every_n_epochs > 0 and ctx.is_main:
            from nnssl.evaluation.during_training import TrainingEvaluator

            evaluator = TrainingEvaluator(cfg.eval, adaptation_plan)
        trainer = Trainer(
            method,
            cfg,
            make_train_iter,
            make_val_iter,
            folder,
            adaptation_plan,
            device=device,
            dist_ctx=ctx,
            evaluator=evaluator,
        )
        if resume_from is not None:
            trainer.load_checkpoint(resume_from)
        if request.validation_only:
            assert resume_from is not None
            validate_checkpoint(trainer, resume_from, ctx)
            return None
        trainer.fit()
        return trainer.stop_signal
    finally:
        if handler is not None:
            detach_text_log(handler)
        destroy_process_group()


def validate_checkpoint(trainer: Trainer, path: Path, ctx: DistContext) -> float | None:
    """``--val``/``--val_best``: the validation loss of ``path``, logged and written to ``validation_<name>.json``."""
    loss = trainer.validate()
    if loss is None:
        logger.warning("No validation images or train.val_iterations=0: nothing to validate.")
    else:
        logger.info(
            "Validation of %s (epoch %d, step %d): loss %.6f over %d iterations.",
            path.name,
            trainer.current_epoch,
            trainer.global_step,
            loss,
            trainer.cfg.train.val_iterations,
        )
    if ctx.is_main:
        save_json(
            {
                "checkpoint": path.name,
                "epoch": trainer.current_epoch,
                "global_step": trainer.global_step,
                "val_loss": loss if loss is not None and math.isfinite(loss) else None,
                "val_iterations": trainer.cfg.train.val_iterations,
            },
            path.parent / f"validation_{path.stem}.json",
        )
    return loss


def configure_console_logging(rank: int | None = None) -> None:
    """Console logging for the CLI: INFO on rank 0, warnings only on other ranks."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(message)s")
