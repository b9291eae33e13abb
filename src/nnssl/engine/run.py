"""Assemble and start a pre-training run: what ``nnssl_train DATASET CONFIG -tr PRESET`` does.

Order (every user error is raised before any process is spawned or any data is read):

1. resolve the preset and ``--set`` overrides into a :class:`RunConfig`;
2. resolve the dataset name, the output folder
   ``$nnssl_results/<Dataset>/<preset>__<plans>__<config>/fold_all`` and, with ``--c``, the checkpoint to
   continue from (final > latest > best) and check that its configuration matches;
3. check that plans and preprocessed data exist (the error names the command to run);
4. one process, ``-num_gpus N`` processes (``torch.multiprocessing.spawn``) or the torchrun processes each
   run :func:`train_worker`: preprocessed images -> subject split (``splits_final.json``) -> method ->
   adaptation plan (written, then verified by building the downstream network from it alone and loading
   encoder and stem strictly) -> loaders -> :class:`Trainer` -> ``fit``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nnssl.config import RunConfig
from nnssl.engine.checkpoint import (
    CheckpointError,
    config_differences,
    find_resume_checkpoint,
    load_checkpoint,
    load_pretrained_weights,
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
from nnssl.engine.logging_sinks import attach_text_log, detach_text_log
from nnssl.engine.trainer import ResumeMismatchError, Trainer
from nnssl.paths import dataset_id, preprocessed_folder, resolve_dataset_name, results_folder
from nnssl.serialization import load_json, save_json

logger = logging.getLogger(__name__)

DEFAULT_PLANS = "nnsslPlans"
IN_CHANNELS = 1


class RunError(RuntimeError):
    """A problem with the request or the inputs of a run; the message says what to do."""


@dataclass
class RunRequest:
    """The arguments of ``nnssl_train``."""

    dataset: str
    configuration: str
    preset: str = "BaseMAETrainer"
    plans_name: str = DEFAULT_PLANS
    overrides: Sequence[str] = field(default_factory=tuple)
    num_gpus: int = 1
    device: str = "cuda"
    resume: bool = False
    pretrained_weights: str | None = None


def resolve_run_config(preset: str, overrides: Sequence[str]) -> RunConfig:
    """The run's configuration; an unknown preset is a :class:`RunError` with the closest names."""
    from nnssl.presets import PRESETS, resolve_config

    if preset not in PRESETS:
        try:
            PRESETS.get(preset)
        except KeyError as err:
            raise RunError(f"{err.args[0]} List all presets with: nnssl_train --list") from None
    return resolve_config(preset, list(overrides))


def output_folder_for(dataset_name: str, preset: str, plans_name: str, configuration: str) -> Path:
    """``$nnssl_results/<Dataset>/<preset>__<plans>__<config>/fold_all`` (upstream's layout)."""
    return results_folder() / dataset_name / f"{preset}__{plans_name}__{configuration}" / "fold_all"


