"""Rebuild the demo evaluation set's label maps (``src/nnssl/assets/demo/labels/``) from their sources.

The AAL atlas (Tzourio-Mazoyer et al. 2002, NeuroImage 15:273) was drawn on the Colin27 single-subject brain
(``ch2bet``); Debian's ``mricron-data`` ships both on the same 181x217x181 1 mm MNI grid. Its 116 regions are
merged into six lobe-level classes (:data:`LOBES`). For the ICBM152 2009a template (nilearn) the same atlas is
looked up through the shared MNI world coordinates (nearest neighbour) and kept inside the template's brain
(T1 > 0): an approximation (two different brains in one space), which is why the demo trains the probe on ICBM152
and tests it on Colin27, whose labels are exact.

Usage (the files as data.md says how to get them without installing the packages)::

    python scripts/make_demo_labels.py AAL.nii.gz AAL.txt ch2bet.nii.gz icbm152_t1.nii.gz OUT_FOLDER
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

#: class value -> (class name, AAL region-name prefixes)
LOBES: dict[int, tuple[str, tuple[str, ...]]] = {
    1: (
        "frontal",
        ("Precentral", "Frontal_", "Rolandic_Oper", "Supp_Motor_Area", "Olfactory", "Rectus", "Paracentral_Lobule"),
    ),
    2: ("parietal", ("Postcentral", "Parietal_", "SupraMarginal", "Angular", "Precuneus")),
    3: ("temporal", ("Temporal_", "Heschl", "Fusiform", "Hippocampus", "ParaHippocampal", "Amygdala")),
    4: ("occipital", ("Calcarine", "Cuneus", "Lingual", "Occipital_")),
    5: ("deep_grey_and_limbic", ("Caudate", "Putamen", "Pallidum", "Thalamus", "Insula", "Cingulum_")),
    6: ("cerebellum", ("Cerebelum_", "Vermis_")),
}


def lobe_lookup(aal_names: dict[int, str]) -> np.ndarray:
    """A 256-entry table AAL value -> lobe class (0: unlabelled); every AAL region must map to one class."""
    table = np.zeros(256, dtype=np.uint8)
    for value, name in aal_names.items():
        matches = [c for c, (_, prefixes) in LOBES.items() if name.startswith(prefixes)]
        if len(matches) != 1:
            raise ValueError(f"AAL region {name} maps to classes {matches}; expected exactly one")
        table[value] = matches[0]
    return table


def main(aal: str, names: str, colin: str, icbm: str, out: str) -> None:
    aal_names = {int(v): n for v, n, *_ in (line.split() for line in Path(names).read_text().splitlines() if line)}
    table = lobe_lookup(aal_names)
    atlas = nib.load(aal)
    atlas_lobes = table[np.asarray(atlas.dataobj).astype(np.int64)]
    colin_image = nib.load(colin)
    if colin_image.shape != atlas.shape or not np.allclose(colin_image.affine, atlas.affine):
        raise ValueError("AAL and ch2bet are expected on the same grid")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(atlas_lobes, colin_image.affine), out_dir / "colin27_lobes.nii.gz")
    template = nib.load(icbm)
    ijk = np.indices(template.shape[:3]).reshape(3, -1)
    world = template.affine[:3, :3] @ ijk + template.affine[:3, 3:4]
    inverse = np.linalg.inv(atlas.affine)
    src = np.rint(inverse[:3, :3] @ world + inverse[:3, 3:4]).astype(np.int64)
    inside = np.all((src >= 0) & (src < np.array(atlas.shape)[:, None]), axis=0)
    labels = np.zeros(ijk.shape[1], dtype=np.uint8)
    labels[inside] = atlas_lobes[src[0, inside], src[1, inside], src[2, inside]]
    labels = labels.reshape(template.shape[:3])
    labels[np.asarray(template.dataobj) <= 0] = 0
    nib.save(nib.Nifti1Image(labels, template.affine), out_dir / "icbm152_lobes.nii.gz")


if __name__ == "__main__":
    main(*sys.argv[1:6])
