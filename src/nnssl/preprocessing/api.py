"""Preprocess a whole dataset into blosc2 cases: parallel, resumable, split into parts, bad files reported.

For each configuration (``onemmiso``, ``median``, ``noresample``) of ``<plans_name>.json``:

* the images of ``$nnssl_raw/<Dataset>/pretrain_data.json`` are sliced into ``total_parts`` contiguous parts;
  this call does part ``part``;
* cases already complete (:func:`nnssl.data.case_store.case_is_complete`) *and* made under the current plan
  (:mod:`nnssl.preprocessing.provenance`) are skipped, so an interrupted run resumes; unfinished cases (temporary
  files only) and cases made under another plan (or by an nnssl that recorded no plan) are redone;
* the rest go through a spawn process pool (:func:`nnssl.parallel.map_unordered`) with a tqdm bar: read (screened
  by :class:`nnssl.imageio.ReadPolicy`) -> binarise and check masks -> :func:`preprocess_case` -> :func:`write_case`;
* a bad case (unreadable, truncated, over the size limit, undeclared channels, sheared, 4D, NaN/Inf, values beyond
  float32, empty, mask on another grid) is recorded with its reason and never stops the others;
* a full disk stops the run with :class:`nnssl.serialization.OutOfSpaceError`: "no space left on <folder>", how
  many cases were stored and kept, and the command that continues (it skips them).

Files per configuration, in ``$nnssl_preprocessed/<Dataset>/``::

    pretrain_data__<config>.json                 collection pointing at the stored cases ($nnssl_preprocessed/...)
    <plans>_<config>/valid_imgs__<p>_of_<n>.json raw IndependentImage records of this part's complete cases
    <plans>_<config>/preprocessing_failures__<p>_of_<n>.json   [{unique_id, image_path, path, reason}]
    <plans>_<config>/valid_imgs.json, preprocessing_failures.json   merged once every part file exists

Merging is idempotent and every file is written atomically, so parts finishing at the same time cannot corrupt
the merged files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from nnssl.data.case_store import (
    DEFAULT_FORMAT,
    case_is_complete,
    data_path,
    mask_path,
    properties_path,
    write_case,
)
from nnssl.data.collection import Collection, IndependentImage, declared_channels
from nnssl.imageio import DEFAULT_MAX_VOXELS, ImageReadError, ReadPolicy, failure_reason
from nnssl.parallel import map_unordered
from nnssl.paths import preprocessed_folder, raw_folder, resolve_dataset_name
from nnssl.preprocessing.provenance import MADE_WITH_KEY, made_with, stored_digest
from nnssl.progress import show_progress
from nnssl.serialization import TEMP_MARKER, OutOfSpaceError, is_out_of_space, load_json, save_json

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
    num_redone_other_plan: int = 0
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


Task = tuple[dict[str, Any], str, dict[str, Any], dict[str, Any], dict[str, Any], int]
_MASK_FIELDS = (("anatomy", "associated_masks.anatomy_mask"), ("anonymization", "associated_masks.anonymization_mask"))


def _failed(image: IndependentImage, path: str, reason: str) -> dict[str, str]:
    return {"unique_id": image.unique_id, "status": "failed", "image_path": image.image_path, "path": path,
            "reason": reason}  # fmt: skip


def _preprocess_one(task: Task) -> dict[str, str]:
    """Worker: preprocess and store one image; never raises, returns {unique_id, status, path, reason}.

    status is "ok", "failed" (a bad image: the reason is for the user) or "no_space" (the disk is full: not the
    image's fault, the run stops).
    """
    from nnssl.imageio import read_image, read_mask
    from nnssl.preprocessing.preprocess_case import preprocess_case

    image_dict, stem_text, config_plan, plan, case_made_with, max_voxels, resample_sheared = task
    image = IndependentImage.from_dict(image_dict)
    stem = Path(stem_text)
    properties_path(stem).unlink(missing_ok=True)  # a case of another plan must not stay "complete" if this fails
    current, field = image.image_path, "image_path"
    try:
        policy = ReadPolicy(max_voxels, declared_channels(image.image_info), resample_sheared)
        data, props = read_image(image.image_path, policy)
        masks, binarised = {}, {}
        for kind, mask_field in _MASK_FIELDS:
            mask_file = image.anatomy_mask if kind == "anatomy" else image.anonymization_mask
            if mask_file is None:
                continue
            current, field = mask_file, mask_field
            mask, mask_props = read_mask(mask_file, policy, binary=True)
            _check_mask_grid(kind, mask_file, props, mask_props, data.shape[1:], mask.shape[1:])
            masks[kind] = mask
            if mask_props["label_range"][1] > 1:
                binarised[kind] = mask_props["label_range"]
        current, field = image.image_path, "image_path"
        data, masks, props = preprocess_case(data, masks, props, config_plan, plan, image.modality)
        props.update({"unique_id": image.unique_id, "image_path": image.image_path})
        props["source_masks"] = {"anatomy": image.anatomy_mask, "anonymization": image.anonymization_mask}
        if binarised:
            props["binarised_masks"] = binarised  # [min, max] label of each mask whose labels > 0 became 1
        props[MADE_WITH_KEY] = case_made_with
    except ImageReadError as err:
        return _failed(image, current, failure_reason(err, field))
    except Exception as err:  # one bad case must never stop the run; the reason is recorded for the user
        reason = str(err) if isinstance(err, (ValueError, RuntimeError)) else f"{type(err).__name__}: {err}"
        return _failed(image, current, reason)
    try:
        _remove_leftovers(stem)
        fmt = dataclasses.replace(DEFAULT_FORMAT, precision=config_plan.get("storage_precision", "float32"))
        write_case(stem, data, props, masks, fmt)
    except Exception as err:
        needed = data.nbytes + sum(m.nbytes for m in masks.values())
        if is_out_of_space(err, stem.parent, needed):
            _remove_leftovers(stem)
            return {"unique_id": image.unique_id, "status": "no_space", "path": str(stem.parent),
                    "reason": f"{type(err).__name__}: {err}"}  # fmt: skip
        return _failed(image, str(stem), f"writing the case failed: {type(err).__name__}: {err}")
    return {"unique_id": image.unique_id, "status": "ok"}


def _crashed_case(task: Task, reason: str) -> dict[str, str]:
    image = IndependentImage.from_dict(task[0])
    return _failed(image, image.image_path, reason)


def _run_tasks(tasks: list[Task], num_processes: int, progress: bool, desc: str) -> Iterator[dict[str, str]]:
    bar = tqdm(total=len(tasks), desc=desc, disable=not show_progress(progress) or not tasks, smoothing=0.1)
    with contextlib.closing(map_unordered(_preprocess_one, tasks, num_processes, _crashed_case)) as results:
        try:
            for result in results:
                bar.update()
                yield result
        finally:
            bar.close()


def _case_status(stem: Path, digest: str) -> str:
    """ "current" (complete, made under the plan with ``digest``), "other_plan" (complete, another plan or none
    recorded) or "incomplete"."""
    if not case_is_complete(stem):
        return "incomplete"
    try:
        properties = load_json(properties_path(stem))
    except (ValueError, OSError):
        return "incomplete"
    return "current" if stored_digest(properties) == digest else "other_plan"


def rerun_command(dataset_name: str, configuration: str, plans_name: str, part: int = 0, total_parts: int = 1) -> str:
    """The ``nnssl_preprocess`` command line that (re)does ``configuration`` of ``dataset_name``."""
    parts = f" -part {part} -total_parts {total_parts}" if total_parts > 1 else ""
    return f"nnssl_preprocess -d {dataset_name} -c {configuration} -plans_name {plans_name}{parts}"


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
    max_voxels: int = DEFAULT_MAX_VOXELS,
    resample_sheared: bool = False,
) -> PreprocessingReport:
    """Preprocess one configuration of a dataset (one part of it); see the module docstring.

    ``max_voxels`` and ``resample_sheared`` are the read policy of every image (see
    :class:`nnssl.imageio.ReadPolicy`). Raises
    :class:`OutOfSpaceError` when the disk fills up (finished cases are kept).
    """
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

    case_made_with = made_with(plan, configuration)
    digest = case_made_with["digest"]
    config_dict = config_plan.to_dict()
    plan_dict = {"transpose_forward": list(plan.transpose_forward)}
    tasks: list[Task] = []
    seen: dict[str, str] = {}
    failures: list[dict[str, str]] = []
    for image in images:
        stem = out_dir / image.relative_case_path
        if str(stem) in seen:
            failures.append({"unique_id": image.unique_id, "image_path": image.image_path, "path": image.image_path,
                             "reason": f"its case path {stem} is also the case path of {seen[str(stem)]} (same "
                             "session and file name up to the extension); rename one of the images"})  # fmt: skip
            continue
        seen[str(stem)] = image.unique_id
        status = _case_status(stem, digest)
        if status == "current":
            report.num_skipped += 1
            continue
        report.num_redone_other_plan += status == "other_plan"
        tasks.append((image.to_dict(), str(stem), config_dict, plan_dict, case_made_with, max_voxels, resample_sheared))
    if report.num_redone_other_plan:
        logger.warning(
            "%d stored case(s) of %s were made under another plan than %s (plan digest %s) or by an nnssl that "
            "recorded none; they are redone so that the dataset does not mix plans.",
            report.num_redone_other_plan, out_dir, plans_name, digest,
        )  # fmt: skip
    if verbose:
        logger.info("%s %s part %d/%d: %d images, %d already done, %d to process with %d processes",
                    dataset_name, configuration, part, total_parts, len(images), report.num_skipped, len(tasks),
                    num_processes)  # fmt: skip
    no_space = None
    for result in _run_tasks(tasks, num_processes, progress, f"{dataset_name} {configuration}"):
        if result["status"] == "ok":
            report.num_processed += 1
        elif result["status"] == "no_space":
            no_space = result
            break
        else:
            failures.append({k: result[k] for k in ("unique_id", "image_path", "path", "reason")})
    report.failures = sorted(failures, key=lambda f: f["unique_id"])
    command = rerun_command(dataset_name, configuration, plans_name, part, total_parts)
    if no_space is not None:
        _stop_out_of_space(report, no_space["path"], len(tasks), command)
    try:
        _write_lists(report, collection, images, out_dir, digest)
    except OSError as err:
        if is_out_of_space(err, out_dir):
            raise OutOfSpaceError(
                getattr(err, "filename", None) or out_dir,
                f"All {report.num_processed + report.num_skipped} finished case(s) are stored and kept, but the "
                f"lists of valid cases could not be written. Free space and run again: {command} (it skips the "
                "finished cases).",
            ) from err
        raise
    report.seconds = time.perf_counter() - start
    _log_report(report)
    return report


def _stop_out_of_space(report: PreprocessingReport, folder: str, num_tasks: int, command: str) -> None:
    """Raise the OutOfSpaceError that ends a run whose disk filled up, after saving what still fits."""
    left = num_tasks - report.num_processed - len(report.failures)
    raise OutOfSpaceError(
        folder,
        f"Preprocessing of {report.dataset_name} {report.configuration} stopped: {report.num_processed} case(s) "
        f"of this run were stored and are kept (besides {report.num_skipped} done before); {left} case(s) were "
        "not written and left no partial files. Free space on that disk (or point $nnssl_preprocessed at a larger "
        f"one) and run the same command again, e.g. {command}; it skips the stored cases.",
    )


def _write_lists(
    report: PreprocessingReport, collection: Collection, images: list[IndependentImage], out_dir: Path, digest: str
) -> None:
    """The part's valid/failure lists, and the merged lists and collection once every part has written its own."""
    valid = [img.to_dict() for img in images if _case_status(out_dir / img.relative_case_path, digest) == "current"]
    suffix = f"{report.part}_of_{report.total_parts}"
    save_json(valid, out_dir / f"valid_imgs__{suffix}.json")
    save_json(report.failures, out_dir / f"preprocessing_failures__{suffix}.json")
    merged_valid = _merge_parts(out_dir, "valid_imgs", report.total_parts)
    merged_failures = _merge_parts(out_dir, "preprocessing_failures", report.total_parts)
    if merged_valid is not None and merged_failures is not None:
        save_json(merged_valid, out_dir / "valid_imgs.json")
        save_json(merged_failures, out_dir / "preprocessing_failures.json")
        valid_records = [IndependentImage.from_dict(r) for r in merged_valid]
        collection.with_image_paths(_case_mapping(valid_records, out_dir)).save(
            out_dir.parent / f"pretrain_data__{report.configuration}.json", relative_paths=True
        )


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
    max_voxels: int = DEFAULT_MAX_VOXELS,
    resample_sheared: bool = False,
) -> dict[str, PreprocessingReport]:
    """Preprocess ``configurations`` of a dataset; ``num_processes`` is one value or one per configuration.

    Returns {configuration: PreprocessingReport}. Bad images are recorded, never raised; missing plans or
    collection files raise with the command that creates them; a full disk raises :class:`OutOfSpaceError`.
    ``max_voxels`` and ``resample_sheared`` are the read policy of every image (see :class:`nnssl.imageio.ReadPolicy`).
    """
    name = resolve_dataset_name(dataset_name_or_id)
    configurations = list(configurations)
    processes = _processes_per_config(num_processes, configurations)
    return {
        config: preprocess_configuration(
            name,
            config,
            plans_name,
            n,
            part,
            total_parts,
            verbose,
            progress,
            max_voxels=max_voxels,
            resample_sheared=resample_sheared,
        )
        for config, n in zip(configurations, processes)
    }


