"""Screening before voxels are read: truncated and corrupt files, header bombs, undeclared channels, float64 values
beyond float32, reader names in messages, binary masks. Every file here is built by the test."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from bad_inputs import header_bomb
from nnssl.imageio import ImageReadError, ReadPolicy, failure_reason, read_header, read_image, read_mask
from nnssl.imageio.integrity import check_file_complete

CUTS = (0.99, 0.9, 0.5, 0.1)


def _volume(dtype=np.int16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(24, 20, 16)) * 100 + 500).astype(dtype)


def _truncate(source: Path, fraction: float, target: Path) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_nifti_is_refused_at_every_cut(tmp_path: Path, dtype, suffix: str) -> None:
    """SimpleITK zero-fills the missing part of a cut NIfTI (and nibabel's EOFError used to fall back to it)."""
    full = tmp_path / f"full{suffix}"
    nib.save(nib.Nifti1Image(_volume(dtype), np.eye(4)), full)
    reference, _ = read_image(full)
    assert reference.shape == (1, 16, 20, 24)
    for fraction in CUTS:
        cut = _truncate(full, fraction, tmp_path / f"cut{int(fraction * 100)}{suffix}")
        for fn in (read_header, read_image, read_mask):
            with pytest.raises(ImageReadError, match="truncated") as info:
                fn(cut)
            assert info.value.path == str(cut)
        # the reason says how much is there: the decompressed (or raw) bytes held, against the bytes promised
        expected = 352 + _volume(dtype).nbytes
        with pytest.raises(ImageReadError, match=f"{expected}"):
            read_image(cut)


def test_truncated_metaimage_is_refused_with_its_real_reason(tmp_path: Path) -> None:
    """SimpleITK refuses these too, but says "No such file or directory"; the screening says what is wrong."""
    image = sitk.GetImageFromArray(_volume())
    for name, compress in (("raw.mha", False), ("zipped.mha", True), ("pair.mhd", False)):
        full = tmp_path / name
        sitk.WriteImage(image, str(full), useCompression=compress)
        data_file = full.with_suffix(".raw") if name.endswith(".mhd") else full
        data = data_file.read_bytes()
        data_file.write_bytes(data[: len(data) // 2])
        for fn in (read_header, read_image):
            with pytest.raises(ImageReadError, match="truncated") as info:
                fn(full)
            assert "No such file" not in info.value.reason


def test_flipped_byte_in_gzip_data_is_refused_only_by_the_thorough_check(tmp_path: Path) -> None:
    full = tmp_path / "full.nii.gz"
    nib.save(nib.Nifti1Image(_volume(), np.eye(4)), full)
    data = bytearray(full.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped = tmp_path / "flipped.nii.gz"
    flipped.write_bytes(bytes(data))
    check_file_complete(flipped, thorough=False)  # the size in the gzip trailer is intact: the quick check passes
    with pytest.raises(ImageReadError, match="corrupt"):
        check_file_complete(flipped, thorough=True)
    with pytest.raises(ImageReadError, match="corrupt"):
        read_image(flipped)


def test_multi_member_and_zero_padded_gzip_are_complete(tmp_path: Path) -> None:
    full = tmp_path / "full.nii.gz"
    nib.save(nib.Nifti1Image(_volume(), np.eye(4)), full)
    raw = gzip.decompress(full.read_bytes())
    members = tmp_path / "members.nii.gz"  # as bgzip / pigz write them, plus zero padding
    members.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]) + bytes(16))
    np.testing.assert_array_equal(read_image(members)[0], read_image(full)[0])
    assert read_header(members).shape == read_header(full).shape


def test_header_bomb_is_refused_before_reading_voxels(tmp_path: Path) -> None:
    bomb = header_bomb(tmp_path / "bomb.nii.gz")
    assert bomb.stat().st_size < 200  # 151 bytes claiming 1500^3 voxels (6.75 GB of int16)
    for fn in (read_header, read_image, read_mask):
        with pytest.raises(ImageReadError, match="more than the limit") as info:
            fn(bomb)
        assert "1500 x 1500 x 1500" in info.value.reason and "3,375,000,000 voxels" in info.value.reason
    # under a higher limit the header passes the size check, and the missing data is found instead
    with pytest.raises(ImageReadError, match="truncated"):
        read_header(bomb, ReadPolicy(max_voxels=4 * 10**9))


def test_size_limit_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "real.nii.gz"
    nib.save(nib.Nifti1Image(_volume(), np.eye(4)), path)
    voxels = 24 * 20 * 16
    assert read_header(path, ReadPolicy(max_voxels=voxels)).shape == (16, 20, 24)
    with pytest.raises(ImageReadError, match=f"limit of {voxels - 1:,} voxels"):
        read_image(path, ReadPolicy(max_voxels=voxels - 1))
    with pytest.raises(ValueError, match="max_voxels"):
        ReadPolicy(max_voxels=0)


def test_vector_mha_is_refused_unless_declared(tmp_path: Path) -> None:
    values = np.random.default_rng(3).random((8, 9, 10, 3)).astype(np.float32)
    path = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.GetImageFromArray(values, isVector=True), str(path))
    for fn in (read_header, read_image):
        with pytest.raises(ImageReadError, match="3 channels per voxel"):
            fn(path)
    image, _ = read_image(path, ReadPolicy(num_channels=3))
    np.testing.assert_array_equal(image, np.moveaxis(values, -1, 0))


