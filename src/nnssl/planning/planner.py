"""Experiment planning: from ``dataset_fingerprint.json`` to ``nnsslPlans.json``.

Rules (upstream nnssl's, see upstream-nnssl.md 3.2):

* median spacing m = per-axis median of the spacings of all readable images (canonical array-axis order);
* ``transpose_forward`` = [argmax(m)] + the remaining axes in ascending order (the coarsest axis first),
  ``transpose_backward`` = its inverse permutation; ``original_median_spacing_after_transp`` = m[transpose_forward];
* configurations ``onemmiso`` (spacing [1, 1, 1]), ``median`` (m[transpose_forward]) and ``noresample`` (None),
  all three always written, patch size [160, 160, 160];
* z-score normalization of every channel over the whole cropped volume (``use_mask_for_norm`` False, CT included),
  as upstream nnssl and nnU-Net's pre-trained fine-tuning; resampling recorded by function name.

Planners are looked up by name in :data:`PLANNERS` (``-pl``); only ``ExperimentPlanner`` exists.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from nnssl.paths import resolve_dataset_name
from nnssl.planning.fingerprint import fingerprint_path
from nnssl.planning.plans import (
    CONFIGURATION_NAMES,
    DEFAULT_PATCH_SIZE,
    DEFAULT_PLANS_NAME,
    ConfigurationPlan,
    Plan,
    PlanError,
    check_storage_precision,
    plans_path,
)
from nnssl.registry import Registry
from nnssl.serialization import load_json

logger = logging.getLogger(__name__)


class ExperimentPlanner:
    """The default planner (upstream name ``ExperimentPlanner``)."""

    image_reader_writer = "SimpleITKIO"
    preprocessor_name = "DefaultPreprocessor"
    patch_size: tuple[int, int, int] = DEFAULT_PATCH_SIZE

    def __init__(
        self, dataset_name_or_id: str | int, plans_name: str | None = None, storage_precision: str = "float32"
    ) -> None:
        self.dataset_name = resolve_dataset_name(dataset_name_or_id)
        self.plans_name = plans_name or DEFAULT_PLANS_NAME
        self.storage_precision = check_storage_precision(storage_precision)

    @staticmethod
    def transpose(median_spacing: list[float]) -> tuple[list[int], list[int]]:
        """(transpose_forward, transpose_backward): the coarsest axis first, the others in ascending order."""
        first = int(np.argmax(median_spacing))
        forward = [first] + [axis for axis in range(len(median_spacing)) if axis != first]
        backward = [int(i) for i in np.argsort(forward)]
        return forward, backward

    def plan_from_fingerprint(self, fingerprint: dict[str, Any], source: str = "fingerprint") -> Plan:
        """The plan for a fingerprint dict (``source`` names it in error messages)."""
        spacings = np.asarray(fingerprint.get("spacings") or [], dtype=float)
        if spacings.ndim != 2 or spacings.shape[0] == 0 or spacings.shape[1] != 3:
            raise PlanError(
                f"{source}: 'spacings' must be a non-empty list of [z, y, x] spacings, got shape "
                f"{list(spacings.shape)}. Recompute it with nnssl_extract_fingerprint -d ID --clean."
            )
        median = [float(s) for s in np.median(spacings, axis=0)]
        forward, backward = self.transpose(median)
        median_after = [median[axis] for axis in forward]
        channels = max((int(img.get("num_channels", 1)) for img in fingerprint.get("images", [])), default=1)
        targets: dict[str, list[float] | None] = {
            "onemmiso": [1.0, 1.0, 1.0],
            "median": median_after,
            "noresample": None,
        }
        configurations = {
            name: ConfigurationPlan(
                data_identifier=f"{self.plans_name}_{name}",
                preprocessor_name=self.preprocessor_name,
                spacing_style=name,
                normalization_schemes=["ZScoreNormalization"] * channels,
                use_mask_for_norm=[False] * channels,
                spacing=targets[name],
                patch_size=list(self.patch_size),
                storage_precision=self.storage_precision,
            )
            for name in CONFIGURATION_NAMES
        }
        return Plan(
            dataset_name=self.dataset_name,
            plans_name=self.plans_name,
            original_median_spacing_after_transp=median_after,
            image_reader_writer=self.image_reader_writer,
            transpose_forward=forward,
            transpose_backward=backward,
            configurations=configurations,
            experiment_planner_used=type(self).__name__,
        )

    def plan_experiment(self) -> Plan:
        """Read the dataset's fingerprint, write ``<plans_name>.json`` (overwriting) and return the plan."""
        source = fingerprint_path(self.dataset_name)
        if not source.is_file():
            raise FileNotFoundError(
                f"No fingerprint at {source}. Run nnssl_extract_fingerprint -d {self.dataset_name} first."
            )
        plan = self.plan_from_fingerprint(load_json(source), source=str(source))
        out: Path = plans_path(self.dataset_name, self.plans_name)
        plan.save(out)
        logger.info(
            "Plans written to %s: median spacing %s, transpose_forward %s",
            out,
            plan.original_median_spacing_after_transp,
            plan.transpose_forward,
        )
        return plan


PLANNERS: Registry[type[ExperimentPlanner]] = Registry("experiment planner")
PLANNERS.add("ExperimentPlanner", ExperimentPlanner)


def plan_experiment_for_dataset(
    dataset_name_or_id: str | int,
    plans_name: str | None = None,
    planner: str = "ExperimentPlanner",
    storage_precision: str = "float32",
) -> Plan:
    """Plan one dataset with the planner named ``planner`` (KeyError with suggestions if unknown).

    ``storage_precision`` is recorded in every configuration: how preprocessing stores images (lossless
    ``float32`` by default; see :class:`nnssl.data.case_store.StoreFormat`).
    """
    return PLANNERS.get(planner)(dataset_name_or_id, plans_name, storage_precision).plan_experiment()
