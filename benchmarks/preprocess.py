"""Benchmark of fingerprinting, preprocessing and patch reads from stored cases (not a test).

Prints, measured in one run:
- fingerprint time (headers only) vs the time to load every voxel of every image (ratio; target >= 20x);
- preprocessing (onemmiso) volumes/s and MB/s of raw float32 voxels, peak memory (getrusage, self and workers);
- bytes on disk per case;
- time to read a random 160^3 patch from a stored case vs the 257^3 region upstream reads (and zero-pads) for it
  (ratio; target >= 3x, and well under 100 ms), and the time to decompress the whole case.

    python benchmarks/preprocess.py [--input_dir FOLDER] [--np 2] [--out FOLDER]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from nnssl.data.case_store import open_case, write_case
from nnssl.data.collection import Collection
from nnssl.data.demo import DEMO_VOLUMES, demo_asset

DATASET = "Dataset999_Bench"
ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")


def _volumes(input_dir: str | None) -> list[Path]:
    if input_dir is None:
        return [demo_asset(v.file_name) for v in DEMO_VOLUMES]
    return sorted(p for p in Path(input_dir).iterdir() if p.name.endswith(ENDINGS))


def _write_collection(volumes: list[Path], raw: Path) -> None:
    sessions = {}
    for i, path in enumerate(volumes):
        modality = "CT" if "ct" in path.name.lower() else "MR"
        image = {"name": path.name, "image_path": str(path), "modality": modality, "image_info": None,
                 "associated_masks": None}  # fmt: skip
        sessions[f"ses-{i}"] = {"session_id": f"ses-{i}", "session_info": None, "images": [image]}
    subjects = {"sub-1": {"subject_id": "sub-1", "subject_info": None, "sessions": sessions}}
    datasets = {"1": {"dataset_index": "1", "name": "bench", "dataset_info": None, "subjects": subjects}}
    Collection.from_dict({"collection_index": 999, "collection_name": DATASET, "datasets": datasets}).save(
        raw / DATASET / "pretrain_data.json", relative_paths=False
    )


def _peak_mb() -> tuple[float, float]:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return self_kb / 1024, child_kb / 1024


def _read_times(case, rng: np.random.Generator, repeats: int) -> tuple[float, float, float]:
    """Median ms of: random 160^3 patch, the 257^3 region around it (clipped, zero-padded), whole case."""
    shape = case.data.shape[1:]
    t_patch, t_region = [], []
    for _ in range(repeats):
        lo = [int(rng.integers(0, max(1, s - 160) + 1)) for s in shape]
        t = time.perf_counter()
        patch = case.data[(slice(0, 1), *[slice(a, a + 160) for a in lo])]
        t_patch.append(time.perf_counter() - t)
        centre = [a + 80 for a in lo]
        region = [(c - 128, c + 129) for c in centre]
        t = time.perf_counter()
        clipped = [(max(0, a), min(s, b)) for (a, b), s in zip(region, shape)]
        values = case.data[(slice(0, 1), *[slice(a, b) for a, b in clipped])]
        pad = [(0, 0)] + [(ca - a, b - cb) for (a, b), (ca, cb) in zip(region, clipped)]
        padded = np.pad(values, pad)
        t_region.append(time.perf_counter() - t)
        assert padded.shape[1:] == (257, 257, 257) and patch.shape[0] == 1
    t = time.perf_counter()
    case.data[:]
    t_full = time.perf_counter() - t
    return 1000 * float(np.median(t_patch)), 1000 * float(np.median(t_region)), 1000 * t_full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_dir", default=None, help="folder of 3D volumes (default: the shipped demo volumes)")
    parser.add_argument("--np", type=int, default=2, help="preprocessing processes")
    parser.add_argument("--out", default=None, help="work folder (default: a temporary folder, deleted after)")
    parser.add_argument("--repeats", type=int, default=10, help="patch reads to time")
    args = parser.parse_args()

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="nnssl_bench_"))
    for name in ("nnssl_raw", "nnssl_preprocessed", "nnssl_results"):
        (work / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(work / name)
    from nnssl.imageio import read_header, read_image
    from nnssl.planning.fingerprint import extract_fingerprint_for_dataset
    from nnssl.planning.planner import plan_experiment_for_dataset
    from nnssl.preprocessing.api import preprocess_dataset, preprocessed_images

    volumes = _volumes(args.input_dir)
    _write_collection(volumes, work / "nnssl_raw")
    print(f"{len(volumes)} volumes, {args.np} processes, work folder {work}")

    t = time.perf_counter()
    extract_fingerprint_for_dataset(DATASET, num_processes=1, clean=True, progress=False)
    t_fp = time.perf_counter() - t
    t = time.perf_counter()
    voxel_bytes = 0
    for path in volumes:
        data, _ = read_image(path)
        voxel_bytes += data.nbytes
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    for path in volumes:
        read_header(path)
    t_headers = time.perf_counter() - t
    print(
        f"read_header of every file alone: {t_headers:.3f} s | ratio to loading every voxel {t_load / t_headers:.1f}x"
    )
    print(f"fingerprint (headers): {t_fp:.3f} s | load every voxel: {t_load:.3f} s | ratio {t_load / t_fp:.1f}x")

    plan_experiment_for_dataset(DATASET)
    t = time.perf_counter()
    report = preprocess_dataset(DATASET, ["onemmiso"], num_processes=args.np, progress=False)["onemmiso"]
    t_pp = time.perf_counter() - t
    done = report.num_processed
    print(f"preprocess onemmiso: {done} cases ({len(report.failures)} failed) in {t_pp:.2f} s | "
          f"{done / t_pp:.2f} volumes/s | {voxel_bytes / 1e6 / t_pp:.1f} MB/s (raw float32 voxels)")  # fmt: skip
    self_mb, child_mb = _peak_mb()
    print(f"peak RSS: main {self_mb:.0f} MB, largest worker {child_mb:.0f} MB")

    images = preprocessed_images(DATASET, "onemmiso")
    sizes = {}
    for image in images:
        stem = Path(image.image_path)
        files = list(stem.parent.glob(stem.name.replace(".b2nd", "") + "*"))
        sizes[image.image_name] = (sum(f.stat().st_size for f in files), open_case(stem).data.shape)
    for name, (size, shape) in sizes.items():
        raw_mb = np.prod(shape) * 4 / 1e6
        print(f"  {name}: stored {shape} -> {size / 1e6:.2f} MB on disk ({raw_mb:.1f} MB as float32)")

    rng = np.random.default_rng(0)
    largest = max(images, key=lambda i: np.prod(open_case(i.image_path).data.shape))
    case = open_case(largest.image_path, nthreads=1)
    patch_ms, region_ms, full_ms = _read_times(case, rng, args.repeats)
    print(f"reads from {largest.image_name} {tuple(case.data.shape)} (1 decompression thread): "
          f"160^3 patch {patch_ms:.1f} ms | 257^3 region (clipped + zero-padded, upstream) {region_ms:.1f} ms | "
          f"ratio {region_ms / patch_ms:.1f}x | whole case {full_ms:.1f} ms")  # fmt: skip
    # OpenMind-sized case (1 mm heads with neck are ~256^3): the largest case reflect-padded to >= 256 per axis
    big = case.data[:]
    big = np.pad(big, [(0, 0)] + [(0, max(0, 256 - s)) for s in big.shape[1:]], mode="reflect")
    big_stem = work / "large_case"
    write_case(big_stem, big, {"spacing": [1.0, 1.0, 1.0]})
    big_case = open_case(big_stem, nthreads=1)
    patch_ms, region_ms, full_ms = _read_times(big_case, rng, args.repeats)
    print(f"reads from a padded {tuple(big_case.data.shape)} case: 160^3 patch {patch_ms:.1f} ms | 257^3 region "
          f"{region_ms:.1f} ms | ratio {region_ms / patch_ms:.1f}x | whole case {full_ms:.1f} ms")  # fmt: skip
    if args.out is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
