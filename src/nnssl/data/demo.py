"""The demo collection: real MR and CT volumes shipped inside the package (see ``assets/demo/NOTICE.md``).

:func:`write_demo_dataset` copies them into ``$nnssl_raw/Dataset001_Demo/`` (or another raw root) and
writes a ready ``pretrain_data.json`` with ``$nnssl_raw`` relative paths, five subjects in five
datasets, one of them with an anatomy mask (its skull-strip label map turned into a 0/1 mask, 1 = brain).
The result is a normal raw dataset: every command of the pipeline runs on it unchanged.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import SimpleITK as sitk

from nnssl.data.collection import Collection
from nnssl.paths import raw_folder

logger = logging.getLogger(__name__)

DEMO_DATASET_NAME = "Dataset001_Demo"
DEMO_DATASET_ID = 1


@dataclass(frozen=True)
class DemoVolume:
    """One shipped volume and where it goes in the demo collection."""

    dataset_index: str
    dataset_name: str
    subject_id: str
    file_name: str
    modality: str
    anatomy_mask: str | None = None


ANATOMY_MASK_NAME = "brain_mask.nii.gz"


def _write_binary_mask(label_map: Path, destination: Path) -> None:
    """Write ``label_map > 0`` as a uint8 0/1 mask on the same grid (the shipped skull-strip is a tissue label map)."""
    labels = sitk.ReadImage(str(label_map))
    sitk.WriteImage(sitk.Cast(labels > 0, sitk.sitkUInt8), str(destination), useCompression=True)


DEMO_VOLUMES: tuple[DemoVolume, ...] = (
    DemoVolume(
        "1", "ITK_KmeansTest", "sub-01", "KmeansTest_T1UCharRaw.nii.gz", "T1w", "KmeansTest_T1RawSkullStrip.nii.gz"
    ),
    DemoVolume("2", "nibabel_anatomical", "sub-01", "anatomical.nii", "T1w"),
    DemoVolume("3", "Colin27", "sub-01", "ch2bet.nii.gz", "T1w"),
    DemoVolume("4", "ICBM152_2009a", "sub-01", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", "T1w"),
    DemoVolume("5", "TotalSegmentator_CT_atlas", "sub-01", "ct_brain_atlas_1mm.nii.gz", "CT"),
)


def demo_asset(file_name: str) -> Path:
    """Path of a shipped demo file."""
    path = Path(str(resources.files("nnssl") / "assets" / "demo" / file_name))
    if not path.is_file():
        raise FileNotFoundError(f"Demo file {path} is missing: the nnssl installation is incomplete; reinstall it.")
    return path


def _image_path(raw_root: Path, relative: str, use_env_var: bool) -> str:
    return f"$nnssl_raw/{relative}" if use_env_var else str(raw_root / relative)


def write_demo_dataset(raw_root: Path | None = None, dataset_name: str = DEMO_DATASET_NAME) -> Path:
    """Copy the demo volumes under ``raw_root/dataset_name`` and write its ``pretrain_data.json``.

    ``raw_root`` defaults to ``$nnssl_raw``; in that case the paths in the JSON are written as
    ``$nnssl_raw/...``. Existing files are overwritten, so the call is idempotent. Returns the JSON path.
    """
    use_env_var = raw_root is None
    root = raw_folder() if raw_root is None else Path(raw_root)
    dataset_dir = root / dataset_name
    datasets: dict[str, dict] = {}
    for volume in DEMO_VOLUMES:
        folder = Path(dataset_name) / "images" / volume.dataset_name / volume.subject_id / "ses-DEFAULT"
        (root / folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(demo_asset(volume.file_name), root / folder / volume.file_name)
        masks = None
        if volume.anatomy_mask is not None:
            _write_binary_mask(demo_asset(volume.anatomy_mask), root / folder / ANATOMY_MASK_NAME)
            masks = {
                "anatomy_mask": _image_path(root, f"{folder.as_posix()}/{ANATOMY_MASK_NAME}", use_env_var),
                "anonymization_mask": None,
            }
        image = {
            "name": volume.file_name,
            "image_path": _image_path(root, f"{folder.as_posix()}/{volume.file_name}", use_env_var),
            "modality": volume.modality,
            "image_info": {"source": "nnssl demo data, see assets/demo/NOTICE.md"},
            "associated_masks": masks,
        }
        datasets[volume.dataset_index] = {
            "dataset_index": volume.dataset_index,
            "name": volume.dataset_name,
            "dataset_info": None,
            "subjects": {
                volume.subject_id: {
                    "subject_id": volume.subject_id,
                    "subject_info": None,
                    "sessions": {"ses-DEFAULT": {"session_id": "ses-DEFAULT", "session_info": None, "images": [image]}},
                }
            },
        }
    collection = Collection.from_dict(
        {"collection_index": int(dataset_name[7:10]), "collection_name": dataset_name, "datasets": datasets}
    )
    json_path = dataset_dir / "pretrain_data.json"
    collection.save(json_path, relative_paths=False)
    logger.info("Wrote the demo collection (%d volumes) to %s", len(DEMO_VOLUMES), json_path)
    return json_path