def read_checkpoint_config(path: Path) -> dict[str, Any]:
    """The ``config`` stored in a checkpoint (memory-mapped, so large checkpoints are cheap to inspect)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not every file can be memory-mapped; load_checkpoint explains failures
        checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint, dict) or "config" not in checkpoint:
        raise CheckpointError(f"{path} has no 'config' entry: it was not written by nnssl_train and cannot be resumed.")
    return checkpoint["config"]


def check_resume(folder: Path, cfg: RunConfig) -> Path | None:
    """The checkpoint ``--c`` continues from (or None: fresh start); a configuration mismatch is an error."""
    from nnssl.presets import config_to_dict

    path = find_resume_checkpoint(folder)
    if path is None:
        logger.warning("--c: no checkpoint in %s; starting a new run.", folder)
        return None
    diffs = config_differences(read_checkpoint_config(path), config_to_dict(cfg))
    if diffs:
        raise ResumeMismatchError(
            f"Cannot continue from {path}: its configuration differs from this run's:\n  "
            + "\n  ".join(diffs)
            + "\nUse the same preset and --set values as the original run, or start a new run without --c."
        )
    return path


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


def run_training(request: RunRequest) -> Path:
    """Validate ``request``, then train in one or more processes; returns the output folder."""
    cfg = resolve_run_config(request.preset, request.overrides)
    dataset_name = resolve_dataset_name(request.dataset)
    folder = output_folder_for(dataset_name, request.preset, request.plans_name, request.configuration)
    if request.resume:
        check_resume(folder, cfg)
    load_plans(dataset_name, request.configuration, request.plans_name)
    if request.pretrained_weights and not Path(request.pretrained_weights).is_file():
        raise RunError(f"-pretrained_weights {request.pretrained_weights}: no such file.")
    if request.device == "cuda" and not launched_by_torchrun() and request.num_gpus > max(1, torch.cuda.device_count()):
        raise RunError(
            f"-num_gpus {request.num_gpus} needs {request.num_gpus} CUDA devices; "
            f"{torch.cuda.device_count()} are visible."
        )
    if launched_by_torchrun():
        train_worker(torchrun_context(), request)
    elif request.num_gpus > 1:
        split_batch(cfg.train.batch_size, request.num_gpus)
        spawn(train_worker, request.num_gpus, (request,))
    else:
        train_worker(DistContext(), request)
    return folder


def _log_summary(name: str, network: torch.nn.Module, patch_size: Sequence[int], device: torch.device) -> None:
    try:
        from nnssl.architectures.summary import format_summary

        with_flops = device.type == "cuda" or max(patch_size) <= 64  # thop runs a full forward pass
        logger.info("%s", format_summary(name, network, patch_size, IN_CHANNELS, with_flops=with_flops))
    except Exception as err:  # noqa: BLE001 - a summary must never stop a run
        logger.warning("Could not compute the network summary: %s", err)


def train_worker(ctx: DistContext, request: RunRequest) -> None:
    """One process of a run (rank ``ctx.rank``): build everything and call :meth:`Trainer.fit`."""
    from nnssl.architectures import ARCHITECTURES
    from nnssl.architectures.adaptation_plan import build_adaptation_plan, verify_adaptation_plan
    from nnssl.data.loader import build_train_loader, build_val_loader
    from nnssl.data.splits import load_or_create_split
    from nnssl.methods import METHODS
    from nnssl.preprocessing.api import preprocessed_images

    if not logging.getLogger().handlers:
        configure_console_logging(ctx.rank)
    if not ctx.is_main:
        logging.getLogger("nnssl").setLevel(logging.WARNING)
    cfg = resolve_run_config(request.preset, request.overrides)
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
        train_subjects, val_subjects = set(split["train"]), set(split["val"])
        train_images = [image for image in images if image.subject_uid in train_subjects]
        val_images = [image for image in images if image.subject_uid in val_subjects]
        logger.info("%d training and %d validation images.", len(train_images), len(val_images))

        arch = ARCHITECTURES.get(cfg.architecture)
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
        if ctx.is_main:
            for target in (folder, folder.parent):
                save_json(run_plans, target / "plans.json")
                save_json(adaptation_plan, target / "adaptation_plan.json")
        verify_adaptation_plan(adaptation_plan, method.backbone().state_dict())
        logger.info("Adaptation plan verified: the downstream network loads encoder and stem strictly.")
        if ctx.is_main:
            _log_summary(cfg.architecture, method.backbone(), network_patch, device)
        ctx.barrier()

        resume_from = find_resume_checkpoint(folder) if request.resume else None
        if request.pretrained_weights and resume_from is None:
            loaded, not_loaded = load_pretrained_weights(method.backbone(), request.pretrained_weights)
            method.on_pretrained_weights_loaded(request.pretrained_weights, loaded, not_loaded)

        make_train_iter = _epoch_factory(
            build_train_loader(
                train_images, cfg, method.train_transform(), ctx.rank, ctx.world_size, device_type=device.type
            )
        )
        make_val_iter = _val_factory(
            build_val_loader(val_images, cfg, method.val_transform(), ctx.rank, ctx.world_size, device_type=device.type)
            if cfg.train.val_iterations > 0 and val_images
            else None
        )
        trainer = Trainer(
            method,
            cfg,
            make_train_iter,
            make_val_iter,
            folder,
            adaptation_plan,
            device=device,
            dist_ctx=ctx,
        )
        if resume_from is not None:
            trainer.load_checkpoint(resume_from)
        trainer.fit()
    finally:
        if handler is not None:
            detach_text_log(handler)
        destroy_process_group()


def configure_console_logging(rank: int | None = None) -> None:
    """Console logging for the CLI: INFO on rank 0, warnings only on other ranks."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(message)s")
