"""Per-image filters for :meth:`nnssl.data.collection.Collection.iter_images` (upstream ``nnsslFilter``).

A filter is any callable ``IndependentImage -> bool``; an image is kept when every filter returns True.

- :class:`ModalityFilter` keeps images whose modality is in a given set (upstream's T1w/T2w/FLAIR trainers).
- :class:`OpenMindIQSFilter` keeps images whose image-quality score (IQS; OpenMind: 1 = best, 5 = worst) is
  ``<= threshold``. The scores come from each dataset's ``dataset_info["image_quality_score"]`` table, a list of
  ``{"modality", "derived_from", "image_quality_score"}`` rows written by ``nnssl_convert_openmind``; an image's
  row is the one with its dataset, modality and ``image_info["derived_from"]`` (None when absent).
  Unlike upstream the filter copies the table (the collection is not modified, so several filters can be built
  from one collection), and an image without a score (combination missing from the table, score null/NaN, no
  ``image_info``) does not raise: it is dropped by default, because its quality is unknown, or kept with
  ``keep_unknown=True``. The construction logs how many images have no score.

In a run, filters are configuration: ``data.filters`` holds text specifications (:data:`FILTER_SYNTAX`), parsed
when the configuration is validated and built against the preprocessed collection by :func:`build_filters`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from nnssl.data.collection import Collection, IndependentImage

logger = logging.getLogger(__name__)

IQS_TABLE_KEY = "image_quality_score"
ImageFilterFn = Callable[[IndependentImage], bool]


class ModalityFilter:
    """Keep images whose ``modality`` is one of ``valid_modalities`` (exact, case-sensitive match)."""

    def __init__(self, valid_modalities: Iterable[str]) -> None:
        if isinstance(valid_modalities, str):
            valid_modalities = [valid_modalities]
        self.valid_modalities = frozenset(valid_modalities)
        if not self.valid_modalities:
            raise ValueError("ModalityFilter needs at least one modality, e.g. ModalityFilter(['T1w', 'T2w']).")

    def __call__(self, image: IndependentImage) -> bool:
        return image.modality in self.valid_modalities

    def __repr__(self) -> str:
        return f"ModalityFilter({sorted(self.valid_modalities)})"


def _derived_from(info: Any) -> str | int | float | bool | None:
    """The ``derived_from`` entry of an ``image_info`` dict or IQS row, made hashable (None when absent)."""
    if not isinstance(info, dict):
        return None
    value = info.get("derived_from")
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def _score(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def read_iqs_table(collection: Collection) -> dict[tuple[str, str, Any], float | None]:
    """``(dataset_index, modality, derived_from) -> score`` from every dataset's IQS table (first row wins).

    A malformed table raises a ValueError that names the dataset and the row.
    """
    table: dict[tuple[str, str, Any], float | None] = {}
    for key, dataset in collection.datasets.items():
        rows = (dataset.dataset_info or {}).get(IQS_TABLE_KEY)
        if rows is None:
            continue
        if not isinstance(rows, list):
            raise ValueError(
                f'datasets["{key}"].dataset_info["{IQS_TABLE_KEY}"] must be a list of '
                f'{{"modality", "derived_from", "image_quality_score"}} rows; rerun nnssl_convert_openmind.'
            )
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or "modality" not in row or IQS_TABLE_KEY not in row:
                raise ValueError(
                    f'datasets["{key}"].dataset_info["{IQS_TABLE_KEY}"][{i}] must be an object with keys '
                    f'"modality", "derived_from" and "{IQS_TABLE_KEY}"; got {row!r}.'
                )
            combo = (str(dataset.dataset_index), str(row["modality"]), _derived_from(row))
            table.setdefault(combo, _score(row[IQS_TABLE_KEY]))
    return table


class OpenMindIQSFilter:
    """Keep images with image-quality score ``<= threshold`` (see the module docstring for unknown scores)."""

    def __init__(self, collection: Collection, threshold: float, keep_unknown: bool = False) -> None:
        self.threshold = float(threshold)
        self.keep_unknown = keep_unknown
        self.scores = read_iqs_table(collection)
        unknown = total = 0
        for dataset in collection.datasets.values():
            for subject in dataset.subjects.values():
                for session in subject.sessions.values():
                    for img in session.images:
                        total += 1
                        key = (str(dataset.dataset_index), img.modality, _derived_from(img.image_info))
                        unknown += self.scores.get(key) is None
        if unknown:
            logger.warning(
                "%d of %d image(s) of collection '%s' have no image-quality score; OpenMindIQSFilter %s them.",
                unknown,
                total,
                collection.collection_name,
                "keeps" if keep_unknown else "drops",
            )

    def score(self, image: IndependentImage) -> float | None:
        """The image's IQS, or None when the table has none for it."""
        return self.scores.get((image.dataset_index, image.modality, _derived_from(image.image_info)))

    def __call__(self, image: IndependentImage) -> bool:
        value = self.score(image)
        if value is None:
            return self.keep_unknown
        return value <= self.threshold

    def __repr__(self) -> str:
        return f"OpenMindIQSFilter(threshold={self.threshold}, keep_unknown={self.keep_unknown})"


