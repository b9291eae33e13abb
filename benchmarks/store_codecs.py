"""Benchmark of case-store formats on real preprocessed images (not a test): size, write time, 160^3 patch reads.

The cases are the shipped demo volumes (5 real MR/CT scans) preprocessed with the ``onemmiso`` configuration, plus
an OpenMind-sized case (the largest one reflect-padded to 256^3), or the ``.b2nd`` cases under ``--cases``. Every
candidate format (codec, level, filters, chunk/block cube sides, precision) writes every case in this one run, and
the table gives, per candidate:

- bytes on disk for all cases (images and masks) and the ratio to upstream's ZSTD-8 store;
- write seconds for all cases;
- mean CPU milliseconds of a random 160^3 patch read with one decompression thread (the training read), on the
  256^3 case and averaged over the real cases, and the ratio of upstream's read time to it;
- for lossy precisions, the largest error relative to the case's voxel standard deviation.

Upstream's format is emulated from its documented parameters: ZSTD level 8, byte shuffle, chunks (1, 80, 64, 64),
blocks (1, 16, 16, 16), masks as float32. ``LZ4HC-5`` is nnssl's previous default.

    python benchmarks/store_codecs.py [--cases FOLDER] [--reads 15] [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import blosc2
import numpy as np

from nnssl.data.case_store import DEFAULT_FORMAT, StoreFormat, image_dtype, open_case, write_array

PATCH = 160
UPSTREAM = "upstream ZSTD-8 (emulated)"
PREVIOUS = "LZ4HC-5 shuffle (previous default)"


def candidates(quick: bool) -> dict[str, StoreFormat]:
    """Every format measured, by label."""
    out = {
        PREVIOUS: StoreFormat("LZ4HC", 5, block_side=16, splitmode="AUTO_SPLIT"),
        "LZ4 shuffle b16": StoreFormat("LZ4", 5, block_side=16, splitmode="AUTO_SPLIT"),
        "LZ4HC-9 shuffle b16": StoreFormat("LZ4HC", 9, block_side=16, splitmode="AUTO_SPLIT"),
        "LZ4HC-9 shuffle b32": StoreFormat("LZ4HC", 9, splitmode="AUTO_SPLIT"),
        "LZ4HC-9 shuffle b32 split": StoreFormat("LZ4HC", 9),
        "LZ4HC-9 bitshuffle b32 split": StoreFormat("LZ4HC", 9, ("BITSHUFFLE",)),
        "LZ4HC-9 shuffle+bytedelta b32 split": StoreFormat("LZ4HC", 9, ("SHUFFLE", "BYTEDELTA")),
        "LZ4HC-9 shuffle c128 b32 split": StoreFormat("LZ4HC", 9, chunk_side=128),
        "ZSTD-1 shuffle b16": StoreFormat("ZSTD", 1, block_side=16, splitmode="AUTO_SPLIT"),
        "ZSTD-1 shuffle b32": StoreFormat("ZSTD", 1, splitmode="AUTO_SPLIT"),
        "ZSTD-3 shuffle b32": StoreFormat("ZSTD", 3, splitmode="AUTO_SPLIT"),
        "ZSTD-5 shuffle b32": StoreFormat("ZSTD", 5, splitmode="AUTO_SPLIT"),
        "ZSTD-1 bitshuffle b32": StoreFormat("ZSTD", 1, ("BITSHUFFLE",), splitmode="AUTO_SPLIT"),
        "ZSTD-1 shuffle+bytedelta b32": StoreFormat("ZSTD", 1, ("SHUFFLE", "BYTEDELTA"), splitmode="AUTO_SPLIT"),
        # issue 11: ZSTD with split streams (the noise bytes stored apart), bytedelta after shuffle, other block
        # sides and non-cubic blocks (X, Y, Z). blosc2's use_dict is not a candidate: with 4.16.1, reading a part of
        # a chunk returns wrong voxels (LZ4HC) or fails (ZSTD) when the array was written with a dictionary.
        "ZSTD-1 shuffle b32 split": StoreFormat("ZSTD", 1),
        "ZSTD-3 shuffle b32 split": StoreFormat("ZSTD", 3),
        "ZSTD-1 shuffle+bytedelta b32 split": StoreFormat("ZSTD", 1, ("SHUFFLE", "BYTEDELTA")),
        "ZSTD-3 shuffle+bytedelta b32": StoreFormat("ZSTD", 3, ("SHUFFLE", "BYTEDELTA"), splitmode="AUTO_SPLIT"),
        "ZSTD-1 shuffle c128 b64": StoreFormat("ZSTD", 1, chunk_side=128, block_side=64, splitmode="AUTO_SPLIT"),
        "LZ4HC-9 shuffle b24 split": StoreFormat("LZ4HC", 9, block_side=24),
        "LZ4HC-9 shuffle c96 b48 split": StoreFormat("LZ4HC", 9, chunk_side=96, block_side=48),
        "LZ4HC-9 shuffle c128 b64 split": StoreFormat("LZ4HC", 9, chunk_side=128, block_side=64),
        "LZ4HC-9 shuffle b32x32x64 split": StoreFormat("LZ4HC", 9, block_side=(32, 32, 64)),
        "LZ4HC-9 shuffle b16x32x64 split": StoreFormat("LZ4HC", 9, block_side=(16, 32, 64)),
        "LZ4HC-9 shuf+bytedelta b32x32x64 split": StoreFormat(
            "LZ4HC", 9, ("SHUFFLE", "BYTEDELTA"), block_side=(32, 32, 64)
        ),
        "LZ4HC-9 b32 split float16 (lossy)": StoreFormat("LZ4HC", 9, precision="float16"),
        "ZSTD-1 b32 float16 (lossy)": StoreFormat("ZSTD", 1, precision="float16", splitmode="AUTO_SPLIT"),
        "LZ4HC-9 b32 split mantissa10 (lossy)": StoreFormat("LZ4HC", 9, precision="mantissa10"),
        "LZ4HC-9 b32 split mantissa16 (lossy)": StoreFormat("LZ4HC", 9, precision="mantissa16"),
    }
    if quick:
        keep = (PREVIOUS, "LZ4HC-9 shuffle b32 split", "ZSTD-3 shuffle b32", "LZ4HC-9 b32 split float16 (lossy)")
        out = {k: v for k, v in out.items() if k in keep}
    return out


def preprocess_demo(work: Path) -> list[Path]:
    """Preprocess the shipped demo volumes (onemmiso) under ``work``; returns their ``.b2nd`` paths."""
    for name in ("nnssl_raw", "nnssl_preprocessed", "nnssl_results"):
        (work / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(work / name)
    from nnssl.data.demo import DEMO_DATASET_NAME, write_demo_dataset
    from nnssl.planning.fingerprint import extract_fingerprint_for_dataset
    from nnssl.planning.planner import plan_experiment_for_dataset
    from nnssl.preprocessing.api import preprocess_dataset, preprocessed_images

    write_demo_dataset()
    extract_fingerprint_for_dataset(DEMO_DATASET_NAME, num_processes=1, clean=True, progress=False)
    plan_experiment_for_dataset(DEMO_DATASET_NAME)
    preprocess_dataset(DEMO_DATASET_NAME, ["onemmiso"], num_processes=2, progress=False)
    return [Path(i.image_path) for i in preprocessed_images(DEMO_DATASET_NAME, "onemmiso")]


def load_cases(paths: list[Path]) -> dict[str, dict[str, np.ndarray]]:
    """{name: {"image": float32 (C, X, Y, Z), mask kind: int8}} decoded from stored cases, plus a 256^3 case."""
    cases = {}
    for path in paths:
        case = open_case(path)
        arrays = {"image": np.asarray(case.data[:], dtype=np.float32)}
        arrays.update({kind: np.asarray(m[:]) for kind, m in case.masks.items()})
        cases[path.name.removesuffix(".b2nd")] = arrays
    largest = max(cases.values(), key=lambda a: a["image"].size)
    pad = [(0, 0)] + [(0, max(0, 256 - s)) for s in largest["image"].shape[1:]]
    cases["padded_256"] = {k: np.pad(v, pad, mode="reflect") for k, v in largest.items()}
    return cases


def upstream_write(path: Path, array: np.ndarray, is_image: bool) -> None:
    """Upstream's store: ZSTD-8, shuffle, chunks (1, 80, 64, 64), blocks 16^3, masks as float32."""
    array = array.astype(np.float32)
    chunks = (1, *[min(c, s) for c, s in zip((80, 64, 64), array.shape[1:])])
    blocks = (1, *[min(16, s) for s in array.shape[1:]])
    cparams = blosc2.CParams(codec=blosc2.Codec.ZSTD, clevel=8, typesize=4, nthreads=min(4, os.cpu_count() or 1))
    blosc2.asarray(array, urlpath=str(path), mode="w", chunks=chunks, blocks=blocks, cparams=cparams)


