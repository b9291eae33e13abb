"""Measure what ``nnssl_plan_and_preprocess`` does with a hostile collection (not a test).

Builds, in a temporary folder, the five demo volumes (one with its anatomy mask) plus one file of every bad kind
nnssl must refuse per case (truncated ``.nii.gz`` at 99/90/50/10% of its bytes, int16 and float32, a truncated
``.mha``, a flipped byte in gzip data, a 3-component ``.mha``, a 151-byte header claiming 1500^3 voxels, a sheared
affine, float64 values of 1e300, a missing anatomy mask) and the repairable ones (a 0/255 anatomy mask, float32
values near 3e38). Runs ``nnssl_plan_and_preprocess`` on it and prints how many images the fingerprint excluded and
preprocessing refused or stored, with each reason. Then adds a 256-byte image name and a name with a newline and
shows that validation refuses the collection before anything is written.

    python benchmarks/hostile_inputs.py [--np 2] [--keep FOLDER]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import bad_inputs  # noqa: E402
from nnssl.data.collection import Collection  # noqa: E402
from nnssl.data.demo import write_demo_dataset  # noqa: E402
from nnssl.serialization import load_json  # noqa: E402

DATASET = "Dataset001_Demo"


def _bad_files(folder: Path) -> list[dict]:
    entries = []

    def add(path: Path, anatomy: Path | None = None, name: str | None = None) -> None:
        masks = None if anatomy is None else {"anatomy_mask": str(anatomy), "anonymization_mask": None}
        entries.append({"name": name or path.name, "image_path": str(path), "modality": "T1w",
                        "associated_masks": masks})  # fmt: skip

    for fraction in (0.99, 0.9, 0.5, 0.1):
        add(bad_inputs.truncated_nifti(folder / f"cut{int(fraction * 100)}_int16.nii.gz", fraction))
        add(bad_inputs.truncated_nifti(folder / f"cut{int(fraction * 100)}_float32.nii.gz", fraction, np.float32))
    add(bad_inputs.truncated_mha(folder / "cut50.mha"))
    add(bad_inputs.flipped_gzip_nifti(folder / "flipped.nii.gz"))
    add(bad_inputs.vector_mha(folder / "rgb.mha"))
    add(bad_inputs.header_bomb(folder / "bomb.nii.gz"))
    add(bad_inputs.sheared_nifti(folder / "sheared.nii.gz"))
    add(bad_inputs.float64_huge(folder / "huge_float64.nii.gz"))
    add(bad_inputs.near_float32_limit(folder / "near_float32_limit.nii.gz"))
    image, mask = bad_inputs.image_with_mask(folder / "mask0_255.nii.gz", folder / "mask0_255_anat.nii.gz")
    add(image, mask)
    add(image, folder / "missing_anat.nii.gz", name="missing_mask.nii.gz")
    return entries


def _run(raw: Path, pre: Path, np_: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, nnssl_raw=str(raw), nnssl_preprocessed=str(pre), nnssl_results=str(pre.parent / "res"))
    command = [sys.executable, "-m", "nnssl.cli.plan_and_preprocess", "-d", "1", "-c", "onemmiso",
               "-np", str(np_), "-npfp", str(np_), "--no_progress", "--clean"]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True)


def _short(reason: str) -> str:
    return reason.split(":")[0].split("(")[0].strip()[:70]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--np", type=int, default=2, help="worker processes")
    parser.add_argument("--keep", help="build the corpus in this folder and keep it")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nnssl_hostile_"))
    raw, pre = root / "raw", root / "pre"
    for folder in (raw, pre):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    json_path = write_demo_dataset(raw)
    document = load_json(json_path)
    bad = _bad_files(raw / DATASET / "bad")
    sessions = document["datasets"]["1"]["subjects"]["sub-01"]["sessions"]
    for i, entry in enumerate(bad):
        sessions[f"ses-bad{i:02d}"] = {"session_id": f"ses-bad{i:02d}", "images": [entry]}
    Collection.from_dict(document).save(json_path, relative_paths=False)
    total = Collection.load(json_path).num_images()

    result = _run(raw, pre, args.np)
    fingerprint = load_json(pre / DATASET / "dataset_fingerprint.json")
    out = pre / DATASET / "nnsslPlans_onemmiso"
    failures = load_json(out / "preprocessing_failures.json")
    stored = load_json(out / "valid_imgs.json")
    print(f"corpus: {total} images (5 demo volumes + {len(bad)} built); exit code {result.returncode}")
    print(f"fingerprint: {fingerprint['num_excluded']} excluded from the header, "
          f"{total - fingerprint['num_excluded']} readable")  # fmt: skip
    for kind, count in sorted(Counter(_short(e["reason"]) for e in fingerprint["excluded"]).items()):
        print(f"    {count:2d} x {kind}")
    print(f"preprocessing: {len(stored)} stored, {len(failures)} refused")
    for failure in failures:
        print(f"    {failure['unique_id'].split('__')[-1]:32s} {failure['reason'][:150]}")
    print("    stored: " + ", ".join(sorted(record["image_name"] for record in stored)))

    long_name = dict(bad[0], name="a" * 256 + ".nii.gz")
    newline = dict(bad[0], name="two\nlines.nii.gz")
    sessions["ses-long"] = {"session_id": "ses-long", "images": [long_name, newline]}
    json_path.write_text(__import__("json").dumps(document, indent=2))
    shutil.rmtree(pre)
    pre.mkdir()
    result = _run(raw, pre, args.np)
    written = [p for p in pre.rglob("*") if p.is_file()]
    print(f"with a 256-byte name and a newline in a name: exit {result.returncode}, {len(written)} file(s) written")
    print("    " + "\n    ".join(result.stderr.strip().splitlines()[-3:]))
    if not args.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
