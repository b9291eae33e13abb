"""Dataset fingerprint: the header of every image of a collection (spacing, shape, orientation, dtype, channels).

Only headers are read (:func:`nnssl.imageio.read_header`), in parallel worker processes (``spawn`` context, so it is
safe with threads and CUDA in the parent), with results streamed through ``imap_unordered`` so the progress bar moves.
A file that cannot be read, or that the reading policy refuses (truncated or corrupt, over the size limit, more
channels than its entry declares, sheared affine; see :mod:`nnssl.imageio.policy`), is recorded under
``"excluded"`` with its reason; the others carry on.

``dataset_fingerprint.json``::

    {"dataset_name": ..., "num_images": N, "num_excluded": K,
     "spacings": [[z, y, x], ...], "shapes": [[z, y, x], ...],   # readable images, in collection order
     "median_spacing": [z, y, x],                                 # per-axis median of "spacings"
     "orientations": {"RAS": n, ...},                             # orientation codes of the files as stored
     "images": [{unique_id, image_path, spacing, shape, num_channels, dtype, orientation, modality, reader}],
     "excluded": [{unique_id, image_path, reason}]}

Spacings and shapes are in canonical array-axis order (see :mod:`nnssl.imageio.header`). Upstream's fingerprint only
had ``"spacings"``; the planner needs nothing else, so upstream fingerprints still plan.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from nnssl.data.collection import Collection, IndependentImage, declared_channels
from nnssl.imageio import DEFAULT_MAX_VOXELS, ReadPolicy, failure_reason, read_header
from nnssl.parallel import map_unordered
from nnssl.paths import preprocessed_folder, raw_folder, resolve_dataset_name
from nnssl.progress import show_progress
from nnssl.serialization import load_json, save_json

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "dataset_fingerprint.json"
COLLECTION_FILE = "pretrain_data.json"


def default_num_processes() -> int:
    """Worker count when none is given: ``$nnUNet_def_n_proc`` (upstream's variable) or 8."""
    return int(os.environ.get("nnUNet_def_n_proc", 8))  # noqa: SIM112 (upstream name)


HeaderTask = tuple[int, str, str, str, ReadPolicy]


def _header_record(task: HeaderTask) -> tuple[int, dict[str, Any] | None, str | None]:
    """Worker: (index, record, None) for a readable image, (index, None, reason) otherwise. Never raises."""
    index, unique_id, image_path, modality, policy = task
    try:
        header = read_header(image_path, policy)
    except Exception as err:  # one bad file must not stop the others; the reason goes into the fingerprint
        return index, None, failure_reason(err)
    record = {
        "unique_id": unique_id,
        "image_path": image_path,
        "spacing": list(header.spacing),
        "shape": list(header.shape),
        "num_channels": header.num_channels,
        "dtype": header.dtype,
        "orientation": header.orientation,
        "modality": modality,
        "reader": header.reader,
    }
    return index, record, None


def _header_crash(task: HeaderTask, reason: str) -> tuple[int, None, str]:
    return task[0], None, reason


def _run(tasks: list[HeaderTask], num_processes: int) -> Iterator[tuple[int, Any, Any]]:
    return map_unordered(_header_record, tasks, num_processes, _header_crash)


def extract_fingerprint(
    images: Collection | Iterable[IndependentImage],
    num_processes: int = 1,
    dataset_name: str | None = None,
    progress: bool = False,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    resample_sheared: bool = False,
) -> dict[str, Any]:
    """Read the header of every image and summarise them (see the module docstring for the keys).

    Each file is screened as :func:`nnssl.imageio.read_header` does (truncated files, more than ``max_voxels``
    voxels, undeclared channels, sheared affines are excluded with their reason; with ``resample_sheared`` a sheared
    NIfTI image counts with the axis-aligned grid preprocessing resamples it onto). Raises ValueError if not a
    single image could be read; the message lists the first reasons.
    """
    records = list(images.iter_images()) if isinstance(images, Collection) else list(images)
    tasks = [
        (
            i,
            img.unique_id,
            img.image_path,
            img.modality,
            ReadPolicy(max_voxels, declared_channels(img.image_info), resample_sheared),
        )
        for i, img in enumerate(records)
    ]
    found: dict[int, dict[str, Any]] = {}
    excluded: dict[int, dict[str, str]] = {}
    bar = tqdm(total=len(tasks), desc="fingerprint (headers)", unit="img", disable=not show_progress(progress))
    for index, record, reason in _run(tasks, num_processes):
        if record is not None:
            found[index] = record
        else:
            excluded[index] = {"unique_id": tasks[index][1], "image_path": tasks[index][2], "reason": reason}
            logger.warning("Excluded %s: %s", tasks[index][2], reason)
        bar.update()
    bar.close()
    if not found:
        reasons = "; ".join(f"{e['image_path']}: {e['reason']}" for e in list(excluded.values())[:5])
        raise ValueError(f"None of the {len(tasks)} images could be read. First reasons: {reasons or 'no images'}")
    readable = [found[i] for i in sorted(found)]
    spacings = [r["spacing"] for r in readable]
    return {
        "dataset_name": dataset_name,
        "num_images": len(tasks),
        "num_excluded": len(excluded),
        "spacings": spacings,
        "shapes": [r["shape"] for r in readable],
        "median_spacing": [float(s) for s in np.median(np.asarray(spacings, dtype=float), axis=0)],
        "orientations": dict(sorted(Counter(r["orientation"] for r in readable).items())),
        "images": readable,
        "excluded": [excluded[i] for i in sorted(excluded)],
    }


def fingerprint_path(dataset_name: str) -> Path:
    """``$nnssl_preprocessed/<dataset_name>/dataset_fingerprint.json``."""
    return preprocessed_folder() / dataset_name / FINGERPRINT_FILE


def extract_fingerprint_for_dataset(
    dataset_name_or_id: str | int,
    num_processes: int | None = None,
    clean: bool = False,
    progress: bool = True,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    resample_sheared: bool = False,
) -> dict[str, Any]:
    """Fingerprint ``$nnssl_raw/<name>/pretrain_data.json`` into ``$nnssl_preprocessed/<name>/`` (atomically).

    An existing fingerprint is loaded and returned unless ``clean`` is set.
    ``num_processes`` defaults to :func:`default_num_processes`; ``progress`` shows a tqdm bar on stderr;
    ``max_voxels`` and ``resample_sheared`` are the read policy of every image (see :class:`nnssl.imageio.ReadPolicy`).
    """
    name = resolve_dataset_name(dataset_name_or_id)
    out = fingerprint_path(name)
    if out.is_file() and not clean:
        logger.info("Fingerprint %s exists; keeping it (pass --clean to recompute).", out)
        return load_json(out)
    collection_file = raw_folder() / name / COLLECTION_FILE
    if not collection_file.is_file():
        raise FileNotFoundError(
            f"{collection_file} does not exist. Every raw dataset needs a {COLLECTION_FILE} "
            "(write one with nnssl_convert_openmind or by hand, see documentation/planning.md)."
        )
    collection = Collection.load(collection_file)
    workers = default_num_processes() if num_processes is None else num_processes
    fingerprint = extract_fingerprint(
        collection,
        num_processes=workers,
        dataset_name=name,
        progress=progress,
        max_voxels=max_voxels,
        resample_sheared=resample_sheared,
    )
    save_json(fingerprint, out)
    logger.info(
        "Fingerprint of %d images (%d excluded) written to %s",
        fingerprint["num_images"],
        fingerprint["num_excluded"],
        out,
    )
    return fingerprint
