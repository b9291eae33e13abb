"""Rebuild the demo registration pair's tissue label maps (``src/nnssl/assets/demo/labels/*_tissue.nii.gz``).

Two real, different brains with independent tissue labels (grey matter 1, white matter 2):

* ICBM152 2009a template (nilearn): the template's own grey- and white-matter probability maps
  (``mni_icbm152_{gm,wm}_tal_nlin_sym_09a_converted.nii.gz``, same grid): tissue where ``p_gm + p_wm >= 0.5``,
  grey matter where ``p_gm >= p_wm``, else white matter.
* The ITK examples' subject (``KmeansTest_T1UCharRaw``, 2x2x3 mm, LSA): its k-means tissue segmentation
  (``KmeansTest_T1KmeansPrelimSegmentation``, classes 0-6 by intensity; inside the shipped skull-strip mask
  ``KmeansTest_T1RawSkullStrip`` the brain classes are 4, 5, 6 = CSF, grey and white matter): 5 -> 1, 6 -> 2.

Usage (files as data.md says how to get them without installing the packages)::

    python scripts/make_demo_tissue_labels.py ICBM_GM.nii.gz ICBM_WM.nii.gz KMEANS_SEG.nii.gz SKULLSTRIP.nii.gz OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np


def icbm_tissue(gm_path: str, wm_path: str) -> nib.Nifti1Image:
    gm_image = nib.load(gm_path)
    gm = np.asarray(gm_image.dataobj, dtype=np.float32)
    wm = np.asarray(nib.load(wm_path).dataobj, dtype=np.float32)
    if gm.max() > 1.5:  # stored as 0-255 or 0-100 in some releases
        scale = 255.0 if gm.max() > 100 else 100.0
        gm, wm = gm / scale, wm / scale
    label = np.zeros(gm.shape, dtype=np.uint8)
    tissue = gm + wm >= 0.5
    label[tissue & (gm >= wm)] = 1
    label[tissue & (gm < wm)] = 2
    return nib.Nifti1Image(label, gm_image.affine)


def kmeans_tissue(segmentation_path: str, skull_strip_path: str) -> nib.Nifti1Image:
    seg_image = nib.load(segmentation_path)
    seg = np.asarray(seg_image.dataobj)
    brain = np.asarray(nib.load(skull_strip_path).dataobj) > 0
    label = np.zeros(seg.shape, dtype=np.uint8)
    label[brain & (seg == 5)] = 1
    label[brain & (seg == 6)] = 2
    return nib.Nifti1Image(label, seg_image.affine)


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        sys.stderr.write(__doc__ or "")
        return 2
    gm, wm, seg, strip, out = argv
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(icbm_tissue(gm, wm), str(folder / "icbm152_tissue.nii.gz"))
    nib.save(kmeans_tissue(seg, strip), str(folder / "kmeans_subject_tissue.nii.gz"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
