"""The training loop every method shares: step, NaN guard, validation, checkpoints, resume, graceful stop.

One iteration (:meth:`Trainer.train_step`): set ``lr(t)`` (a pure function of the global iteration, see
:mod:`nnssl.engine.optim`), forward under autocast, a single all-reduce of ``[loss*b, b, stop]`` (DDP only:
global loss, batch weights, agreed stop flag), backward of the rank's loss times ``b_r * W / B``, unscale,
gradient clipping, optimizer step, scaler update, ``method.on_step_end``.

NaN guard: if the global loss is non-finite, backward is not run; if the gradient norm (after unscaling)
is non-finite, the optimizer does not step. Either way weights and optimizer moments stay exactly as they
were and ``on_step_end`` is not called; only the iteration counter (and so ``lr(t)``) moves on. With fp16
the GradScaler still sees the overflow and lowers its scale (its normal dynamic loss scaling). Skipped
steps are counted and logged; after ``train.max_consecutive_nonfinite`` in a row the run stops with
:class:`NonFiniteTrainingError`, which says what went non-finite and what to try.

Gradient accumulation (``train.grad_accumulation_steps = k``): one optimizer step consumes ``k`` micro-batches,
each loss scaled by ``1/k`` (see :meth:`Trainer.train_step`); ``global_step``, the schedules, ``on_step_end``
and ``iterations_per_epoch`` count optimizer steps. A stop is honoured only between optimizer steps, so a
resumed run skips ``iteration * k`` batches and continues exactly.

Schedules: :func:`nnssl.engine.optim.apply_schedule` sets lr (and weight decay) per step, honouring the
parameter-group keys ``lr_scale``, ``freeze_epochs`` (lr 0 while frozen, optimizer state kept) and
``wd_scale``. ``method.configure_schedule(steps_per_epoch, total_steps)`` is called once
when the trainer is built (before a resume), for schedules it defines in epochs (e.g. DINO's teacher temperature).

Reproducibility: at the start of epoch ``e`` the Python, NumPy and torch generators are seeded from
``(train.seed, rank, e)`` and the batches come from ``make_train_iter(e)``, which must be a pure function
of ``(seed, rank, e)``. Validation runs in ``eval()`` under a forked RNG with a fixed seed per validation
iteration, on a fresh iterator from ``make_val_iter()``, so the validation loss of different epochs is
comparable (same crops, same masks) and does not disturb the training stream. A stop (SIGTERM, SIGUSR1)
saves the position inside the epoch and the RNG state; resuming re-creates ``make_train_iter(e)``, skips
the batches already used and restores the RNG, so on CPU a resumed run reproduces the uninterrupted one
exactly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nnssl.config import RunConfig
from nnssl.engine.checkpoint import (
    CheckpointError,
    capture_rng_state,
    checkpoint_progress,
    config_differences,
    cpu_state_dict,
    load_checkpoint,
    peek_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from nnssl.engine.distributed import DistContext, all_reduce_sum
from nnssl.engine.logging_sinks import MetricsStream, open_metrics_stream, plot_progress
from nnssl.engine.optim import apply_schedule, build_optimizer, log_lr_rule, lr_at, trainable_parameters
from nnssl.engine.precision import autocast, make_grad_scaler, resolve_precision
from nnssl.engine.signals import GracefulStop
from nnssl.methods.base import SSLMethod
from nnssl.progress import show_progress
from nnssl.serialization import save_json, to_jsonable

logger = logging.getLogger(__name__)

Batch = dict[str, Any]
VAL_SEED_OFFSET = 1_000_003
PROGRESS_LOG_SECONDS = 60.0


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive non-finite steps; the message names the quantity and suggests a fix."""


class ResumeMismatchError(RuntimeError):
    """``--c`` found a checkpoint whose configuration differs from the requested one."""


class UnusedParametersError(RuntimeError):
    """Trainable parameters received no gradient: DDP (without ``find_unused_parameters``) would hang or fail."""


def parameters_without_gradient(method: SSLMethod) -> list[str]:
    """Names of the trainable parameters outside ``method.ddp_ignored_prefixes()`` whose ``.grad`` is None."""
    ignored = set(ddp_ignored_names(method))
    return [
        name
        for name, parameter in method.named_parameters()
        if parameter.requires_grad and parameter.grad is None and name not in ignored
    ]


