"""Subject-level train/validation split, stored once per dataset in ``splits_final.json``.

The split is drawn at subject level (every image of a subject lands on the same side) from the sorted list
of subject uids with ``random.Random(seed)``, so it is reproducible: ``n_val = min(1000, max(n // 100,
min_val))``, capped so that at least one subject stays in training. With fewer than two subjects there is
nothing to hold out; train and val are then both the full list (a warning says so).

The file is ``{"train": [subject_uid, ...], "val": [...]}`` (upstream's key names), written atomically with
:func:`nnssl.serialization.save_json` and never rewritten once it exists.

Under DDP every rank calls :func:`load_or_create_split`. Only rank 0 writes. Because the content is a pure
function of (subject uids, min_val, seed), the other ranks do not need the file: they compute the same split
in memory. If a ``barrier`` callable is given (e.g. ``torch.distributed.barrier``) every rank waits for rank
0's write and then reads the file, so a split that already existed on disk (possibly from an older subject
list) is what every rank uses.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from nnssl.serialization import load_json, save_json

logger = logging.getLogger(__name__)

SPLIT_FILE = "splits_final.json"
MAX_VAL_SUBJECTS = 1000


def compute_split(subject_uids: Sequence[str], min_val: int = 5, seed: int = 12345) -> dict[str, list[str]]:
    """The deterministic split of ``subject_uids`` (duplicates ignored, order irrelevant)."""
    subjects = sorted(set(subject_uids))
    n = len(subjects)
    if n == 0:
        raise ValueError("Cannot split an empty subject list: no preprocessed images were found for this dataset.")
    if n < 2:
        logger.warning(
            "Only %d subject(s): training and validation both use all of them (validation loss is not held out).", n
        )
        return {"train": list(subjects), "val": list(subjects)}
    n_val = min(MAX_VAL_SUBJECTS, max(n // 100, min_val))
    n_val = max(1, min(n_val, n - 1))
    val = set(random.Random(seed).sample(subjects, n_val))
    return {"train": [s for s in subjects if s not in val], "val": [s for s in subjects if s in val]}


def load_or_create_split(
    preprocessed_dataset_dir: str | os.PathLike[str],
    subject_uids: Sequence[str],
    min_val: int = 5,
    seed: int = 12345,
    rank: int = 0,
    barrier: Callable[[], None] | None = None,
) -> dict[str, list[str]]:
    """Load ``<dir>/splits_final.json`` or create it (rank 0 only, atomically, once).

    An existing file is returned as stored (it is never rewritten); subjects missing from it are reported with
    a warning. See the module docstring for the DDP protocol.
    """
    path = Path(preprocessed_dataset_dir) / SPLIT_FILE
    if not path.is_file():
        if rank == 0:
            split = compute_split(subject_uids, min_val=min_val, seed=seed)
            save_json(split, path)
            logger.info("Wrote %s (%d train, %d val subjects).", path, len(split["train"]), len(split["val"]))
        if barrier is not None:
            barrier()
        elif rank != 0:
            return compute_split(subject_uids, min_val=min_val, seed=seed)
    split = load_json(path)
    if not isinstance(split, dict) or not {"train", "val"} <= set(split):
        raise ValueError(f"{path} must hold {{'train': [...], 'val': [...]}}; delete it to have it recreated.")
    known = set(split["train"]) | set(split["val"])
    unknown = sorted(set(subject_uids) - known)
    if unknown:
        logger.warning(
            "%d subject(s) are in neither split of %s (e.g. %s); they are not used. Delete the file to re-split.",
            len(unknown),
            path,
            unknown[0],
        )
    return {"train": list(split["train"]), "val": list(split["val"])}
