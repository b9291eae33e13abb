"""Feature-extraction throughput of full-size encoders: voxels per second and peak memory, per architecture.

Each architecture runs in its own subprocess (a clean peak RSS): a randomly initialised full-size network behind
:class:`nnssl.evaluation.encoder.FrozenEncoder` (160^3 windows, the pre-training patch), then
:func:`nnssl.evaluation.sliding_window.sliding_window_features` over a volume of ``--volume`` voxels per side
(default: one window) after one warm-up window. Prints voxels/s, seconds per window and the peak resident memory
(CPU) or peak CUDA memory, with the ratio of each architecture to the first one measured in the same run.

    python benchmarks/feature_extraction.py                      # ResEncL and PrimusM on the CPU
    python benchmarks/feature_extraction.py --device cuda --volume 256 --window_batch 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(architecture: str, window: int, volume: int, device: str, window_batch: int, overlap: float) -> dict:
    import torch

    from nnssl.architectures import ARCHITECTURES
    from nnssl.architectures.adaptation_plan import build_adaptation_plan
    from nnssl.evaluation.encoder import FrozenEncoder
    from nnssl.evaluation.sliding_window import sliding_window_features

    plans = {
        "transpose_forward": [0, 1, 2],
        "configurations": {"onemmiso": {"spacing": [1.0, 1.0, 1.0], "patch_size": [window] * 3}},
    }
    torch.manual_seed(0)
    spec = ARCHITECTURES.get(architecture)
    network = spec.build(1, 1, (window,) * 3)
    plan = build_adaptation_plan(spec, plans, "onemmiso", (window,) * 3, 1)
    encoder = FrozenEncoder.from_network(network, plan, device=device)
    x = torch.randn(1, volume, volume, volume)
    sliding_window_features(encoder, torch.randn(1, window, window, window))  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = sliding_window_features(encoder, x, overlap=overlap, window_batch=window_batch)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    starts = -(-max(0, volume - window) // max(1, int(window * (1 - overlap)))) + 1
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "architecture": architecture,
        "device": device,
        "precision": encoder.precision,
        "volume": volume,
        "windows": starts**3,
        "seconds": round(seconds, 2),
        "voxels_per_s": round(volume**3 / seconds),
        "s_per_window": round(seconds / starts**3, 2),
        "peak_mib": round(peak),
        "dense_shape": list(result.dense.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["ResEncL", "PrimusM"])
    parser.add_argument("--window", type=int, default=160)
    parser.add_argument("--volume", type=int, default=None, help="volume side (default: the window)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--window_batch", type=int, default=1)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    volume = args.volume or args.window
    if args.child:
        print(json.dumps(measure(args.child, args.window, volume, args.device, args.window_batch, args.overlap)))
        return
    rows = []
    for arch in args.archs:
        command = [
            sys.executable,
            __file__,
            "--child",
            arch,
            "--window",
            str(args.window),
            "--volume",
            str(volume),
            "--device",
            args.device,
            "--window_batch",
            str(args.window_batch),
            "--overlap",
            str(args.overlap),
        ]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    base = rows[0]["voxels_per_s"]
    print(
        f"{'architecture':<12} {'device':<6} {'volume':>6} {'windows':>7} {'s/window':>9} {'voxels/s':>10} "
        f"{'vs first':>8} {'peak MiB':>9}"
    )
    for r in rows:
        print(
            f"{r['architecture']:<12} {r['device']:<6} {r['volume']:>6} {r['windows']:>7} {r['s_per_window']:>9} "
            f"{r['voxels_per_s']:>10} {r['voxels_per_s'] / base:>8.2f} {r['peak_mib']:>9}"
        )


if __name__ == "__main__":
    main()
