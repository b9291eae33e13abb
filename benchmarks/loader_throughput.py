"""Benchmark of the loader against the decode limit and the previous default, and of start-up (not a test).

On real preprocessed cases (the demo volumes, preprocessed with ``onemmiso``, plus their largest one reflect-padded
to 256^3, OpenMind-sized; or the ``.b2nd`` cases under ``--cases``), in one run and in CPU seconds:

- decode limit: decoding exactly the voxels of a batch of 8 plain 160^3 crops (blosc2 slices);
- the loader's plain batches (crop + mirror, MAE's masks), in process: decoded straight into the batch slots
  (``_SampleDataset.__getitems__``, what the loader does now) and per sample then copied (the path before);
- the previous default, emulated: both masks filled into every sample, contiguous copies, ``default_collate``;
- rotated/scaled samples: torch ``grid_sample`` (the CPU path now), scipy ``affine_transform`` order 1 (before) and
  order 3 (upstream's cubic), and the worker's share when resampling is deferred to the device (read only);
- wall time of ``<script> --help`` for every console script against ``python -c pass``.

The plain-batch paths are timed in ``--rounds`` rounds, their order rotated every round, so that the load of a
shared machine hits each alike; the figures are medians and minima over the rounds.

    python benchmarks/loader_throughput.py [--cases FOLDER] [--batches 6] [--rounds 5] [--plain-only]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import default_collate

from nnssl.config import DataConfig
from nnssl.data.case_store import open_case, write_case
from nnssl.data.loader import BatchCollator, _SampleDataset
from nnssl.data.sampling import MASK_FILL, PatchSampler
from nnssl.transforms.spatial import SpatialParams, read_region, resample_patch, source_region

PATCH = (160, 160, 160)
BATCH = 8
SCRIPTS = ("nnssl_train", "nnssl_preprocess", "nnssl_plan_and_preprocess", "nnssl_extract_fingerprint",
           "nnssl_plan_experiment", "nnssl_convert_openmind", "nnssl_demo", "nnssl_verify_dataset")  # fmt: skip


def padded_case(paths: list[Path], work: Path) -> Path:
    """The largest case reflect-padded to >= 256 per axis (its anatomy mask too), written in the default format."""
    case = open_case(max(paths, key=lambda p: np.prod(open_case(p).data.shape)))
    pad = [(0, 0)] + [(0, max(0, 256 - s)) for s in case.data.shape[1:]]
    masks = {kind: np.pad(m[:], pad, mode="reflect") for kind, m in case.masks.items()}
    write_case(work / "padded_256", np.pad(case.data[:], pad, mode="reflect"), {"unique_id": "padded_256"}, masks)
    return work / "padded_256.b2nd"


def cpu_seconds(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def plain_batches(paths: list[Path], batches: int, rounds: int) -> None:
    """CPU-s per plain batch of the decode limit and three loader paths, interleaved in ``rounds`` rounds."""
    cfg = DataConfig(rotation_p=0.0, scale_p=0.0)
    sampler = PatchSampler(paths, PATCH, cfg, masks=("anonymization_mask",))
    collate = BatchCollator(PATCH)
    dataset = _SampleDataset(sampler, 0, None, cyclic_cases=False, collate=collate)
    keys = [[(0, 0, b * BATCH + j) for j in range(BATCH)] for b in range(batches)]
    per_sample_collate = BatchCollator(PATCH)
    for batch_keys in keys[:1]:  # warm the case cache, the buffer pools and the scratch buffer
        per_sample_collate([dataset[k] for k in batch_keys])
        collate(dataset.__getitems__(batch_keys))

    def decode_only() -> None:
        for batch_keys in keys:
            for key in batch_keys:
                rng = np.random.default_rng([0, *key])
                index = int(rng.integers(len(sampler)))
                sampler.draw_params(rng)
                case = sampler.case(index)
                lo = sampler.draw_corner(index, case.data.shape[1:], rng)
                inner = [slice(max(0, int(a)), min(s, int(a) + p)) for a, s, p in zip(lo, case.data.shape[1:], PATCH)]
                np.asarray(case.data[(slice(None), *inner)])

    def into_slots() -> None:  # the loader now: decoded straight into the batch slots (_SampleDataset.__getitems__)
        for batch_keys in keys:
            collate(dataset.__getitems__(batch_keys))

    def per_sample() -> None:  # the loader before: each sample decoded (zero-padded when it leaves the volume), copied
        for batch_keys in keys:
            per_sample_collate([dataset[k] for k in batch_keys])

    def previous_default() -> None:
        for batch_keys in keys:
            samples = []
            for key in batch_keys:
                sample = dataset[key]
                sample["image"] = np.ascontiguousarray(sample["image"], dtype=np.float32)
                for mask_key, fill in MASK_FILL.items():
                    sample[mask_key] = np.full((1, *PATCH), fill, dtype=np.int8)
                samples.append(sample)
            default_collate(samples)

    paths_ = {"decode limit": decode_only, "into slots (now)": into_slots, "per sample (before)": per_sample,
              "previous default (emulated)": previous_default}  # fmt: skip
    times: dict[str, list[float]] = {label: [] for label in paths_}
    order = list(paths_)
    for r in range(rounds):
        for label in order[r % len(order) :] + order[: r % len(order)]:  # rotate the order every round
            times[label].append(cpu_seconds(paths_[label]) / batches)
    limit = np.array(times["decode limit"])
    print(f"plain 160^3 batches of {BATCH}, {batches} batches x {rounds} interleaved rounds, CPU-s per batch "
          "(median, min; ratio to the decode limit: median of per-round ratios, min):")  # fmt: skip
    for label, values in times.items():
        ratios = np.array(values) / limit
        print(f"  {label:28s} {np.median(values):.3f} {np.min(values):.3f} | x limit {np.median(ratios):.2f} "
              f"{np.min(ratios):.2f}")  # fmt: skip
    gain = np.array(times["per sample (before)"]) / np.array(times["into slots (now)"])
    print(f"  per sample / into slots: median {np.median(gain):.2f}, min {np.min(gain):.2f}, max {np.max(gain):.2f}")


def rotated_samples(path: Path, samples: int) -> None:
    case = open_case(path)
    rng = np.random.default_rng(0)
    times = {"read": [], "torch grid_sample (now)": [], "scipy order 1 (before)": [], "scipy order 3 (upstream)": []}
    torch.set_num_threads(1)
    for _ in range(samples):
        params = SpatialParams(angles=tuple(rng.uniform(-0.52, 0.52, 3)), scale=float(rng.uniform(0.7, 1.4)))
        centre = np.array([s / 2 + rng.uniform(-20, 20) for s in case.data.shape[1:]])
        lo, hi = source_region(centre, PATCH, params)
        t = time.process_time()
        region = read_region(case.data, lo, hi)
        times["read"].append(time.process_time() - t)
        matrix = params.matrix()
        offset = centre - np.asarray(lo) - matrix @ ((np.asarray(PATCH) - 1) / 2)
        t = time.process_time()
        resample_patch(region, lo, centre, PATCH, params, 1)
        times["torch grid_sample (now)"].append(time.process_time() - t)
        for label, order in (("scipy order 1 (before)", 1), ("scipy order 3 (upstream)", 3)):
            t = time.process_time()
            ndimage.affine_transform(region[0], matrix, offset, PATCH, order=order)
            times[label].append(time.process_time() - t)
    read = np.mean(times["read"])
    parts = [f"{label} {np.mean(v):.3f}" for label, v in times.items() if label != "read"]
    ratio = np.mean(times["scipy order 1 (before)"]) / np.mean(times["torch grid_sample (now)"])
    print(f"rotated/scaled 160^3 samples from {path.name} (CPU-s per sample, 1 thread): read {read:.3f} (all a worker "
          f"does with data.spatial_augmentation_device=cuda) | resampling: {' | '.join(parts)} | scipy order 1 / "
          f"torch {ratio:.2f}")  # fmt: skip


def script_start_up() -> None:
    bin_dir = Path(sys.executable).parent

    def wall(cmd: list[str]) -> float:
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            best = min(best, time.perf_counter() - t)
        return best

    base = wall([sys.executable, "-c", "pass"])
    rows = [f"{s} {wall([str(bin_dir / s), '--help']):.2f}" for s in SCRIPTS if (bin_dir / s).exists()]
    print(f"--help wall seconds (best of 3; python -c pass {base:.2f}): " + " | ".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=Path, default=None, help="folder of stored .b2nd cases (default: demo)")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the plain-batch paths")
    parser.add_argument("--plain-only", action="store_true", help="skip rotated samples and script start-up")
    parser.add_argument("--rotated", type=int, default=6, help="rotated samples to time")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nnssl_loader_"))
    try:
        if args.cases:
            paths = sorted(p for p in args.cases.rglob("*.b2nd") if "__an" not in p.name and "nnssl_tmp" not in p.name)
        else:
            from store_codecs import preprocess_demo  # benchmarks/ is on sys.path when a script runs

            paths = preprocess_demo(work / "pipeline")
        big = padded_case(paths, work)
        print(f"{len(paths)} real cases + {big.name} {tuple(open_case(big).data.shape)}")
        plain_batches([*paths, big], args.batches, args.rounds)
        if not args.plain_only:
            rotated_samples(big, args.rotated)
            script_start_up()
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