def preprocessed_images(
    dataset_name: str | int, configuration: str, plans_name: str = "nnsslPlans"
) -> list[IndependentImage]:
    """The successfully preprocessed cases of a configuration (image_path = the ``.b2nd`` file, masks likewise).

    Incomplete cases are left out with a warning. Cases made under another plan than the current
    ``<plans_name>.json`` (see :mod:`nnssl.preprocessing.provenance`) are refused: a FileNotFoundError names how
    many, a few examples, and the ``nnssl_preprocess`` command that redoes them.
    """
    from nnssl.planning.plans import Plan

    name = resolve_dataset_name(dataset_name)
    command = rerun_command(name, configuration, plans_name)
    collection_file = preprocessed_folder() / name / f"pretrain_data__{configuration}.json"
    if not collection_file.is_file():
        raise FileNotFoundError(
            f"{collection_file} does not exist: the dataset has not been preprocessed for '{configuration}' "
            f"(or not every part has finished). Run: {command}"
        )
    digest = made_with(Plan.load(preprocessed_folder() / name / f"{plans_name}.json"), configuration)["digest"]
    images, other_plan = [], []
    for image in Collection.load(collection_file).iter_images():
        status = _case_status(Path(image.image_path), digest)
        if status == "current":
            images.append(image)
        elif status == "other_plan":
            other_plan.append(image.image_path)
        else:
            logger.warning("Preprocessed case %s is listed but incomplete; leaving it out.", image.image_path)
    if other_plan:
        raise FileNotFoundError(
            f"{len(other_plan)} of the cases listed in {collection_file} were made under another plan than the "
            f"current {plans_name}.json (plan digest {digest}), or by an nnssl that recorded none, e.g. "
            f"{other_plan[:3]}. Training on them would mix plans. Redo them with: {command}"
        )
    if not images:
        raise FileNotFoundError(f"No complete preprocessed case listed in {collection_file}. Run: {command}")
    return images