def test_float64_beyond_float32_names_the_magnitude(tmp_path: Path) -> None:
    values = np.ones((6, 7, 8))
    values[2, 3, 4] = 1e300
    path = tmp_path / "huge.nii.gz"
    nib.save(nib.Nifti1Image(values, np.eye(4)), path)
    with pytest.raises(ImageReadError, match=r"reach 1e\+300 in magnitude, beyond the float32 range"):
        read_image(path)
    values[2, 3, 4] = 3e38  # still a float32 number: read, not refused
    nib.save(nib.Nifti1Image(values, np.eye(4)), path)
    assert float(read_image(path)[0].max()) == pytest.approx(3e38, rel=1e-6)


def test_reader_names_follow_the_order_they_were_tried(tmp_path: Path) -> None:
    nifti = tmp_path / "junk.nii.gz"
    nifti.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(ImageReadError) as info:
        read_header(nifti)  # NIfTI headers: nibabel first
    reason = info.value.reason
    assert reason.startswith("nibabel refused it (") and "and so did SimpleITK (" in reason
    assert "ImageFileError" in reason.split("and so did")[0]  # nibabel's own error stands next to its name
    other = tmp_path / "junk.mha"
    other.write_bytes(b"not a header")
    with pytest.raises(ImageReadError) as info:
        read_header(other)
    assert info.value.reason.startswith("SimpleITK refused it (") and "and so did nibabel (" in info.value.reason


def test_missing_file_reason_names_the_json_key(tmp_path: Path) -> None:
    missing = tmp_path / "gone_anat.nii.gz"
    with pytest.raises(ImageReadError) as info:
        read_mask(missing)
    assert "image_path" not in info.value.reason
    reason = failure_reason(info.value, "associated_masks.anatomy_mask")
    assert reason.startswith(f"anatomy mask {missing}: the file does not exist")
    assert "fix associated_masks.anatomy_mask in pretrain_data.json" in reason
    assert "fix image_path in pretrain_data.json" in failure_reason(info.value)


def test_binary_masks_map_positive_labels_to_one_and_refuse_negative_ones(tmp_path: Path) -> None:
    labels = np.zeros((6, 7, 8), np.int16)
    labels[1:3] = 255
    labels[4] = 4
    path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), path)
    with pytest.raises(ImageReadError, match="do not fit int8"):
        read_mask(path)  # as label map: 255 does not fit int8
    mask, props = read_mask(path, binary=True)
    assert props["label_range"] == [0, 255]
    assert mask.dtype == np.int8 and set(np.unique(mask).tolist()) == {0, 1}
    assert int(mask.sum()) == int((labels > 0).sum()) == 3 * 7 * 8
    labels[5] = -1
    nib.save(nib.Nifti1Image(labels, np.eye(4)), path)
    with pytest.raises(ImageReadError, match="negative labels"):
        read_mask(path, binary=True)
