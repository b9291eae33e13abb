"""Seconds per training step of full-size presets: forward, backward, gradient clipping and optimizer step.

Usage::

    python benchmarks/method_step_time.py SparkMAETrainer EffSparkMAETrainer BaseMAETrainer
    python benchmarks/method_step_time.py SimMIMEvaTrainer --patch 64 --batch 2 --repeats 3 --device cpu
    python benchmarks/method_step_time.py PCRLv2Trainer --set PCRLv2Trainer:method.global_size=64,64,64 ...

For every preset: its resolved configuration with ``train.patch_size`` set to ``--patch`` (64^3 by default) and
``train.batch_size`` to ``--batch`` (2), the method built on the preset's architecture (ResEnc-L, Primus-M, ...), the
engine's optimizer for the preset (``build_optimizer`` on ``method.param_groups``); a batch of random z-scored-like
volumes through the method's training transform. Every preset is built first; then rounds run one step of every
preset each (the order rotates per round), the first round being the warm-up, so a change of machine load spreads
over all presets; printed: the median of ``--repeats`` timed steps and its ratio to the first preset's. fp32 (no
autocast), as the engine runs on the CPU. Presets whose configuration does not accept the patch size are reported
and skipped. Memory: every preset's network and optimizer state stay allocated together.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch

from nnssl.architectures import ARCHITECTURES
from nnssl.config import ConfigError
from nnssl.engine.optim import build_optimizer, trainable_parameters
from nnssl.methods import METHODS
from nnssl.presets import resolve_config


def make_batch(method, patch: tuple[int, int, int], batch: int, seed: int) -> dict[str, torch.Tensor]:
    """``batch`` random volumes of ``patch`` through the method's training transform, stacked."""
    np.random.seed(seed)
    rng = np.random.default_rng(seed)
    transform = method.train_transform()
    samples = []
    for _ in range(batch):
        sample = {"image": rng.normal(size=(1, *patch)).astype(np.float32)}
        samples.append(transform(sample) if transform is not None else sample)
    keys = [k for k in samples[0] if not isinstance(samples[0][k], str)]
    return {k: torch.as_tensor(np.stack([s[k] for s in samples])) for k in keys}


class Runner:
    """One preset's method, optimizer and loop settings at ``patch``^3 with ``batch`` samples."""

    def __init__(self, preset: str, patch: int, batch: int, device: str, extra: tuple[str, ...] = ()) -> None:
        base = [f"train.patch_size={patch},{patch},{patch}", f"train.batch_size={batch}"]
        cfg = resolve_config(preset, [*base, *extra])
        torch.manual_seed(0)
        self.cfg, self.device, self.batch = cfg, device, batch
        self.method = METHODS.get(cfg.method)(cfg.method_cfg, ARCHITECTURES.get(cfg.architecture), cfg.train.patch_size)
        self.total = cfg.train.num_epochs * cfg.train.iterations_per_epoch
        self.method.configure_schedule(cfg.train.iterations_per_epoch, self.total)
        self.method.to(device).train()
        self.optimizer = build_optimizer(self.method.param_groups(cfg.optim.weight_decay), cfg.optim, device)
        self.params = trainable_parameters(self.method)
        self.max_norm = cfg.train.grad_clip if cfg.train.grad_clip is not None else math.inf
        self.steps = 0

    def step(self) -> float:
        """Seconds of one optimizer step (forward, backward, clipping, step) on a fresh random batch."""
        data = make_batch(self.method, self.cfg.train.patch_size, self.batch, self.steps)
        data = {k: v.to(self.device) for k, v in data.items()}
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = self.method(data).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.method.on_step_end(self.steps, self.total)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.steps += 1
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="+", help="preset names (nnssl_train --list)")
    parser.add_argument("--patch", type=int, default=64, help="cubic patch side (default 64)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up (default 3)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PRESET:KEY=VALUE",
        help="an extra override for one preset, e.g. PCRLv2Trainer:method.global_size=64,64,64 (repeatable): view "
        "sizes that must shrink with the patch",
    )
    args = parser.parse_args()
    extra: dict[str, list[str]] = {}
    for item in args.set:
        preset, _, override = item.partition(":")
        extra.setdefault(preset, []).append(override)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    runners: dict[str, Runner] = {}
    for preset in args.presets:
        try:
            runners[preset] = Runner(preset, args.patch, args.batch, args.device, tuple(extra.get(preset, ())))
        except (ConfigError, ValueError) as err:
            print(f"{preset:40s} skipped: {err}")
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for round_ in range(args.repeats + 1):  # round 0 is the warm-up; every round runs one step of every preset
        order = names[round_ % len(names) :] + names[: round_ % len(names)] if names else []
        for name in order:
            seconds = runners[name].step()
            if round_ > 0:
                times[name].append(seconds)
    reference = statistics.median(times[names[0]]) if names else float("nan")
    print(f"{'preset':40s} {'architecture':14s} {'s/step (median)':>16s} {'ratio':>7s}  steps")
    for name in names:
        median = statistics.median(times[name])
        arch = runners[name].cfg.architecture
        steps = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:40s} {arch:14s} {median:16.2f} {median / reference:7.2f}  {steps}")
    print(f"ratio: median / median of {names[0] if names else '-'} (measured in the same interleaved rounds)")


if __name__ == "__main__":
    main()
