"""The labelled evaluation set: a small JSON naming images, label maps, class names and a train/test split.

Format (paths relative to the JSON file's folder, absolute, or with ``$nnssl_raw``-style variables)::

    {
      "name": "demo_brain_lobes",
      "description": "free text",
      "labels": {"background": 0, "frontal": 1, "parietal": 2},
      "classes": ["healthy", "lesion"],
      "cases": [
        {"id": "icbm152", "image": "icbm152_t1.nii.gz", "label": "icbm152_lobes.nii.gz", "split": "train",
         "modality": "T1w", "class": "healthy"},
        {"id": "colin27", "image": "ch2bet.nii.gz", "label": "colin27_lobes.nii.gz", "split": "test"}
      ],
      "pairs": [{"fixed": "colin27", "moving": "icbm152", "affine": false}]
    }

``labels`` (nnU-Net's dataset.json convention: name -> value, background 0) is needed for the dense probe;
``classes`` plus a ``class`` per case for the classification probes. ``split`` is ``train`` or ``test``; the dense
probe trains on the labelled ``train`` cases and reports Dice per label on the labelled ``test`` cases.
``modality`` selects the normalisation like in ``pretrain_data.json``; ``mask`` (optional, on the image's grid) zeroes
the image outside it before preprocessing (e.g. a brain mask). ``pairs`` (optional) name labelled cases to register
(moving onto fixed, :mod:`nnssl.registration`; ``affine`` asks for an affine pre-alignment first): a set with pairs
and no probe task is a registration set (documentation/registration.md); ``split`` may then be left out.
:func:`load_eval_set` checks everything (files exist, label maps and masks on their image's grid, values among
``labels``, pair ids) before any work and names each problem with its JSON location.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Name of the evaluation set shipped with nnssl (real volumes and label maps, NOTICE in the assets folder).
DEMO_EVAL_SET = "demo"
#: Name of the registration pair shipped with nnssl (two real brains with independent tissue labels).
DEMO_REGISTRATION_SET = "demo_registration"
SPLITS = ("train", "test")


class EvalSetError(ValueError):
    """The evaluation-set JSON cannot be used; the message lists every problem with its location."""

    def __init__(self, problems: list[str], source: str | os.PathLike[str]) -> None:
        self.problems = problems
        text = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the evaluation set:\n{text}")


@dataclass(frozen=True)
class EvalCase:
    """One image of the evaluation set (absolute paths)."""

    id: str
    image: str
    split: str
    label: str | None = None
    modality: str | None = None
    cls: str | None = None
    mask: str | None = None


@dataclass(frozen=True)
class EvalPair:
    """Register ``moving`` onto ``fixed`` (case ids), after an affine pre-alignment when ``affine``."""

    fixed: str
    moving: str
    affine: bool = False


@dataclass
class EvalSet:
    """A validated evaluation set (see the module docstring)."""

    name: str
    cases: list[EvalCase]
    labels: dict[str, int] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    source: str = ""
    pairs: list[EvalPair] = field(default_factory=list)

    def case(self, case_id: str) -> EvalCase:
        return next(c for c in self.cases if c.id == case_id)

    def split(self, which: str, labelled: bool = False, classified: bool = False) -> list[EvalCase]:
        return [
            c
            for c in self.cases
            if c.split == which and (not labelled or c.label) and (not classified or c.cls is not None)
        ]

    @property
    def num_classes(self) -> int:
        """Classes of the dense probe: the largest label value + 1."""
        return max(self.labels.values()) + 1 if self.labels else 0

    def label_name(self, value: int) -> str:
        for name, v in self.labels.items():
            if v == value:
                return name
        return str(value)

    @property
    def has_dense_task(self) -> bool:
        return (
            bool(self.labels) and bool(self.split("train", labelled=True)) and bool(self.split("test", labelled=True))
        )

    @property
    def has_classification_task(self) -> bool:
        return (
            bool(self.classes)
            and bool(self.split("train", classified=True))
            and bool(self.split("test", classified=True))
        )


def demo_eval_set_path() -> Path:
    """The shipped evaluation set (``nnssl/assets/demo/eval_set.json``)."""
    return Path(__file__).resolve().parents[1] / "assets" / "demo" / "eval_set.json"


def demo_registration_set_path() -> Path:
    """The shipped registration pair (``nnssl/assets/demo/registration_set.json``)."""
    return Path(__file__).resolve().parents[1] / "assets" / "demo" / "registration_set.json"


def resolve_eval_set_path(value: str | os.PathLike[str]) -> Path:
    """``"demo"`` -> the shipped set, ``"demo_registration"`` -> the shipped pair; anything else is a path
    (variables and ``~`` expanded)."""
    if str(value) == DEMO_EVAL_SET:
        return demo_eval_set_path()
    if str(value) == DEMO_REGISTRATION_SET:
        return demo_registration_set_path()
    return Path(os.path.expanduser(os.path.expandvars(str(value))))


def _resolve(base: Path, value: str) -> Path:
    path = Path(os.path.expanduser(os.path.expandvars(value)))
    return path if path.is_absolute() else base / path


def _check_grid(image: Path, label: Path, where: str, problems: list[str]) -> None:
    from nnssl.imageio import read_header

    try:
        a, b = read_header(image), read_header(label)
    except Exception as err:  # noqa: BLE001 - every unreadable file is reported, the others still checked
        problems.append(f"{where}: cannot read the header: {err}")
        return
    same_shape = tuple(a.shape) == tuple(b.shape)
    same_spacing = all(abs(float(x) - float(y)) <= 1e-3 * max(1.0, abs(float(x))) for x, y in zip(a.spacing, b.spacing))
    if not (same_shape and same_spacing):
        problems.append(
            f"{where}: the label map {label} (shape {tuple(b.shape)}, spacing {tuple(b.spacing)}) is not on the grid "
            f"of its image {image} (shape {tuple(a.shape)}, spacing {tuple(a.spacing)}); resample it onto the image."
        )


def load_eval_set(path: str | os.PathLike[str], check_files: bool = True) -> EvalSet:
    """Read and validate an evaluation-set JSON (``"demo"``: the shipped one); raises :class:`EvalSetError`."""
    source = resolve_eval_set_path(path)
    try:
        data = json.loads(source.read_text())
    except FileNotFoundError:
        raise EvalSetError([f"the file does not exist (eval.set / --eval_set = {str(path)!r})"], source) from None
    except json.JSONDecodeError as err:
        raise EvalSetError([f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"], source) from None
    return parse_eval_set(data, source, check_files=check_files)


def parse_eval_set(data: Any, source: str | os.PathLike[str], check_files: bool = True) -> EvalSet:
    """Validate a parsed evaluation-set dict; relative paths are relative to ``source``'s folder."""
    problems: list[str] = []
    base = Path(source).parent
    if not isinstance(data, Mapping):
        raise EvalSetError([f"the top level must be an object, found {type(data).__name__}"], source)
    unknown = sorted(set(data) - {"name", "description", "labels", "classes", "cases", "pairs"})
    if unknown:
        problems.append(f"unknown top-level keys {unknown} (allowed: name, description, labels, classes, cases, pairs)")
    labels_raw = data.get("labels", {})
    labels: dict[str, int] = {}
    if not isinstance(labels_raw, Mapping):
        problems.append('labels: must be an object name -> integer value, e.g. {"background": 0, "tumor": 1}')
    else:
        for name, value in labels_raw.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 127:
                problems.append(f"labels.{name}: {value!r} is not an integer label value in 0..127")
            else:
                labels[str(name)] = int(value)
        if labels and 0 not in labels.values():
            problems.append('labels: no entry has value 0 (the background); add e.g. "background": 0')
        if len(set(labels.values())) != len(labels):
            problems.append(f"labels: values repeat ({sorted(labels.values())}); each class needs its own value")
    classes_raw = data.get("classes", [])
    if not isinstance(classes_raw, list) or not all(isinstance(c, str) for c in classes_raw):
        problems.append("classes: must be a list of class names (strings)")
        classes_raw = []
    classes = list(classes_raw)
    cases_raw = data.get("cases")
    cases: list[EvalCase] = []
    if not isinstance(cases_raw, list) or not cases_raw:
        problems.append("cases: must be a non-empty list of {id, image, split[, label, modality, class]}")
        cases_raw = []
    ids: set[str] = set()
    for index, case in enumerate(cases_raw):
        where = f"cases[{index}]"
        if not isinstance(case, Mapping):
            problems.append(f"{where}: must be an object")
            continue
        extra = sorted(set(case) - {"id", "image", "label", "split", "modality", "class", "mask"})
        if extra:
            problems.append(f"{where}: unknown keys {extra} (allowed: id, image, label, split, modality, class, mask)")
        case_id = str(case.get("id", ""))
        if not case_id:
            problems.append(f"{where}.id: missing")
        elif case_id in ids:
            problems.append(f"{where}.id: {case_id!r} is used twice")
        ids.add(case_id)
        split = case.get("split", "test" if "pairs" in data else None)
        if split not in SPLITS:
            problems.append(f"{where}.split: {split!r} must be one of {', '.join(SPLITS)}")
        image = case.get("image")
        if not isinstance(image, str) or not image:
            problems.append(f"{where}.image: missing")
            continue
        image_path = _resolve(base, image)
        if check_files and not image_path.is_file():
            problems.append(f"{where}.image: {image_path} does not exist")
        label = case.get("label")
        label_path = None
        if label is not None:
            label_path = _resolve(base, str(label))
            if not labels:
                problems.append(f"{where}.label: a label map needs the top-level 'labels' (name -> value)")
            if check_files and not label_path.is_file():
                problems.append(f"{where}.label: {label_path} does not exist")
            elif check_files and image_path.is_file():
                _check_grid(image_path, label_path, where, problems)
        mask = case.get("mask")
        mask_path = None
        if mask is not None:
            mask_path = _resolve(base, str(mask))
            if check_files and not mask_path.is_file():
                problems.append(f"{where}.mask: {mask_path} does not exist")
            elif check_files and image_path.is_file():
                _check_grid(image_path, mask_path, f"{where}.mask", problems)
        cls = case.get("class")
        if cls is not None and cls not in classes:
            problems.append(f"{where}.class: {cls!r} is not among 'classes' {classes}")
        cases.append(
            EvalCase(
                id=case_id,
                image=str(image_path),
                split=str(split),
                label=str(label_path) if label_path is not None else None,
                modality=case.get("modality"),
                cls=cls,
                mask=str(mask_path) if mask_path is not None else None,
            )
        )
    pairs = _parse_pairs(data.get("pairs", []), {c.id: c for c in cases}, problems)
    result = EvalSet(
        name=str(data.get("name", Path(source).stem)),
        cases=cases,
        labels=labels,
        classes=classes,
        source=str(source),
        pairs=pairs,
    )
    if not problems and not (result.has_dense_task or result.has_classification_task or result.pairs):
        problems.append(
            "no task: the dense probe needs 'labels' and labelled cases in both splits (train and test); the "
            "classification probes need 'classes' and cases with a 'class' in both splits; registration needs "
            "'pairs' of labelled cases"
        )
    if problems:
        raise EvalSetError(problems, source)
    return result