def write_all(fmt: StoreFormat | None, cases: dict, folder: Path) -> tuple[int, float, float, dict[str, Path]]:
    """Write every case in ``fmt`` (None: upstream's); returns bytes, seconds, largest lossy error, image paths."""
    folder.mkdir(parents=True)
    size, write_s, max_err, images = 0, 0.0, 0.0, {}
    for name, arrays in cases.items():
        for kind, array in arrays.items():
            path = folder / f"{name}_{kind}.b2nd"
            t = time.perf_counter()
            if fmt is None:
                upstream_write(path, array, kind == "image")
            else:
                write_array(path, array.astype(image_dtype(fmt.precision) if kind == "image" else np.int8), fmt,
                            kind == "image")  # fmt: skip
            write_s += time.perf_counter() - t
            size += path.stat().st_size
            if kind == "image":
                images[name] = path
                if fmt is not None and fmt.precision != "float32":
                    stored = np.asarray(blosc2.open(str(path))[:], dtype=np.float32)
                    max_err = max(max_err, float(np.abs(stored - array).max() / array.std()))
    return size, write_s, max_err, images


def read_rounds(images: dict[str, dict[str, Path]], reads: int) -> dict[str, dict[str, float]]:
    """Mean CPU-ms per random 160^3 patch read (clipped to the volume, one decompression thread), per format and case.

    Rounds are interleaved (every format reads the same patch in turn) and CPU time is used, so that load from
    other processes on a shared machine disturbs every format alike.
    """
    opened = {label: {name: blosc2.open(str(p), mode="r", mmap_mode="r", dparams=blosc2.DParams(nthreads=1))
                      for name, p in paths.items()} for label, paths in images.items()}  # fmt: skip
    times: dict[str, dict[str, list[float]]] = {label: {name: [] for name in paths} for label, paths in images.items()}
    rng = np.random.default_rng(0)
    first = next(iter(opened.values()))
    for _ in range(reads):
        for name, array in first.items():
            lo = [int(rng.integers(0, max(0, s - PATCH) + 1)) for s in array.shape[1:]]
            key = (slice(0, 1), *[slice(a, a + PATCH) for a in lo])
            for label in opened:
                t = time.process_time()
                np.asarray(opened[label][name][key])
                times[label][name].append(time.process_time() - t)
    return {label: {name: 1000 * float(np.mean(v)) for name, v in per.items()} for label, per in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=Path, default=None, help="folder of stored .b2nd cases (default: demo)")
    parser.add_argument("--reads", type=int, default=15, help="patch reads per case and format")
    parser.add_argument("--quick", action="store_true", help="four formats only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nnssl_codecs_") as tmp:
        work = Path(tmp)
        if args.cases:
            paths = sorted(p for p in args.cases.rglob("*.b2nd") if "__an" not in p.name and "nnssl_tmp" not in p.name)
        else:
            paths = preprocess_demo(work / "pipeline")
        cases = load_cases(paths)
        raw = sum(a.nbytes for arrays in cases.values() for a in arrays.values())
        print(f"{len(cases)} cases ({', '.join(cases)}), {raw / 1e6:.1f} MB as float32 images + int8 masks; "
              f"patch {PATCH}^3, {args.reads} reads per case, 1 decompression thread")  # fmt: skip
        formats = {UPSTREAM: None, **candidates(args.quick)}
        written = {label: write_all(fmt, cases, work / f"c{i}") for i, (label, fmt) in enumerate(formats.items())}
        reads = read_rounds({label: w[3] for label, w in written.items()}, args.reads)
        results = {}
        for label, (size, write_s, max_err, _) in written.items():
            real = [v for k, v in reads[label].items() if k != "padded_256"]
            results[label] = {"bytes": size, "write_s": write_s, "read_256": reads[label]["padded_256"],
                              "read_real": float(np.mean(real)), "max_rel_err": max_err}  # fmt: skip
        up = results[UPSTREAM]
        print(f"{'format':38s} {'MB':>7s} {'/upstr':>6s} {'write s':>7s} {'read256 CPU-ms':>14s} {'read real':>9s} "
              f"{'upstr/read':>10s} {'max err/std':>11s}")  # fmt: skip
        for label, r in sorted(results.items(), key=lambda kv: kv[1]["bytes"]):
            mark = " <- default" if label in candidates(False) and candidates(False)[label] == DEFAULT_FORMAT else ""
            print(f"{label:38s} {r['bytes'] / 1e6:7.1f} {r['bytes'] / up['bytes']:6.2f} {r['write_s']:7.2f} "
                  f"{r['read_256']:14.1f} {r['read_real']:9.1f} {up['read_256'] / r['read_256']:10.2f} "
                  f"{r['max_rel_err']:11.1e}{mark}")  # fmt: skip


if __name__ == "__main__":
    main()