def check_gradient_coverage(method: SSLMethod) -> None:
    """Raise :class:`UnusedParametersError` unless every trainable parameter received a gradient.

    DDP runs without ``find_unused_parameters`` (no per-step graph search): a trainable parameter that a method
    never uses leaves DDP waiting for its gradient, and the next step fails with "Expected to have finished
    reduction in the prior iteration". The engine checks this on the first step of every process, on one GPU too,
    so the mistake shows in any run and names the parameters.
    """
    missing = parameters_without_gradient(method)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise UnusedParametersError(
            f"{len(missing)} trainable parameters of {type(method).__name__} received no gradient in the first step: "
            f"{shown}. Multi-GPU training needs every trainable parameter in every step. A method must freeze "
            "(requires_grad_(False)) or not build what it does not use (the backbone interface freezes the decoder "
            "of encoder-only methods), and a part used only on some steps must take part in every step."
        )


@dataclass
class StepResult:
    """What one iteration did. ``loss`` is the global (all-rank, batch-weighted) loss."""

    step: int
    loss: float
    lr: float
    skipped: bool = False
    nonfinite: str | None = None
    grad_norm: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class Callback:
    """Hooks at the engine's fixed events; subclass and override what you need."""

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first iteration of this process (also after a resume)."""

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        """After every iteration, skipped or not."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After validation and checkpointing of an epoch; ``record`` is its metrics.jsonl line."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After ``checkpoint_final.pth`` was written."""


def derive_seed(*parts: int) -> int:
    """A 32-bit seed that is a pure function of ``parts`` (e.g. seed, rank, epoch)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def batch_size_of(batch: Batch) -> int:
    """Number of samples: the first dimension of ``batch["image"]`` (or of the first tensor)."""
    if isinstance(batch.get("image"), torch.Tensor):
        return int(batch["image"].shape[0])
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    raise ValueError("A batch must contain at least one tensor (normally 'image' of shape (B, C, X, Y, Z)).")


def ddp_ignored_names(method: SSLMethod) -> list[str]:
    """Fully qualified names of the parameters and buffers under ``method.ddp_ignored_prefixes()``."""
    prefixes = tuple(method.ddp_ignored_prefixes())
    if not prefixes:
        return []
    names = [name for name, _ in method.named_parameters()] + [name for name, _ in method.named_buffers()]
    return [name for name in names if any(name == p or name.startswith(p + ".") for p in prefixes)]


def _new_logs() -> dict[str, list]:
    return {
        "train_losses": [],
        "val_losses": [],
        "lrs": [],
        "epoch_start_timestamps": [],
        "epoch_end_timestamps": [],
        "skipped_steps": [],
        "probe_mean_dice": [],
        "registration_mean_dice": [],
    }


