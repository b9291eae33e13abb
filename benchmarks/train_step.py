"""Benchmark the MAE training path: loader throughput and train-step time for ResEnc-L and Primus-M MAE.

Usage::

    python benchmarks/train_step.py --patch 160 --batch 2 --device cuda --steps 10
    python benchmarks/train_step.py --patch 64 --batch 1 --device cpu --steps 2 --data $nnssl_preprocessed/...

Without ``--data`` it writes synthetic blosc2 cases (smooth "head" volumes with an anatomy mask) to a
temporary folder. It prints:

* loader samples/s of the MAE data path (crop-first sampler with upstream's augmentation) with one worker,
  and the per-sample cost of plain versus rotated/scaled samples measured in-process;
* per architecture: seconds per optimizer step, samples/s and peak memory;
* on CUDA, for ResEnc-L MAE: fp32 versus bf16 autocast, and channels-last.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from nnssl.architectures import ARCHITECTURES
from nnssl.config import DataConfig, RunConfig, TrainConfig
from nnssl.data.case_store import write_case
from nnssl.data.loader import build_train_loader
from nnssl.data.sampling import PatchSampler
from nnssl.methods.mae import MAE, MAEConfig


def synthetic_cases(folder: Path, n: int = 3, shape: tuple[int, int, int] = (200, 230, 190)) -> list[Path]:
    """Write ``n`` z-scored-like volumes: smooth texture inside an ellipsoid, zeros outside."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = ((grid**2).sum(0) < 0.8).astype(np.int8)
    paths = []
    for i in range(n):
        texture = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 2.0)
        data = (texture / texture.std() * inside)[None].astype(np.float32)
        write_case(folder / f"synthetic_{i}", data, {"unique_id": f"synthetic_{i}"}, {"anatomy": inside[None]})
        paths.append(folder / f"synthetic_{i}.b2nd")
    return paths


def find_cases(folder: Path) -> list[Path]:
    """Every stored case image under ``folder`` (masks and temporary files excluded)."""
    return sorted(
        p
        for p in folder.rglob("*.b2nd")
        if "__anat" not in p.name and "__anon" not in p.name and "nnssl_tmp" not in p.name
    )


def bench_loader(cases: list[Path], patch: int, samples: int, data_order: int) -> None:
    cfg = RunConfig(
        preset="bench",
        method="MAE",
        architecture="ResEncL",
        train=TrainConfig(batch_size=1, patch_size=(patch,) * 3),
        data=DataConfig(num_workers=1),
    )
    loader = build_train_loader(cases, cfg, None, data_order=data_order)
    iterator = loader.make_iter(0)
    next(iterator)  # worker start-up
    start = time.perf_counter()
    for _ in itertools.islice(iterator, samples):
        pass
    elapsed = time.perf_counter() - start
    print(
        f"loader (1 worker, {patch}^3, upstream MAE augmentation, data order {data_order}): "
        f"{samples / elapsed:.2f} samples/s"
    )

    sampler = PatchSampler(cases, (patch,) * 3, cfg.data, data_order=data_order)
    plain, resampled = [], []
    rng = np.random.default_rng(0)
    for i in range(samples):
        state = rng.bit_generator.state
        identity = sampler.draw_params(rng).is_identity_map
        rng.bit_generator.state = state
        t = time.perf_counter()
        sampler.sample(i % len(cases), rng)
        (plain if identity else resampled).append(time.perf_counter() - t)
    for name, times in (("plain (crop + mirror)", plain), ("rotated/scaled", resampled)):
        if times:
            print(f"  in-process {name}: {np.mean(times) * 1000:.0f} ms/sample over {len(times)} samples")
    expected = 0.64 * np.mean(plain) + 0.36 * np.mean(resampled) if plain and resampled else float("nan")
    print(f"  expected at upstream's 36% resampled: {1 / expected:.2f} samples/s per core")


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def bench_step(
    arch: str,
    patch: int,
    batch: int,
    steps: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> float:
    torch.manual_seed(0)
    method = MAE(MAEConfig(), ARCHITECTURES.get(arch), (patch,) * 3).to(device)
    if channels_last:
        method = method.to(memory_format=torch.channels_last_3d)
    if ARCHITECTURES.get(arch).family == "transformer":
        optim = torch.optim.AdamW(method.parameters(), lr=3e-4, weight_decay=5e-2, betas=(0.9, 0.98))
    else:
        optim = torch.optim.SGD(method.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    x = torch.randn(batch, 1, patch, patch, patch, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        optim.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = method({"image": x}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(method.parameters(), 12.0)
        optim.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    per_step = (time.perf_counter() - start) / steps
    label = f"{arch} MAE {patch}^3 batch {batch} {device.type}"
    if dtype is not None:
        label += f" {str(dtype).removeprefix('torch.')}"
    if channels_last:
        label += " channels-last"
    print(
        f"{label}: {per_step:.3f} s/step, {batch / per_step:.2f} samples/s, peak memory {peak_memory_gb(device):.2f} GB"
    )
    return per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, default=160, help="cubic patch side (multiple of 32)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--data", type=Path, default=None, help="folder of preprocessed .b2nd cases (searched recursively)"
    )
    parser.add_argument("--loader-samples", type=int, default=20)
    parser.add_argument("--loader-patch", type=int, default=160, help="patch side for the loader measurement")
    parser.add_argument("--orders", type=int, nargs="+", default=[3, 1], help="spline orders for resampled data")
    parser.add_argument("--skip-loader", action="store_true")
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--archs", nargs="+", default=["ResEncL", "PrimusM"])
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_loader:
            cases = find_cases(args.data) if args.data else synthetic_cases(Path(tmp))
            if not cases:
                raise SystemExit(f"No .b2nd cases under {args.data}; run nnssl_preprocess first or omit --data.")
            print(f"{len(cases)} case(s) from {args.data or 'synthetic blosc2 volumes'}")
            for order in args.orders:
                bench_loader(cases, args.loader_patch, args.loader_samples, order)
    if args.skip_steps:
        return
    for arch in args.archs:
        bench_step(arch, args.patch, args.batch, args.steps, device)
    if device.type == "cuda" and "ResEncL" in args.archs:
        fp32 = bench_step("ResEncL", 160, args.batch, args.steps, device)
        bf16 = bench_step("ResEncL", 160, args.batch, args.steps, device, dtype=torch.bfloat16)
        cl = bench_step("ResEncL", 160, args.batch, args.steps, device, dtype=torch.bfloat16, channels_last=True)
        print(f"ResEnc-L MAE 160^3: bf16 speed-up x{fp32 / bf16:.2f}, bf16+channels-last x{fp32 / cl:.2f}")


if __name__ == "__main__":
    main()
