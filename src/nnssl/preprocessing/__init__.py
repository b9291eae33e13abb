"""Preprocessing of raw images into blosc2 cases.

Modules: ``cropping`` (crop to nonzero), ``normalization`` (``NORMALIZERS`` registry), ``resampling``
(``RESAMPLERS`` registry), ``preprocess_case`` (one case on arrays), ``api`` (datasets: parallel, resumable, parts;
``preprocess_dataset``, ``preprocessed_images``). The case files themselves are in :mod:`nnssl.data.case_store`.
"""
