"""Preprocess a whole dataset into blosc2 cases: parallel, resumable, split into parts, bad files reported.

For each configuration (``onemmiso``, ``median``, ``noresample``) of ``<plans_name>.json``:

* the images of ``$nnssl_raw/<Dataset>/pretrain_data.json`` are sliced into ``total_parts`` contiguous parts;
  this call does part ``part``;
* cases already complete (:func:`nnssl.data.case_store.case_is_complete`) are skipped, so an interrupted run
  resumes; unfinished cases (temporary files only) are redone;
* the rest go through a spawn process pool (``imap_unordered``) with a tqdm bar: read -> check mask grids ->
  :func:`preprocess_case` -> :func:`write_case`;
* a bad case (unreadable, 4D, NaN/Inf, empty, mask on another grid) is recorded with its reason and never stops
  the others.

Files per configuration, in ``$nnssl_preprocessed/<Dataset>/``::

    pretrain_data__<config>.json                 collection pointing at the stored cases ($nnssl_preprocessed/...)
    <plans>_<config>/valid_imgs__<p>_of_<n>.json raw IndependentImage records of this part's complete cases
    <plans>_<config>/preprocessing_failures__<p>_of_<n>.json   [{unique_id, image_path, path, reason}]
    <plans>_<config>/valid_imgs.json, preprocessing_failures.json   merged once every part file exists

Merging is idempotent and every file is written atomically, so parts finishing at the same time cannot corrupt
the merged files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from nnssl.data.case_store import case_is_complete, data_path, mask_path, write_case
from nnssl.data.collection import Collection, IndependentImage
from nnssl.parallel import map_unordered
from nnssl.paths import preprocessed_folder, raw_folder, resolve_dataset_name
from nnssl.progress import show_progress
from nnssl.serialization import TEMP_MARKER, load_json, save_json

logger = logging.getLogger(__name__)

COLLECTION_FILE = "pretrain_data.json"
MASK_KINDS = ("anatomy", "anonymization")
SPACING_RTOL = 1e-3
ORIGIN_ATOL_VOXELS = 0.1


@dataclass
class PreprocessingReport:
    """What one configuration's run did."""

    dataset_name: str
    configuration: str
    part: int
    total_parts: int
    num_images: int = 0
    num_processed: int = 0
    num_skipped: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    output_folder: str = ""


