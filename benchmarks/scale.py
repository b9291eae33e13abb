"""Benchmark of start-up at OpenMind scale (not a test): collections of N images made of hard links to real volumes.

For each N of ``--sizes`` (default 11,400 and 114,000: OpenMind's size and a tenth of it), in one run:

- collection load + validation (``Collection.load`` of ``pretrain_data.json``) and listing its images;
- the header fingerprint (``nnssl_extract_fingerprint``) for N up to ``--fingerprint_max`` (default: every size)
  and the plan made from it (a size not fingerprinted reuses the previous size's plan);
- training start-up on N stored cases (hard links of one preprocessed case): ``preprocessed_images`` (completeness
  of every case), the subject split, the sampler/loader set-up and the first batch of 2 (160^3, MAE's masks).

Each step prints seconds and seconds per 1,000 images, so linearity reads off the two sizes.

    python benchmarks/scale.py [--sizes 11400 114000] [--fingerprint_max N] [--np 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from nnssl.config import DataConfig, RunConfig, TrainConfig
from nnssl.data.case_store import write_case
from nnssl.data.collection import Collection
from nnssl.data.demo import demo_asset
from nnssl.serialization import save_json

VOLUMES = ("anatomical.nii", "KmeansTest_T1UCharRaw.nii.gz", "ct_brain_atlas_1mm.nii.gz")
IMAGES_PER_SUBJECT = 2
LINKS_PER_FILE = 30_000


def collection_dict(name: str, n: int, path_of) -> dict:
    """N images, two sessions per subject, one image per session; ``path_of(i)`` gives image i's file."""
    subjects = {}
    for i in range(n):
        sid, ses = f"sub-{i // IMAGES_PER_SUBJECT:06d}", f"ses-{i % IMAGES_PER_SUBJECT}"
        image = {"name": f"img{i}.nii.gz", "image_path": path_of(i), "modality": "T1w", "image_info": None,
                 "associated_masks": None}  # fmt: skip
        subject = subjects.setdefault(sid, {"subject_id": sid, "subject_info": None, "sessions": {}})
        subject["sessions"][ses] = {"session_id": ses, "session_info": None, "images": [image]}
    datasets = {"1": {"dataset_index": "1", "name": "scale", "dataset_info": None, "subjects": subjects}}
    return {"collection_index": 990, "collection_name": name, "datasets": datasets}


def timed(label: str, n: int, fn):
    t = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t
    print(f"  {label:46s} {seconds:8.2f} s  ({1000 * seconds / n:.3f} s per 1,000 images)", flush=True)
    return result


def run_size(n: int, work: Path, fingerprint: bool, num_processes: int, previous_plans: Path | None) -> Path:
    """Time every step for N images; returns the plans file the stored cases were made under."""
    import numpy as np

    from nnssl.data.loader import build_train_loader
    from nnssl.data.splits import compute_split
    from nnssl.planning.fingerprint import extract_fingerprint_for_dataset
    from nnssl.planning.planner import plan_experiment_for_dataset
    from nnssl.planning.plans import Plan
    from nnssl.preprocessing.api import preprocessed_images
    from nnssl.preprocessing.provenance import MADE_WITH_KEY, made_with

    name = f"Dataset990_Scale{n}"
    from nnssl.paths import preprocessed_folder, raw_folder

    raw = raw_folder() / name
    files = raw / "files"
    files.mkdir(parents=True)
    sources = [demo_asset(v) for v in VOLUMES]  # 114,000 / 3 = 38,000 links each, under ext4's 65,000
    suffixes = [".nii" if v.endswith(".nii") else ".nii.gz" for v in VOLUMES]
    for i in range(n):
        os.link(sources[i % len(sources)], files / f"img{i}{suffixes[i % len(sources)]}")
    data = collection_dict(name, n, lambda i: f"$nnssl_raw/{name}/files/img{i}{suffixes[i % len(sources)]}")
    save_json(data, raw / "pretrain_data.json")
    print(f"{n} images ({n // IMAGES_PER_SUBJECT} subjects), hard links of {', '.join(VOLUMES)}:", flush=True)
    collection = timed("collection load + validation", n, lambda: Collection.load(raw / "pretrain_data.json"))
    images = timed("list the images (iter_images)", n, lambda: list(collection.iter_images()))
    if fingerprint:
        label = f"fingerprint (headers, {num_processes} processes)"
        timed(label, n, lambda: extract_fingerprint_for_dataset(name, num_processes, clean=True, progress=False))
        timed("plan", n, lambda: plan_experiment_for_dataset(name))

    pre = preprocessed_folder() / name
    plans_file = pre / "nnsslPlans.json"
    if not fingerprint:
        if previous_plans is None:
            raise SystemExit(f"N={n} is above --fingerprint_max and no smaller size made a plan to reuse.")
        pre.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(previous_plans, plans_file)
    # Stored cases record the plan they were made under (nnssl.preprocessing.provenance); training refuses others.
    properties = {"spacing": [1.0, 1.0, 1.0], MADE_WITH_KEY: made_with(Plan.load(plans_file), "onemmiso")}
    case_dir = pre / "nnsslPlans_onemmiso" / "cases"
    case_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    volume = rng.standard_normal((1, 170, 200, 170)).astype(np.float32)
    copies = n // LINKS_PER_FILE + 1  # file systems cap the links per file (ext4: 65,000)
    for c in range(copies):
        write_case(work / f"case_{n}_{c}", volume, properties)
    for i in range(n):
        for suffix in (".b2nd", ".json"):
            os.link(work / f"case_{n}_{i // LINKS_PER_FILE}{suffix}", case_dir / f"img{i}{suffix}")
    stored = collection_dict(name, n, lambda i: f"$nnssl_preprocessed/{name}/nnsslPlans_onemmiso/cases/img{i}.b2nd")
    save_json(stored, pre / "pretrain_data__onemmiso.json")
    cases = timed("preprocessed_images (every case complete?)", n, lambda: preprocessed_images(name, "onemmiso"))
    split = timed("subject split", n, lambda: compute_split([c.subject_uid for c in cases]))
    train = set(split["train"])
    cfg = RunConfig("bench", "MAE", "ResEncL", train=TrainConfig(batch_size=2), data=DataConfig(num_workers=0))
    loader = timed("sampler + loader set-up", n, lambda: build_train_loader(
        [c for c in cases if c.subject_uid in train], cfg, None, masks=("anonymization_mask",)))  # fmt: skip
    timed("first batch (2 x 160^3)", n, lambda: next(loader.make_iter(0)))
    assert len(images) == n
    return plans_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[11_400, 114_000])
    parser.add_argument("--fingerprint_max", type=int, default=None, help="largest N whose fingerprint is taken")
    parser.add_argument("--np", type=int, default=2, help="fingerprint processes")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nnssl_scale_"))
    try:
        for name in ("nnssl_raw", "nnssl_preprocessed", "nnssl_results"):
            (work / name).mkdir()
            os.environ[name] = str(work / name)
        plans = None
        for n in args.sizes:
            fingerprint = args.fingerprint_max is None or n <= args.fingerprint_max
            plans = run_size(n, work, fingerprint, args.np, plans)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