# ---------------------------------------------------------------------------------------------------------------
# Filters as configuration (``data.filters``): text specifications, parsed once, built against a collection.

FILTER_SYNTAX = (
    "modality=<m1>|<m2>|... (keep these modalities, e.g. modality=T1w|T2w|FLAIR) or iqs<=<threshold> "
    "(keep OpenMind image-quality score <= threshold, e.g. iqs<=2.5; iqs<=2.5|unknown also keeps unscored images)"
)
_MODALITY = re.compile(r"^\s*modality\s*=\s*(?P<values>.+?)\s*$")
_IQS = re.compile(r"^\s*iqs\s*<=\s*(?P<threshold>[0-9.eE+-]+)\s*(?P<unknown>\|\s*unknown)?\s*$")


class FilterSpecError(ValueError):
    """A ``data.filters`` entry that does not follow :data:`FILTER_SYNTAX`."""


@dataclass(frozen=True)
class FilterSpec:
    """One parsed ``data.filters`` entry: ``kind`` is ``"modality"`` or ``"iqs"``."""

    text: str
    kind: str
    modalities: tuple[str, ...] = ()
    threshold: float | None = None
    keep_unknown: bool = False


def parse_filter_spec(text: str) -> FilterSpec:
    """Parse ``modality=T1w|T2w`` or ``iqs<=2.5`` (``iqs<=2.5|unknown``); anything else is a FilterSpecError."""
    match = _MODALITY.match(text)
    if match:
        modalities = tuple(m.strip() for m in match.group("values").split("|"))
        if not all(modalities):
            raise FilterSpecError(f"'{text}' has an empty modality; use {FILTER_SYNTAX}.")
        return FilterSpec(text=text.strip(), kind="modality", modalities=modalities)
    match = _IQS.match(text)
    if match:
        try:
            threshold = float(match.group("threshold"))
        except ValueError:
            threshold = math.nan
        if not math.isfinite(threshold):
            raise FilterSpecError(f"'{text}' needs a finite number after 'iqs<='; use {FILTER_SYNTAX}.")
        return FilterSpec(
            text=text.strip(), kind="iqs", threshold=threshold, keep_unknown=match.group("unknown") is not None
        )
    raise FilterSpecError(f"'{text}' is not a filter; use {FILTER_SYNTAX}.")


def build_filters(specs: Sequence[str], collection: Collection) -> list[ImageFilterFn]:
    """The filter objects of ``data.filters`` for ``collection`` (the IQS filter reads its score tables).

    An ``iqs`` filter on a collection without any score table is a ValueError: every image would be unscored.
    """
    filters: list[ImageFilterFn] = []
    for text in specs:
        spec = parse_filter_spec(text)
        if spec.kind == "modality":
            filters.append(ModalityFilter(spec.modalities))
            continue
        if not any(IQS_TABLE_KEY in (d.dataset_info or {}) for d in collection.datasets.values()):
            raise ValueError(
                f"data.filters '{spec.text}': collection '{collection.collection_name}' has no image-quality scores "
                f'(no dataset has dataset_info["{IQS_TABLE_KEY}"]); IQS filters work on collections written by '
                "nnssl_convert_openmind. Remove the filter (--set data.filters=) or add the score tables."
            )
        assert spec.threshold is not None
        filters.append(OpenMindIQSFilter(collection, spec.threshold, keep_unknown=spec.keep_unknown))
    return filters


def apply_filters(
    images: Sequence[IndependentImage], filters: Sequence[ImageFilterFn]
) -> tuple[list[IndependentImage], dict[str, int]]:
    """``(kept images, {repr(filter): number of images it removed first})``; filters run in order."""
    kept: list[IndependentImage] = []
    removed = {repr(f): 0 for f in filters}
    for image in images:
        for f in filters:
            if not f(image):
                removed[repr(f)] += 1
                break
        else:
            kept.append(image)
    return kept, removed
