"""Convert the OpenMind release (Wald et al., arXiv 2412.17041) into ``pretrain_data.json`` for nnssl.

Output: ``$nnssl_raw/Dataset745_OpenMind/pretrain_data.json``. Release layout read here::

    <root>/openneuro_metadata.csv     one row per image
    <root>/OpenMind/dsXXXXXX/sub-YY/[ses-ZZ/]<...>/<file>.nii.gz   images and masks (paths in the CSV are relative
                                                                    to <root>/OpenMind)

CSV columns used: ``image_path`` and ``modality`` (required); ``anat_mask_path``, ``anon_mask_path``,
``image_quality_score``; subject info :data:`SUBJECT_INFO_KEYS`; image info :data:`IMAGE_INFO_KEYS`.
Empty and NaN-like cells (pandas' missing-value spellings) are dropped; numbers and True/False are parsed.

The tree follows the image path: dataset = first component, subject = second, session = third component when it
starts with ``ses-`` (and is a folder), else ``ses-DEFAULT``. Derived images (rows with ``derived_from``) are named
``<parent folder minus its last 5 characters><file name>`` to keep them apart from their source (upstream's rule).
Subject info comes from the subject's first row; later rows only add keys it lacks.

Each dataset's ``dataset_info["image_quality_score"]`` is upstream's IQS table: one row per (modality,
derived_from) combination of that dataset, holding the first non-missing score in CSV order (null if none).

Rows whose image file does not exist are skipped; missing mask files are dropped from their image. Both are
counted in a warning and listed in ``missing_images.txt`` next to the JSON (``kind<TAB>csv line<TAB>path``);
the file is removed when nothing is missing. The collection is named ``Dataset745_OpenMind`` with index 745, the
folder it is written to (upstream named it ``Dataset001_OpenMind``, bug B23).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from nnssl.data.collection import AssociatedMasks, Collection, Dataset, Image, Session, Subject
from nnssl.paths import raw_folder
from nnssl.progress import show_progress

logger = logging.getLogger(__name__)

OPENMIND_DATASET_NAME = "Dataset745_OpenMind"
OPENMIND_COLLECTION_INDEX = 745
METADATA_CSV = "openneuro_metadata.csv"
IMAGES_FOLDER = "OpenMind"
MISSING_LIST_NAME = "missing_images.txt"
DEFAULT_SESSION = "ses-DEFAULT"
IQS_COLUMN = "image_quality_score"
REQUIRED_COLUMNS = ("image_path", "modality")
SUBJECT_INFO_KEYS = ("age", "sex", "handedness", "race", "weight", "bmi", "health_status")
IMAGE_INFO_KEYS = (
    "derived_from",
    "is_brain_extract",
    "manufacturer",
    "model_name",
    "phase_encoding_direction",
    "magnetic_field_strength",
    "repetition_time",
    "echo_time",
)
#: Cell texts read as missing (pandas' default missing-value spellings).
NA_VALUES = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA"}
    | {"NULL", "NaN", "None", "n/a", "nan", "null"}
)
_INT = re.compile(r"^[+-]?(0|[1-9][0-9]*)$")


def parse_value(text: str | None) -> Any:
    """A CSV cell as a Python value: None for missing/NaN, int, float, bool (True/False), else the stripped text."""
    if text is None:
        return None
    text = text.strip()
    if text in NA_VALUES:
        return None
    if text in ("True", "TRUE", "true"):
        return True
    if text in ("False", "FALSE", "false"):
        return False
    if _INT.match(text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return text
    if text[0].isdigit() and len(text) > 1 and text[0] == "0" and text[1].isdigit():
        return text  # an identifier with leading zeros, not a number
    return number if math.isfinite(number) else None


@dataclass
class MissingFile:
    """A file named by the CSV that does not exist."""

    kind: str  # "image", "anatomy_mask" or "anonymization_mask"
    csv_line: int
    path: str


@dataclass
class ConversionResult:
    """What :func:`convert_openmind` wrote and what it left out."""

    collection: Collection
    json_path: Path
    missing: list[MissingFile] = field(default_factory=list)
    skipped_rows: list[str] = field(default_factory=list)
    missing_list_path: Path | None = None


def _read_rows(csv_path: Path) -> list[tuple[int, dict[str, str]]]:
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        absent = [c for c in REQUIRED_COLUMNS if c not in columns]
        if absent:
            raise ValueError(
                f"{csv_path} lacks the column(s) {absent}; found {columns}. Is this OpenMind's {METADATA_CSV}?"
            )
        return [(reader.line_num, row) for row in reader]


def build_openmind_collection(
    openmind_root_dir: str | os.PathLike[str], progress: bool = True
) -> tuple[Collection, list[MissingFile], list[str]]:
    """Build the collection from an OpenMind download; returns (collection, missing files, skipped-row reasons).

    Image and mask paths are absolute; :meth:`Collection.save` rewrites them to ``$nnssl_raw/...``.
    """
    root = Path(os.path.abspath(openmind_root_dir))
    csv_path = root / METADATA_CSV
    images_dir = root / IMAGES_FOLDER
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"{csv_path} does not exist. Pass --openmind_root_dir the folder that holds {METADATA_CSV} and the "
            f"{IMAGES_FOLDER}/ image folder (the top level of the OpenMind download)."
        )
    if not images_dir.is_dir():
        raise FileNotFoundError(
            f"{images_dir} does not exist. The OpenMind images are expected in {IMAGES_FOLDER}/ next to {METADATA_CSV}."
        )
    rows = _read_rows(csv_path)

    collection = Collection(collection_index=OPENMIND_COLLECTION_INDEX, collection_name=OPENMIND_DATASET_NAME)
    missing: list[MissingFile] = []
    skipped: list[str] = []
    iqs: dict[str, dict[tuple[Any, Any], Any]] = {}
    has_iqs = False

    for line, row in tqdm(rows, desc="OpenMind rows", disable=not show_progress(progress)):
        has_iqs = has_iqs or IQS_COLUMN in row
        relative = parse_value(row.get("image_path"))
        modality = parse_value(row.get("modality"))
        if not isinstance(relative, str) or not isinstance(modality, str):
            skipped.append(f"line {line}: no image_path or modality")
            continue
        parts = [p for p in relative.replace("\\", "/").split("/") if p]
        if len(parts) < 3 or any(p in (".", "..") for p in parts):
            skipped.append(f"line {line}: image_path {relative!r} is not of the form dsXXXXXX/sub-YY/[ses-ZZ/]…/file")
            continue
        dataset_id, subject_id = parts[0], parts[1]
        session_id = parts[2] if len(parts) > 3 and parts[2].startswith("ses-") else DEFAULT_SESSION
        subject_info = {k: v for k in SUBJECT_INFO_KEYS if (v := parse_value(row.get(k))) is not None}
        image_info = {k: v for k in IMAGE_INFO_KEYS if (v := parse_value(row.get(k))) is not None}
        name = parts[-2][:-5] + parts[-1] if "derived_from" in image_info else parts[-1]

        combos = iqs.setdefault(dataset_id, {})
        combo = (modality, image_info.get("derived_from"))
        score = parse_value(row.get(IQS_COLUMN))
        if not isinstance(score, (int, float)) or isinstance(score, bool):
            score = None
        if combos.get(combo) is None:
            combos[combo] = score

        image_path = str(images_dir.joinpath(*parts))
        if not os.path.isfile(image_path):
            missing.append(MissingFile("image", line, image_path))
            continue
        masks = {}
        for kind, column in (("anatomy_mask", "anat_mask_path"), ("anonymization_mask", "anon_mask_path")):
            mask_relative = parse_value(row.get(column))
            masks[kind] = None
            if isinstance(mask_relative, str):
                mask_path = str(images_dir.joinpath(*[p for p in mask_relative.replace("\\", "/").split("/") if p]))
                if os.path.isfile(mask_path):
                    masks[kind] = mask_path
                else:
                    missing.append(MissingFile(kind, line, mask_path))

        dataset = collection.datasets.setdefault(
            dataset_id, Dataset(dataset_index=dataset_id, name=None, dataset_info={})
        )
        subject = dataset.subjects.get(subject_id)
        if subject is None:
            subject = dataset.subjects[subject_id] = Subject(subject_id=subject_id, subject_info=subject_info)
        else:
            for key, value in subject_info.items():
                subject.subject_info.setdefault(key, value)
        session = subject.sessions.setdefault(session_id, Session(session_id=session_id))
        if any(img.name == name for img in session.images):
            skipped.append(f"line {line}: image name {name!r} repeats in {dataset_id}/{subject_id}/{session_id}")
            continue
        session.images.append(
            Image(
                name=name,
                image_path=image_path,
                modality=modality,
                image_info=image_info,
                associated_masks=AssociatedMasks(**masks),
            )
        )

    if has_iqs:
        for dataset_id, dataset in collection.datasets.items():
            dataset.dataset_info[IQS_COLUMN] = [
                {"modality": modality, "derived_from": derived_from, IQS_COLUMN: score}
                for (modality, derived_from), score in iqs.get(dataset_id, {}).items()
            ]
    else:
        logger.warning("%s has no %s column: the collection gets no IQS tables.", csv_path, IQS_COLUMN)
    return collection, missing, skipped


def convert_openmind(openmind_root_dir: str | os.PathLike[str], progress: bool = True) -> ConversionResult:
    """Build the OpenMind collection and write ``$nnssl_raw/Dataset745_OpenMind/pretrain_data.json``."""
    out_dir = raw_folder() / OPENMIND_DATASET_NAME
    collection, missing, skipped = build_openmind_collection(openmind_root_dir, progress=progress)
    if collection.num_images() == 0:
        raise ValueError(
            f"None of the images listed in {Path(openmind_root_dir) / METADATA_CSV} exist under "
            f"{Path(openmind_root_dir) / IMAGES_FOLDER} ({len(missing)} missing, {len(skipped)} malformed rows); "
            f"nothing was written. Is --openmind_root_dir the top level of the OpenMind download?"
        )
    json_path = out_dir / "pretrain_data.json"
    collection.save(json_path, relative_paths=True)
    result = ConversionResult(collection=collection, json_path=json_path, missing=missing, skipped_rows=skipped)

    missing_list = out_dir / MISSING_LIST_NAME
    if missing:
        missing_list.write_text("".join(f"{m.kind}\t{m.csv_line}\t{m.path}\n" for m in missing), encoding="utf-8")
        result.missing_list_path = missing_list
        images = sum(m.kind == "image" for m in missing)
        logger.warning(
            "%d image file(s) named in the CSV do not exist and were skipped, and %d mask file(s) do not exist and "
            "were dropped from their images; all are listed in %s",
            images,
            len(missing) - images,
            missing_list,
        )
    elif missing_list.exists():
        missing_list.unlink()
    if skipped:
        logger.warning(
            "%d CSV row(s) were skipped: %s%s", len(skipped), "; ".join(skipped[:5]), " ..." if len(skipped) > 5 else ""
        )
    logger.info("Wrote %s: %d images in %d datasets.", json_path, collection.num_images(), len(collection.datasets))
    return result