def _part_slice(n: int, part: int, total_parts: int) -> slice:
    """Contiguous, nearly equal slices: part p gets ``[p*n//t, (p+1)*n//t)``."""
    if total_parts < 1 or not 0 <= part < total_parts:
        raise ValueError(f"part must be in 0..total_parts-1 and total_parts >= 1; got part={part}, total={total_parts}")
    return slice(part * n // total_parts, (part + 1) * n // total_parts)


def _processes_per_config(num_processes: int | Sequence[int], configurations: Sequence[str]) -> list[int]:
    values = [int(num_processes)] if isinstance(num_processes, (int, np.integer)) else [int(v) for v in num_processes]
    if len(values) == 1:
        values = values * len(configurations)
    if len(values) != len(configurations):
        raise ValueError(
            f"-np got {len(values)} values for {len(configurations)} configurations {list(configurations)}: "
            "pass one value (used for all) or one per configuration."
        )
    if any(v < 1 for v in values):
        raise ValueError(f"-np values must be >= 1, got {values}.")
    return values


class MaskGridError(ValueError):
    """A mask that is not on its image's voxel grid."""


def _check_mask_grid(kind: str, mask_file: str, image_props: dict, mask_props: dict, image_shape, mask_shape) -> None:
    problems = []
    if tuple(image_shape) != tuple(mask_shape):
        problems.append(f"shape {list(mask_shape)} vs image {list(image_shape)}")
    spacing_i = np.asarray(image_props["spacing"], float)
    spacing_m = np.asarray(mask_props["spacing"], float)
    if not np.allclose(spacing_i, spacing_m, rtol=SPACING_RTOL, atol=0):
        problems.append(f"spacing {spacing_m.tolist()} vs image {spacing_i.tolist()}")
    origin_key = "canonical_origin" if "canonical_origin" in image_props else "original_origin"
    if origin_key in image_props and origin_key in mask_props:
        origin_i = np.asarray(image_props[origin_key], float)
        origin_m = np.asarray(mask_props[origin_key], float)
        if not np.allclose(origin_i, origin_m, atol=ORIGIN_ATOL_VOXELS * float(spacing_i.min())):
            problems.append(f"origin {origin_m.tolist()} vs image {origin_i.tolist()}")
    if problems:
        raise MaskGridError(
            f"the {kind} mask {mask_file} is not on the image's voxel grid ({'; '.join(problems)}); "
            "resample the mask onto the image (same shape, spacing and origin) or remove it from pretrain_data.json"
        )


def _remove_leftovers(stem: Path) -> None:
    """Delete temporary files of an interrupted write of this case (they are never read)."""
    if stem.parent.is_dir():
        for leftover in stem.parent.glob(f"{stem.name}*{TEMP_MARKER}*"):
            leftover.unlink(missing_ok=True)


def _preprocess_one(task: tuple[dict[str, Any], str, dict[str, Any], dict[str, Any]]) -> dict[str, str]:
    """Worker: preprocess and store one image; never raises, returns {unique_id, status, path, reason}."""
    from nnssl.imageio import read_image, read_mask
    from nnssl.preprocessing.preprocess_case import preprocess_case

    image_dict, stem_text, config_plan, plan = task
    image = IndependentImage.from_dict(image_dict)
    stem = Path(stem_text)
    current = image.image_path
    try:
        data, props = read_image(image.image_path)
        masks = {}
        for kind, mask_file in (("anatomy", image.anatomy_mask), ("anonymization", image.anonymization_mask)):
            if mask_file is None:
                continue
            current = mask_file
            mask, mask_props = read_mask(mask_file)
            _check_mask_grid(kind, mask_file, props, mask_props, data.shape[1:], mask.shape[1:])
            masks[kind] = mask
        current = image.image_path
        data, masks, props = preprocess_case(data, masks, props, config_plan, plan, image.modality)
        props.update({"unique_id": image.unique_id, "image_path": image.image_path})
        props["source_masks"] = {"anatomy": image.anatomy_mask, "anonymization": image.anonymization_mask}
        _remove_leftovers(stem)
        write_case(stem, data, props, masks)
        return {"unique_id": image.unique_id, "status": "ok"}
    except Exception as err:  # one bad case must never stop the run; the reason is recorded for the user
        reason = str(err) if isinstance(err, (ValueError, RuntimeError)) else f"{type(err).__name__}: {err}"
        return {"unique_id": image.unique_id, "status": "failed", "image_path": image.image_path, "path": current,
                "reason": reason}  # fmt: skip


def _crashed_case(task: tuple[dict[str, Any], str, dict[str, Any], dict[str, Any]], reason: str) -> dict[str, str]:
    image = IndependentImage.from_dict(task[0])
    return {"unique_id": image.unique_id, "status": "failed", "image_path": image.image_path, "path": image.image_path,
            "reason": reason}  # fmt: skip


def _run_tasks(tasks: list[tuple], num_processes: int, progress: bool, desc: str) -> Iterable[dict[str, str]]:
    bar = tqdm(total=len(tasks), desc=desc, disable=not show_progress(progress) or not tasks, smoothing=0.1)
    try:
        for result in map_unordered(_preprocess_one, tasks, num_processes, _crashed_case):
            bar.update()
            yield result
    finally:
        bar.close()


def _merge_parts(folder: Path, prefix: str, total_parts: int) -> list[dict[str, Any]] | None:
    """Union (by unique_id, sorted) of every part file ``<prefix>__<p>_of_<n>.json``; None while any is missing."""
    files = [folder / f"{prefix}__{p}_of_{total_parts}.json" for p in range(total_parts)]
    if not all(f.is_file() for f in files):
        return None
    merged: dict[str, dict[str, Any]] = {}
    for f in files:
        for record in load_json(f):
            key = record["unique_id"] if "unique_id" in record else IndependentImage.from_dict(record).unique_id
            merged[key] = record
    return [merged[k] for k in sorted(merged)]


def _case_mapping(images: Sequence[IndependentImage], out_dir: Path) -> dict[str, tuple[str, str | None, str | None]]:
    mapping = {}
    for image in images:
        stem = out_dir / image.relative_case_path
        anat = str(mask_path(stem, "anatomy")) if image.anatomy_mask else None
        anon = str(mask_path(stem, "anonymization")) if image.anonymization_mask else None
        mapping[image.unique_id] = (str(data_path(stem)), anat, anon)
    return mapping


def preprocess_configuration(
    dataset_name: str,
    configuration: str,
    plans_name: str = "nnsslPlans",
    num_processes: int = 4,
    part: int = 0,
    total_parts: int = 1,
    verbose: bool = False,
    progress: bool = True,
) -> PreprocessingReport:
    """Preprocess one configuration of a dataset (one part of it); see the module docstring."""
    from nnssl.planning.plans import Plan

    start = time.perf_counter()
    dataset_dir = preprocessed_folder() / dataset_name
    plan = Plan.load(dataset_dir / f"{plans_name}.json")
    config_plan = plan.configuration(configuration)
    collection_file = raw_folder() / dataset_name / COLLECTION_FILE
    if not collection_file.is_file():
        raise FileNotFoundError(f"{collection_file} does not exist; every raw dataset needs a {COLLECTION_FILE}.")
    collection = Collection.load(collection_file)
    all_images = list(collection.iter_images())
    images = all_images[_part_slice(len(all_images), part, total_parts)]
    out_dir = dataset_dir / config_plan.data_identifier
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PreprocessingReport(
        dataset_name, configuration, part, total_parts, len(images), output_folder=str(out_dir)
    )

    config_dict = config_plan.to_dict()
    plan_dict = {"transpose_forward": list(plan.transpose_forward)}
    tasks, seen, failures = [], {}, []
    for image in images:
        stem = out_dir / image.relative_case_path
        if str(stem) in seen:
            failures.append({"unique_id": image.unique_id, "image_path": image.image_path, "path": image.image_path,
                             "reason": f"its case path {stem} is also the case path of {seen[str(stem)]} (same "
                             "session and file name up to the extension); rename one of the images"})  # fmt: skip
            continue
        seen[str(stem)] = image.unique_id
        if case_is_complete(stem):
            report.num_skipped += 1
            continue
        tasks.append((image.to_dict(), str(stem), config_dict, plan_dict))
    if verbose:
        logger.info("%s %s part %d/%d: %d images, %d already done, %d to process with %d processes",
                    dataset_name, configuration, part, total_parts, len(images), report.num_skipped, len(tasks),
                    num_processes)  # fmt: skip
    for result in _run_tasks(tasks, num_processes, progress, f"{dataset_name} {configuration}"):
        if result["status"] == "ok":
            report.num_processed += 1
        else:
            failures.append({k: result[k] for k in ("unique_id", "image_path", "path", "reason")})
    report.failures = sorted(failures, key=lambda f: f["unique_id"])

    valid = [img.to_dict() for img in images if case_is_complete(out_dir / img.relative_case_path)]
    suffix = f"{part}_of_{total_parts}"
    save_json(valid, out_dir / f"valid_imgs__{suffix}.json")
    save_json(report.failures, out_dir / f"preprocessing_failures__{suffix}.json")
    merged_valid = _merge_parts(out_dir, "valid_imgs", total_parts)
    merged_failures = _merge_parts(out_dir, "preprocessing_failures", total_parts)
    if merged_valid is not None and merged_failures is not None:
        save_json(merged_valid, out_dir / "valid_imgs.json")
        save_json(merged_failures, out_dir / "preprocessing_failures.json")
        valid_records = [IndependentImage.from_dict(r) for r in merged_valid]
        collection.with_image_paths(_case_mapping(valid_records, out_dir)).save(
            dataset_dir / f"pretrain_data__{configuration}.json", relative_paths=True
        )
    report.seconds = time.perf_counter() - start
    _log_report(report)
    return report


def _log_report(report: PreprocessingReport) -> None:
    logger.info(
        "%s %s part %d/%d: %d processed, %d skipped (already done), %d failed in %.1f s -> %s",
        report.dataset_name, report.configuration, report.part, report.total_parts, report.num_processed,
        report.num_skipped, len(report.failures), report.seconds, report.output_folder,
    )  # fmt: skip
    if report.failures:
        lines = "\n".join(f"  {f['path']}: {f['reason']}" for f in report.failures)
        logger.warning("%d image(s) could not be preprocessed and are left out:\n%s", len(report.failures), lines)


def preprocess_dataset(
    dataset_name_or_id: str | int,
    configurations: Sequence[str] = ("onemmiso",),
    plans_name: str = "nnsslPlans",
    num_processes: int | Sequence[int] = 4,
    part: int = 0,
    total_parts: int = 1,
    verbose: bool = False,
    progress: bool = True,
) -> dict[str, PreprocessingReport]:
    """Preprocess ``configurations`` of a dataset; ``num_processes`` is one value or one per configuration.

    Returns {configuration: PreprocessingReport}. Bad images are recorded, never raised; missing plans or
    collection files raise with the command that creates them.
    """
    name = resolve_dataset_name(dataset_name_or_id)
    configurations = list(configurations)
    processes = _processes_per_config(num_processes, configurations)
    return {
        config: preprocess_configuration(name, config, plans_name, n, part, total_parts, verbose, progress)
        for config, n in zip(configurations, processes)
    }


def preprocessed_images(
    dataset_name: str | int, configuration: str, plans_name: str = "nnsslPlans"
) -> list[IndependentImage]:
    """The successfully preprocessed cases of a configuration (image_path = the ``.b2nd`` file, masks likewise)."""
    name = resolve_dataset_name(dataset_name)
    collection_file = preprocessed_folder() / name / f"pretrain_data__{configuration}.json"
    if not collection_file.is_file():
        raise FileNotFoundError(
            f"{collection_file} does not exist: the dataset has not been preprocessed for '{configuration}' "
            "(or not every part has finished). "
            f"Run: nnssl_preprocess -d {name} -c {configuration} -plans_name {plans_name}"
        )
    images = []
    for image in Collection.load(collection_file).iter_images():
        if case_is_complete(image.image_path):
            images.append(image)
        else:
            logger.warning("Preprocessed case %s is listed but incomplete; leaving it out.", image.image_path)
    if not images:
        raise FileNotFoundError(
            f"No complete preprocessed case listed in {collection_file}. "
            f"Run: nnssl_preprocess -d {name} -c {configuration} -plans_name {plans_name}"
        )
    return images