class Trainer:
    """Runs ``cfg.train.num_epochs`` x ``cfg.train.iterations_per_epoch`` optimizer steps of ``method``.

    ``make_train_iter(epoch)`` returns this rank's (infinite) iterator of batches for ``epoch``; it must be
    a pure function of (seed, rank, epoch) for exact resume. ``make_val_iter()`` returns a fresh,
    deterministic validation iterator (or is ``None``). Batches are dicts of tensors with ``"image"`` of
    shape (b, C, X, Y, Z); ``method(batch).loss`` must be the mean over the rank's ``b`` samples.
    Only rank 0 writes files into ``output_folder``.
    """

    def __init__(
        self,
        method: SSLMethod,
        cfg: RunConfig,
        make_train_iter: Callable[[int], Iterator[Batch]],
        make_val_iter: Callable[[], Iterator[Batch]] | None,
        output_folder: str | Path,
        adaptation_plan: dict[str, Any],
        device: torch.device | str = "cpu",
        dist_ctx: DistContext | None = None,
        callbacks: Sequence[Callback] = (),
        evaluator: Any = None,
    ) -> None:
        self.cfg = cfg
        self.evaluator = evaluator
        self.device = torch.device(device)
        self.dist = dist_ctx or DistContext()
        self.method = method.to(self.device)
        self.model: nn.Module = self.method
        if self.dist.is_distributed:
            ignored = ddp_ignored_names(self.method)
            if ignored:
                DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.method, ignored)
            self.model = DistributedDataParallel(
                self.method,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=False,  # every trainable parameter is used: check_gradient_coverage
            )
        if cfg.train.compile:
            logger.info("train.compile: wrapping the model in torch.compile (the first steps are slow).")
            self.model = torch.compile(self.model)
        self.make_train_iter = make_train_iter
        self.make_val_iter = make_val_iter
        self.output_folder = Path(output_folder)
        self.adaptation_plan = adaptation_plan
        self.callbacks = list(callbacks)
        needed, reason = self.method.min_images_per_batch()
        if cfg.train.batch_size < needed:
            raise ValueError(
                f"{cfg.method} needs at least {needed} images in the global batch: {reason}. train.batch_size is "
                f"{cfg.train.batch_size}; use --set train.batch_size={needed} or more."
            )
        self.precision = resolve_precision(cfg.train.precision, self.device)
        if int(cfg.train.grad_accumulation_steps) < 1:
            raise ValueError(
                f"train.grad_accumulation_steps must be >= 1, got {cfg.train.grad_accumulation_steps} "
                "(--set train.grad_accumulation_steps=1 disables accumulation)."
            )
        log_lr_rule(cfg.optim, cfg.train, self.dist.world_size)
        self.method.configure_schedule(
            cfg.train.iterations_per_epoch, cfg.train.num_epochs * cfg.train.iterations_per_epoch
        )
        self.optimizer = build_optimizer(self.method.param_groups(cfg.optim.weight_decay), cfg.optim, self.device)
        self.scaler = make_grad_scaler(self.precision, self.device)
        self.params = trainable_parameters(self.method)
        self.total_steps = cfg.train.num_epochs * cfg.train.iterations_per_epoch
        self.current_epoch = 0
        self.global_step = 0
        self.best_val_loss = math.inf
        self.best_eval_score = -math.inf
        self.logs = _new_logs()
        self.epoch_progress: dict[str, Any] = {}
        self.consecutive_nonfinite = 0
        self.last_finite: tuple[int, float] | None = None
        self.stopper = GracefulStop()
        self._gradients_checked = False
        self.val_metrics: dict[str, float] = {}
        self._last_progress_log: float | None = None
        self._epoch_start_iteration = 0
        self._stop_agreed = False
        self.stopped = False

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: Batch | Sequence[Batch]) -> StepResult:
        """One optimizer step on this rank's ``batch`` (or list of ``k`` micro-batches); advances ``global_step``.

        With ``k`` micro-batches each rank's micro-batch loss is scaled by ``1 / k`` before its backward
        (DDP synchronises gradients only on the last one), so the step equals one step on the concatenated
        batch of equally sized micro-batches. The reported loss and metrics are the means over the micro-batches;
        the first non-finite global micro-batch loss skips the whole step.
        """
        step = self.global_step
        batches = [batch] if isinstance(batch, dict) else list(batch)
        k = len(batches)
        lr = apply_schedule(self.optimizer, step, self.cfg.optim, self.cfg.train)
        self.optimizer.zero_grad(set_to_none=True)
        result = StepResult(step=step, loss=0.0, lr=lr)
        metric_sums: dict[str, float] = {}
        stop_agreed = False
        for index, micro in enumerate(batches):
            micro = move_to_device(micro, self.device)
            last = index == k - 1
            sync = contextlib.nullcontext() if last or not self.dist.is_distributed else self.model.no_sync()
            with sync:
                with autocast(self.precision, self.device):
                    out = self.model(micro)
                loss = out.loss.float()
                local_b = batch_size_of(micro)
                if self.dist.is_distributed:
                    stats = torch.tensor(
                        [float(loss.detach()) * local_b, float(local_b), float(self.stopper.requested)],
                        dtype=torch.float64,
                        device=self.device,
                    )
                    all_reduce_sum(stats, self.dist)
                    global_b = float(stats[1])
                    global_loss = float(stats[0]) / global_b
                    stop_agreed = stop_agreed or bool(stats[2] > 0)
                    weight = local_b * self.dist.world_size / global_b
                else:
                    global_loss = float(loss.detach())
                    stop_agreed = stop_agreed or self.stopper.requested
                    weight = 1.0
                for name, value in out.metrics.items():
                    metric_sums[name] = metric_sums.get(name, 0.0) + float(value)
                if not math.isfinite(global_loss):
                    result.loss = global_loss
                    break
                result.loss += global_loss / k
                scale = weight / k
                self.scaler.scale(loss * scale if scale != 1.0 else loss).backward()
        self._stop_agreed = stop_agreed
        result.metrics = {name: value / (index + 1) for name, value in metric_sums.items()}
        if not math.isfinite(result.loss):
            self._skip(result, "loss", result.loss)
        else:
            if not self._gradients_checked:
                check_gradient_coverage(self.method)
                self._gradients_checked = True
            self.scaler.unscale_(self.optimizer)
            max_norm = self.cfg.train.grad_clip if self.cfg.train.grad_clip is not None else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
            result.grad_norm = grad_norm
            if not math.isfinite(grad_norm):
                self.scaler.update()
                self._skip(result, "gradient norm", grad_norm)
            else:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.method.on_step_end(step, self.total_steps)
                self.consecutive_nonfinite = 0
                self.last_finite = (step, result.loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        return result

    def _skip(self, result: StepResult, what: str, value: float) -> None:
        result.skipped = True
        result.nonfinite = what
        self.consecutive_nonfinite += 1
        limit = self.cfg.train.max_consecutive_nonfinite
        logger.warning(
            "Step %d skipped: the %s is %s (%d in a row, limit %d).",
            result.step,
            what,
            value,
            self.consecutive_nonfinite,
            limit,
        )
        if self.consecutive_nonfinite >= limit:
            last = (
                f"the last finite training loss was {self.last_finite[1]:.6g} at step {self.last_finite[0]}"
                if self.last_finite
                else "no step of this run had a finite loss"
            )
            raise NonFiniteTrainingError(
                f"Training stopped: {limit} consecutive steps had a non-finite {what} (last value {value}) at epoch "
                f"{self.current_epoch}, step {result.step}; {last}. Weights were not updated by these steps. Try a "
                f"lower learning rate (--set optim.lr={self.cfg.optim.lr / 10:g}), a gradient clip "
                "(--set train.grad_clip=1), or full precision (--set train.precision=fp32) "
                f"(this run used {self.precision}); resume from the last checkpoint with --c."
            )

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean validation loss over ``train.val_iterations`` batches with fixed seeds (``None`` if no validation).

        The method's metrics of these batches (batch-weighted means over this rank's batches; rank 0 logs them) are
        kept in ``self.val_metrics`` and logged as ``val/<name>`` (e.g. VoCo's position hit rate).
        """
        self.val_metrics = {}
        if self.make_val_iter is None or self.cfg.train.val_iterations == 0:
            return None
        was_training = self.method.training
        self.method.eval()
        py_state, np_state = random.getstate(), np.random.get_state()
        devices = [self.device] if self.device.type == "cuda" else []
        total = count = 0.0
        metric_sums: dict[str, float] = {}
        try:
            with torch.random.fork_rng(devices=devices):
                iterator = self.make_val_iter()
                for i in range(self.cfg.train.val_iterations):
                    seed_everything(derive_seed(self.cfg.train.seed, self.dist.rank, VAL_SEED_OFFSET + i))
                    try:
                        batch = move_to_device(next(iterator), self.device)
                    except StopIteration:
                        break
                    with autocast(self.precision, self.device):
                        out = self.method(batch)
                    b = batch_size_of(batch)
                    total += float(out.loss.float()) * b
                    count += b
                    for name, value in out.metrics.items():
                        metric_sums[name] = metric_sums.get(name, 0.0) + float(value) * b
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            self.method.train(was_training)
        if count:
            self.val_metrics = {name: value / count for name, value in metric_sums.items()}
        stats = all_reduce_sum(torch.tensor([total, count], dtype=torch.float64, device=self.device), self.dist)
        return float(stats[0] / stats[1]) if float(stats[1]) > 0 else None

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_payload(self) -> dict[str, Any]:
        """Everything needed to continue (see :mod:`nnssl.engine.checkpoint`), loadable with weights_only."""
        from nnssl.presets import config_to_dict

        memo: dict[tuple, torch.Tensor] = {}  # one copy per tensor: the backbone is stored once, not twice
        return {
            "network_weights": cpu_state_dict(self.method.backbone(), memo),
            "nnssl_adaptation_plan": to_jsonable(self.adaptation_plan),
            "method_state": cpu_state_dict(self.method, memo),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.scaler.state_dict(),
            "current_epoch": self.current_epoch,
            "global_step": self.global_step,
            "epoch_progress": dict(self.epoch_progress),
            "rng_state": capture_rng_state(),
            "config": config_to_dict(self.cfg),
            "logging": {k: list(v) for k, v in self.logs.items()},
            "best_val_loss": float(self.best_val_loss),
            "best_eval_score": float(self.best_eval_score),
            "trainer_name": self.cfg.preset,
            "precision": self.precision,
        }

    def save_checkpoint(self, name: str) -> Path | None:
        """Write ``<output_folder>/<name>`` atomically (rank 0 only; other ranks return ``None``).

        Nothing is written with ``train.save_checkpoints=False``; a file of a more advanced step is never replaced.
        """
        if not self.dist.is_main or not self.cfg.train.save_checkpoints:
            return None
        path = self.output_folder / name
        if path.is_file():
            step, epoch = checkpoint_progress(peek_checkpoint(path))
            if step > self.global_step:
                raise CheckpointError(
                    f"Refusing to overwrite {path} (epoch {epoch}, step {step}) with the older state of step "
                    f"{self.global_step}. Continue the run with --c (it resumes from the most advanced checkpoint)."
                )
        save_checkpoint(self.checkpoint_payload(), path)
        logger.info("Saved %s (epoch %d, step %d).", path, self.current_epoch, self.global_step)
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore the full training state from ``path`` (a checkpoint written by this engine)."""
        from nnssl.presets import config_to_dict

        checkpoint = load_checkpoint(path)
        missing = [k for k in ("method_state", "optimizer_state", "current_epoch", "config") if k not in checkpoint]
        if missing:
            raise CheckpointError(f"{path} lacks {', '.join(missing)}: it is not an nnssl training checkpoint.")
        diffs = config_differences(checkpoint["config"], config_to_dict(self.cfg))
        if diffs:
            raise ResumeMismatchError(
                f"Cannot continue from {path}: its configuration differs from this run's:\n  "
                + "\n  ".join(diffs)
                + "\nUse the same preset and --set values as the original run, or start a new run without --c."
            )
        self.method.load_state_dict(checkpoint["method_state"])
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if checkpoint.get("grad_scaler_state") and self.scaler.is_enabled():
            self.scaler.load_state_dict(checkpoint["grad_scaler_state"])
        self.current_epoch = int(checkpoint["current_epoch"])
        self.global_step = int(checkpoint.get("global_step", self.current_epoch * self.cfg.train.iterations_per_epoch))
        self.best_val_loss = float(checkpoint.get("best_val_loss", math.inf))
        self.best_eval_score = float(checkpoint.get("best_eval_score", -math.inf))
        self.logs = _new_logs()
        self.logs.update({k: list(v) for k, v in checkpoint.get("logging", {}).items()})
        for key in ("probe_mean_dice", "registration_mean_dice"):  # lists added after the checkpoint was written
            missing = len(self.logs["train_losses"]) - len(self.logs[key])
            self.logs[key] = [None] * max(0, missing) + self.logs[key]
        self.epoch_progress = dict(checkpoint.get("epoch_progress") or {})
        if checkpoint.get("rng_state"):
            restore_rng_state(checkpoint["rng_state"])
        logger.info(
            "Resumed from %s: epoch %d, step %d%s.",
            path,
            self.current_epoch,
            self.global_step,
            f", iteration {self.epoch_progress['iteration']} of the epoch" if self.epoch_progress else "",
        )

    # ------------------------------------------------------------------ loop
    def request_stop(self) -> None:
        """Stop after the current iteration and save ``checkpoint_latest.pth`` (as SIGTERM does)."""
        self.stopper.request()

    def fit(self) -> bool:
        """Train until ``num_epochs`` is reached (returns True) or a stop is requested (returns False).

        After a stop by a signal, :attr:`stop_signal` holds its number (the caller decides what follows).
        """
        metrics = None
        if self.dist.is_main:
            from nnssl.presets import config_to_dict

            self.output_folder.mkdir(parents=True, exist_ok=True)
            config = config_to_dict(self.cfg)
            save_json(config, self.output_folder / "config.json")
            metrics = open_metrics_stream(self.output_folder, self.current_epoch, self.cfg.train.trackers, config)
            if not self.cfg.train.save_checkpoints:
                logger.warning("train.save_checkpoints is false: no checkpoint is written, a stopped run is lost.")
        with self.stopper:
            for callback in self.callbacks:
                callback.on_train_start(self)
            if self.current_epoch >= self.cfg.train.num_epochs:
                logger.info("Nothing to do: %d of %d epochs are done.", self.current_epoch, self.cfg.train.num_epochs)
            while self.current_epoch < self.cfg.train.num_epochs:
                if not self._run_epoch(metrics):
                    self.stopped = True
                    self.save_checkpoint("checkpoint_latest.pth")
                    logger.warning(
                        "Stopped at epoch %d, step %d (%s). Continue with --c.",
                        self.current_epoch,
                        self.global_step,
                        self.stopper.signal_name,
                    )
                    if metrics is not None:
                        metrics.close()
                    return False
        self.save_checkpoint("checkpoint_final.pth")
        if metrics is not None:
            metrics.close()
        for callback in self.callbacks:
            callback.on_train_end(self)
        return True

    @property
    def stop_signal(self) -> int | None:
        """The signal (SIGTERM, SIGUSR1, SIGINT) that asked this run to stop, if one did."""
        return self.stopper.signum

    def _run_epoch(self, metrics: MetricsStream | None) -> bool:
        epoch = self.current_epoch
        iters = self.cfg.train.iterations_per_epoch
        progress = self.epoch_progress or {
            "iteration": 0,
            "loss_sum": 0.0,
            "loss_count": 0,
            "skipped": 0,
            "elapsed_s": 0.0,
            "metric_sums": {},
            "start_timestamp": time.time(),
        }
        # Mid-epoch resume: the generators hold the state saved at the stop; keep it for after the fast-forward.
        resume_rng = capture_rng_state() if progress["iteration"] > 0 else None
        seed_everything(derive_seed(self.cfg.train.seed, self.dist.rank, epoch))
        iterator = self.make_train_iter(epoch)
        accumulation = int(self.cfg.train.grad_accumulation_steps)
        for _ in range(progress["iteration"] * accumulation):
            next(iterator)
        if resume_rng is not None:
            restore_rng_state(resume_rng)
        self.model.train()
        t0 = time.time()
        self._epoch_start_iteration = progress["iteration"]
        from tqdm import tqdm

        bar = tqdm(
            total=iters,
            initial=progress["iteration"],
            desc=f"epoch {epoch}",
            disable=not (self.dist.is_main and show_progress()),
            leave=False,
        )
        try:
            while progress["iteration"] < iters:
                result = self.train_step([next(iterator) for _ in range(accumulation)])
                progress["iteration"] += 1
                if result.skipped:
                    progress["skipped"] += 1
                else:
                    progress["loss_sum"] += result.loss
                    progress["loss_count"] += 1
                    for name, value in result.metrics.items():
                        progress["metric_sums"][name] = progress["metric_sums"].get(name, 0.0) + float(value)
                bar.update(1)
                bar.set_postfix(loss=f"{result.loss:.4f}")
                if bar.disable and self.dist.is_main:
                    self._log_progress(epoch, progress["iteration"], iters, result, time.time() - t0)
                for callback in self.callbacks:
                    callback.on_step_end(self, result)
                if self._stop_agreed or (not self.dist.is_distributed and self.stopper.requested):
                    progress["elapsed_s"] += time.time() - t0
                    self.epoch_progress = progress
                    return False
        finally:
            bar.close()
        val_loss = self.validate()
        self._end_epoch(progress, val_loss, progress["elapsed_s"] + time.time() - t0, metrics)
        return True

    def _log_progress(self, epoch: int, iteration: int, iters: int, result: StepResult, seconds: float) -> None:
        """Without a progress bar (output to a file): the first step at once, then a line every minute at most."""
        now = time.time()
        if self._last_progress_log is not None and now - self._last_progress_log < PROGRESS_LOG_SECONDS:
            return
        first = self._last_progress_log is None
        self._last_progress_log = now
        logger.info(
            "%sepoch %d: step %d of %d, loss %.5f, %.2f s per step.",
            "First step done; " if first else "",
            epoch,
            iteration,
            iters,
            result.loss,
            seconds / max(1, iteration - self._epoch_start_iteration),
        )

    def _evaluate(self, epoch: int) -> dict[str, float]:
        """Probe scores of this epoch on rank 0 when ``train.eval_every_n_epochs`` says so (else ``{}``).

        A failing evaluation is logged and skipped: it must never stop the pre-training it measures.
        """
        every = int(self.cfg.train.eval_every_n_epochs)
        due = every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == self.cfg.train.num_epochs)
        if not (due and self.evaluator is not None and self.dist.is_main):
            return {}
        try:
            return dict(self.evaluator.evaluate(self.method.backbone()))
        except Exception as err:  # noqa: BLE001 - see the docstring
            logger.warning("Evaluation at epoch %d failed and was skipped: %s: %s", epoch, type(err).__name__, err)
            return {}

    def _end_epoch(
        self, progress: dict[str, Any], val_loss: float | None, seconds: float, metrics: MetricsStream | None
    ) -> None:
        epoch = self.current_epoch
        n = progress["loss_count"]
        train_loss = progress["loss_sum"] / n if n else math.nan
        lr = lr_at(self.global_step - 1, self.cfg.optim, self.cfg.train)
        self.logs["train_losses"].append(train_loss)
        self.logs["val_losses"].append(val_loss)
        self.logs["lrs"].append(lr)
        self.logs["epoch_start_timestamps"].append(progress["start_timestamp"])
        self.logs["epoch_end_timestamps"].append(time.time())
        self.logs["skipped_steps"].append(progress["skipped"])
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": lr,
            "epoch_time_s": round(seconds, 3),
            "skipped_steps": progress["skipped"],
            "global_step": self.global_step,
        }
        record.update({f"train/{k}": v / n for k, v in progress["metric_sums"].items()} if n else {})
        record.update({f"val/{k}": v for k, v in self.val_metrics.items()})
        val_text = f"{val_loss:.5f}" if val_loss is not None else "n/a"
        logger.info(
            "Epoch %d: train loss %.5f, val loss %s, lr %.3g, %.1f s, %d skipped steps.",
            epoch,
            train_loss,
            val_text,
            lr,
            seconds,
            progress["skipped"],
        )
        scores = self._evaluate(epoch)
        record.update(scores)
        self.logs["probe_mean_dice"].append(scores.get("probe/mean_dice"))
        self.logs["registration_mean_dice"].append(scores.get("registration/mean_dice"))
        self.current_epoch += 1
        self.epoch_progress = {}
        improved_loss = val_loss is not None and math.isfinite(val_loss) and val_loss < self.best_val_loss
        if improved_loss:
            self.best_val_loss = val_loss
        select = self.cfg.eval.select_best_by
        score = scores.get(select)
        improved_score = score is not None and math.isfinite(score) and score > self.best_eval_score
        if improved_score:
            self.best_eval_score = float(score)
        if self.dist.is_main:
            if select == "val_loss" and improved_loss:
                logger.info("New best validation loss %.5f.", val_loss)
                self.save_checkpoint("checkpoint_best.pth")
            elif select != "val_loss" and improved_score:
                logger.info("New best %s %.5f.", select, score)
                self.save_checkpoint("checkpoint_best.pth")
            if (
                self.current_epoch % self.cfg.train.save_every_epochs == 0
                and self.current_epoch < self.cfg.train.num_epochs
            ):
                self.save_checkpoint("checkpoint_latest.pth")
            assert metrics is not None
            metrics.write(record)
            try:
                plot_progress(self.logs, self.output_folder / "progress.png")
            except Exception as err:  # noqa: BLE001 - a plot must never stop training
                logger.warning("Could not draw progress.png: %s", err)
        for callback in self.callbacks:
            callback.on_epoch_end(self, record)
