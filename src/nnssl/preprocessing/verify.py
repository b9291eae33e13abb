"""Verification of a preprocessed configuration: decode every stored case, list the damaged ones, redo them.

``nnssl_preprocess`` skips a case whose files exist (:func:`nnssl.data.case_store.case_is_complete`), so a case
damaged later (flipped bytes on disk, a truncated copy) is reported "already done" and only fails in training.
:func:`verify_configuration` runs :func:`nnssl.data.case_store.verify_case` on every case of the raw collection
that is stored for the configuration (checksum recorded at writing, every chunk decoded, finite image values) and
writes ``<plans>_<config>/verification_failures.json`` (``[{unique_id, path, problems}]``, empty when all is well).
With ``redo`` the damaged cases are deleted and preprocessed again (:func:`preprocess_configuration` redoes
missing cases and refreshes ``valid_imgs.json`` and the configuration's collection).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnssl.data.case_store import MASK_SUFFIXES, case_is_complete, data_path, mask_path, properties_path, verify_case
from nnssl.data.collection import Collection
from nnssl.parallel import map_unordered
from nnssl.paths import preprocessed_folder, raw_folder, resolve_dataset_name
from nnssl.serialization import save_json

logger = logging.getLogger(__name__)

FAILURES_FILE = "verification_failures.json"


@dataclass
class VerificationReport:
    """What one configuration's verification found (and redid)."""

    dataset_name: str
    configuration: str
    num_cases: int = 0
    num_verified: int = 0
    num_not_stored: int = 0
    damaged: list[dict[str, Any]] = field(default_factory=list)
    num_redone: int = 0
    still_damaged: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _verify_one(task: tuple[str, str]) -> dict[str, Any]:
    unique_id, stem = task
    return {"unique_id": unique_id, "path": str(data_path(stem)), "problems": verify_case(stem)}


def _crashed(task: tuple[str, str], reason: str) -> dict[str, Any]:
    return {"unique_id": task[0], "path": str(data_path(task[1])), "problems": [reason]}


def _delete_case(stem: Path) -> None:
    """Remove a case's files, properties first (so that an interruption leaves it incomplete, never half-valid)."""
    properties_path(stem).unlink(missing_ok=True)
    data_path(stem).unlink(missing_ok=True)
    for kind in MASK_SUFFIXES:
        mask_path(stem, kind).unlink(missing_ok=True)


def _verify(tasks: list[tuple[str, str]], num_processes: int) -> list[dict[str, Any]]:
    results = map_unordered(_verify_one, tasks, num_processes, _crashed)
    return sorted((r for r in results if r["problems"]), key=lambda r: r["unique_id"])


def verify_configuration(
    dataset_name_or_id: str | int,
    configuration: str,
    plans_name: str = "nnsslPlans",
    num_processes: int = 4,
    redo: bool = False,
    progress: bool = True,
) -> VerificationReport:
    """Verify every stored case of one configuration; see the module docstring."""
    from nnssl.planning.plans import Plan
    from nnssl.preprocessing.api import COLLECTION_FILE, preprocess_configuration

    start = time.perf_counter()
    name = resolve_dataset_name(dataset_name_or_id)
    dataset_dir = preprocessed_folder() / name
    config_plan = Plan.load(dataset_dir / f"{plans_name}.json").configuration(configuration)
    out_dir = dataset_dir / config_plan.data_identifier
    collection_file = raw_folder() / name / COLLECTION_FILE
    if not collection_file.is_file():
        raise FileNotFoundError(f"{collection_file} does not exist; every raw dataset needs a {COLLECTION_FILE}.")
    images = list(Collection.load(collection_file).iter_images())
    report = VerificationReport(name, configuration, num_cases=len(images))
    tasks = []
    for image in images:
        stem = out_dir / image.relative_case_path
        if case_is_complete(stem):
            tasks.append((image.unique_id, str(stem)))
        else:
            report.num_not_stored += 1
    report.num_verified = len(tasks)
    report.damaged = _verify(tasks, num_processes)
    if redo and report.damaged:
        for record in report.damaged:
            _delete_case(Path(record["path"][: -len(".b2nd")]))
        preprocess_configuration(name, configuration, plans_name, num_processes, progress=progress)
        again = [(r["unique_id"], r["path"][: -len(".b2nd")]) for r in report.damaged]
        report.still_damaged = _verify([t for t in again if case_is_complete(t[1])], num_processes)
        failed = ["could not be redone; see preprocessing_failures.json"]
        report.still_damaged += [
            {"unique_id": u, "path": str(data_path(s)), "problems": failed} for u, s in again if not case_is_complete(s)
        ]
        report.num_redone = len(report.damaged) - len(report.still_damaged)
    remaining = report.still_damaged if redo else report.damaged
    save_json(remaining, out_dir / FAILURES_FILE)
    report.seconds = time.perf_counter() - start
    _log_report(report, out_dir / FAILURES_FILE, redo)
    return report


def _log_report(report: VerificationReport, failures_file: Path, redo: bool) -> None:
    logger.info(
        "%s %s: %d of %d cases stored and verified (%d not stored), %d damaged%s in %.1f s",
        report.dataset_name, report.configuration, report.num_verified, report.num_cases, report.num_not_stored,
        len(report.damaged), f", {report.num_redone} redone" if redo else "", report.seconds,
    )  # fmt: skip
    remaining = report.still_damaged if redo else report.damaged
    if remaining:
        lines = "\n".join(f"  {r['unique_id']} ({r['path']}): {'; '.join(r['problems'])}" for r in remaining)
        hint = "" if redo else " Redo them with --redo."
        logger.warning("%d damaged case(s), listed in %s:%s\n%s", len(remaining), failures_file, hint, lines)
