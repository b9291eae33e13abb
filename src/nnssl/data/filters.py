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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

from nnssl.data.collection import Collection, IndependentImage

logger = logging.getLogger(__name__)

IQS_TABLE_KEY = "image_quality_score"


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