def _parse_pairs(raw: Any, cases: Mapping[str, EvalCase], problems: list[str]) -> list[EvalPair]:
    """``pairs`` entries -> :class:`EvalPair` (both ids labelled cases of the set, different, booleans for affine)."""
    if not isinstance(raw, list):
        problems.append('pairs: must be a list of {"fixed": id, "moving": id[, "affine": true]}')
        return []
    pairs = []
    for index, pair in enumerate(raw):
        where = f"pairs[{index}]"
        if not isinstance(pair, Mapping):
            problems.append(f"{where}: must be an object {{fixed, moving[, affine]}}")
            continue
        extra = sorted(set(pair) - {"fixed", "moving", "affine"})
        if extra:
            problems.append(f"{where}: unknown keys {extra} (allowed: fixed, moving, affine)")
        ok = True
        for role in ("fixed", "moving"):
            case_id = pair.get(role)
            if case_id not in cases:
                problems.append(f"{where}.{role}: {case_id!r} is not a case id (ids: {sorted(cases)})")
                ok = False
            elif not cases[case_id].label:
                problems.append(f"{where}.{role}: case {case_id!r} has no label map (Dice needs one)")
                ok = False
        if ok and pair["fixed"] == pair["moving"]:
            problems.append(f"{where}: fixed and moving are the same case {pair['fixed']!r}")
            ok = False
        affine = pair.get("affine", False)
        if not isinstance(affine, bool):
            problems.append(f"{where}.affine: {affine!r} must be true or false")
            ok = False
        if ok:
            pairs.append(EvalPair(fixed=str(pair["fixed"]), moving=str(pair["moving"]), affine=affine))
    return pairs


__all__ = [
    "DEMO_EVAL_SET",
    "DEMO_REGISTRATION_SET",
    "EvalPair",
    "EvalCase",
    "EvalSet",
    "EvalSetError",
    "demo_eval_set_path",
    "demo_registration_set_path",
    "load_eval_set",
    "parse_eval_set",
    "resolve_eval_set_path",
]
