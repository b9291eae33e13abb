"""nnssl.imageio: canonical orientation, dtypes, channels, 4D, the nibabel fallback and header-only reads."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from nnssl.imageio import ImageReadError, ReadPolicy, read_header, read_image, read_mask
from nnssl.imageio.nibabel_reader import read_canonical_nibabel, read_header_nibabel
from nnssl.imageio.simpleitk_reader import read_canonical_sitk, read_header_sitk

DEMO = Path(str(resources.files("nnssl") / "assets" / "demo"))

# file -> (orientation of the file, canonical spacing (z, y, x), canonical shape (z, y, x), dtype)
DEMO_EXPECTED = {
    "KmeansTest_T1UCharRaw.nii.gz": ("LSA", (2.0, 3.0, 2.0), (128, 62, 128), "int16"),
    "KmeansTest_T1RawSkullStrip.nii.gz": ("LSA", (2.0, 3.0, 2.0), (128, 62, 128), "uint8"),
    "anatomical.nii": ("LAS", (2.0, 2.0, 2.0), (25, 41, 33), "int16"),
    "ch2bet.nii.gz": ("RAS", (1.0, 1.0, 1.0), (181, 217, 181), "uint8"),
    "ct_brain_atlas_1mm.nii.gz": ("RAS", (1.0, 1.0, 1.0), (179, 202, 202), "int16"),
}


@pytest.mark.parametrize("name", sorted(DEMO_EXPECTED))
def test_demo_header_matches_full_read_and_both_readers_agree(name: str) -> None:
    orientation, spacing, shape, dtype = DEMO_EXPECTED[name]
    path = DEMO / name
    header = read_header(path)
    assert (header.orientation, header.spacing, header.shape, header.dtype) == (orientation, spacing, shape, dtype)
    assert header.num_channels == 1 and header.reader == "nibabel"  # NIfTI headers: nibabel first (faster)
    assert read_header_sitk(str(path)).spacing == header.spacing

    image, props = read_image(path)
    assert image.dtype == np.float32 and image.shape == (1, *shape)
    assert tuple(props["spacing"]) == spacing
    assert props["original_orientation"] == orientation

    # The nibabel path (used when SimpleITK refuses a file) gives the same canonical image and geometry.
    sitk_array, sitk_props = read_canonical_sitk(str(path))
    nib_array, nib_props = read_canonical_nibabel(str(path))
    np.testing.assert_array_equal(sitk_array, nib_array)
    assert sitk_array.dtype == nib_array.dtype
    for key in ("spacing", "original_spacing", "original_direction", "original_origin", "canonical_origin"):
        np.testing.assert_allclose(sitk_props[key], nib_props[key], atol=1e-3, err_msg=key)
    nib_header = read_header_nibabel(str(path))
    assert (nib_header.spacing, nib_header.shape, nib_header.orientation) == (spacing, shape, orientation)


def test_big_endian_las_file_is_flipped_along_anterior_posterior_only() -> None:
    """anatomical.nii is LAS, big-endian int16: canonical LPS only reverses the y (A->P) axis."""
    img = nib.load(DEMO / "anatomical.nii")
    assert img.get_data_dtype().byteorder == ">"
    raw = np.asarray(img.dataobj)  # (x, y, z) pointing L, A, S
    expected = raw[:, ::-1, :].transpose(2, 1, 0).astype(np.float32)
    image, _ = read_image(DEMO / "anatomical.nii")
    np.testing.assert_array_equal(image[0], expected)
    assert float(np.abs(expected).sum()) > 0


def test_simpleitk_path_equals_dicomorient() -> None:
    path = DEMO / "KmeansTest_T1UCharRaw.nii.gz"
    expected = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS"))
    image, _ = read_image(path)
    np.testing.assert_array_equal(image[0], expected.astype(np.float32))


def _canonical_volume() -> np.ndarray:
    """An asymmetric (z, y, x) volume: every voxel value encodes its position."""
    z, y, x = np.meshgrid(np.arange(6), np.arange(7), np.arange(8), indexing="ij")
    return (100 * z + 10 * y + x).astype(np.int16)


SPACING_XYZ = (1.5, 2.0, 3.0)  # along L, P, S
ORIGIN_RAS = (10.0, -20.0, 30.0)  # world position of canonical voxel 0


def _write_oriented(path: Path, orientation: str) -> None:
    """Write the canonical volume stored with a hand-built voxel order and matching RAS affine."""
    canon = _canonical_volume().transpose(2, 1, 0)  # (x, y, z) with x->L, y->P, z->S
    nx, ny, nz = canon.shape
    sx, sy, sz = SPACING_XYZ
    ox, oy, oz = ORIGIN_RAS
    if orientation == "LPS":
        data, cols, origin = canon, [(-sx, 0, 0), (0, -sy, 0), (0, 0, sz)], (ox, oy, oz)
    elif orientation == "RAS":
        data = canon[::-1, ::-1, :]
        cols, origin = [(sx, 0, 0), (0, sy, 0), (0, 0, sz)], (ox - sx * (nx - 1), oy - sy * (ny - 1), oz)
    elif orientation == "LAS":
        data = canon[:, ::-1, :]
        cols, origin = [(-sx, 0, 0), (0, sy, 0), (0, 0, sz)], (ox, oy - sy * (ny - 1), oz)
    elif orientation == "LSA":  # i -> L, j -> S, k -> A
        data = canon.transpose(0, 2, 1)[:, :, ::-1]
        cols, origin = [(-sx, 0, 0), (0, 0, sz), (0, sy, 0)], (ox, oy - sy * (ny - 1), oz)
    else:
        raise ValueError(orientation)
    affine = np.eye(4)
    affine[:3, :3] = np.array(cols, dtype=float).T
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), path)


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "LAS", "LSA"])
def test_orientations_read_to_identical_canonical_array(tmp_path: Path, orientation: str) -> None:
    path = tmp_path / f"vol_{orientation}.nii.gz"
    _write_oriented(path, orientation)
    header = read_header(path)
    assert header.orientation == orientation
    assert header.spacing == (3.0, 2.0, 1.5)  # (z, y, x) = (S, P, L) spacing
    assert header.shape == (6, 7, 8)
    for reader in (read_canonical_sitk, read_canonical_nibabel):
        array, props = reader(str(path))
        np.testing.assert_array_equal(array[0], _canonical_volume())
        assert props["spacing"] == [3.0, 2.0, 1.5]
        np.testing.assert_allclose(props["canonical_origin"], (-ORIGIN_RAS[0], -ORIGIN_RAS[1], ORIGIN_RAS[2]))


def test_sheared_affine_is_refused_but_the_nibabel_reader_itself_still_reads_it(tmp_path: Path) -> None:
    data = _canonical_volume().transpose(2, 1, 0)[::-1, ::-1, :]  # RAS storage
    affine = np.array([[1.5, 0.2, 0, 0], [0, 2.0, 0, 0], [0, 0.1, 3.0, 0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.set_qform(None, code=0)
    img.set_sform(affine, code=1)
    path = tmp_path / "sheared.nii.gz"
    nib.save(img, path)
    with pytest.raises(RuntimeError, match="orthonormal"):
        read_header_sitk(str(path))
    # the x-y angle of this affine: arccos(0.2 / |(0.2, 2.0, 0.1)|) = 84.3 degrees
    expected_angle = np.degrees(np.arccos(0.2 / np.linalg.norm([0.2, 2.0, 0.1])))
    for fn in (read_header, read_image):
        with pytest.raises(ImageReadError, match="sheared") as info:
            fn(path)
        assert f"x-y {expected_angle:.2f}" in info.value.reason
    # the reader function the fallback uses maps the file to its closest orientation (what screening prevents)
    image, props = read_canonical_nibabel(str(path))
    np.testing.assert_array_equal(image[0], _canonical_volume())
    np.testing.assert_allclose(props["spacing"], [3.0, np.hypot(2.0, np.hypot(0.2, 0.1)), 1.5])


SHEARED_AFFINE = np.array([[1.5, 0.2, 0, 5.0], [0, 2.0, 0, -3.0], [0, 0.1, 3.0, 2.0], [0, 0, 0, 1]])


def _world_linear(ras: np.ndarray) -> np.ndarray:
    """A linear function of RAS world position: cubic B-splines reproduce it exactly away from the borders."""
    return 0.3 * ras[..., 0] - 0.2 * ras[..., 1] + 0.5 * ras[..., 2] + 7.0


def test_resample_sheared_puts_every_voxel_at_its_world_position(tmp_path: Path) -> None:
    """With ReadPolicy(resample_sheared=True) a sheared image is resampled, not refused: each output voxel holds
    the value the sheared file has at that voxel's world position (checked with a linear function of world
    position, exact for the cubic spline inside the image), the header announces the grid the read returns, and
    the mask lands on the same grid."""
    shape = (20, 18, 16)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    world = index @ SHEARED_AFFINE[:3, :3].T + SHEARED_AFFINE[:3, 3]
    path, mask_path = tmp_path / "sheared.nii.gz", tmp_path / "sheared_mask.nii.gz"
    nib.save(nib.Nifti1Image(_world_linear(world).astype(np.float32), SHEARED_AFFINE), path)
    nib.save(nib.Nifti1Image((index[..., 0] > 9).astype(np.uint8), SHEARED_AFFINE), mask_path)

    policy = ReadPolicy(resample_sheared=True)
    header = read_header(path, policy)
    array, props = read_image(path, policy)
    mask, _ = read_mask(mask_path, policy, binary=True)
    assert header.reader == props["reader"] == "nibabel, resampled from a sheared affine"
    assert array.shape[1:] == header.shape == mask.shape[1:]
    assert np.prod(header.shape) > np.prod(shape)  # the axis-aligned box around a sheared grid is larger
    norms = np.linalg.norm(SHEARED_AFFINE[:3, :3], axis=0)  # spacing = column norms, canonical (z, y, x) order
    np.testing.assert_allclose(props["spacing"], norms[::-1])
    np.testing.assert_allclose(header.spacing, norms[::-1])
    np.testing.assert_allclose(props["sheared_affine"], SHEARED_AFFINE)
    assert set(np.unique(mask)) == {0, 1}

    # world position of every output voxel: canonical LPS, identity direction, array axes (z, y, x)
    out = np.stack(np.meshgrid(*[np.arange(n) for n in array.shape[1:]], indexing="ij"), axis=-1).astype(float)
    lps = np.asarray(props["canonical_origin"]) + out[..., ::-1] * np.asarray(props["spacing"])[::-1]
    ras = lps * np.array([-1.0, -1.0, 1.0])
    source = (ras - SHEARED_AFFINE[:3, 3]) @ np.linalg.inv(SHEARED_AFFINE[:3, :3]).T  # voxel coordinates in the file
    inside = np.all((source >= 3) & (source <= np.array(shape) - 4), axis=-1)
    assert inside.sum() > 500
    # up to 0.006 from the spline's constant border 3 voxels away; misplacing a voxel by a tenth of its size
    # would cost >= 0.04 (the function changes by 0.45-1.5 per voxel)
    np.testing.assert_allclose(array[0][inside], _world_linear(ras)[inside], atol=0.01)
    # the mask follows the same geometry: voxels well inside either side of the file's first-axis plane
    first_axis = source[..., 0]
    assert np.all(mask[0][inside & (first_axis > 10.5)] == 1) and np.all(mask[0][inside & (first_axis < 8.5)] == 0)

    with pytest.raises(ImageReadError, match="--resample_sheared"):
        read_image(path)  # the default still refuses it, and names the option


def test_unreadable_file_names_both_reasons(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.nii.gz"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    for fn in (read_header, read_image, read_mask):
        with pytest.raises(ImageReadError) as info:
            fn(path)
        assert info.value.path == str(path)
        assert "SimpleITK" in info.value.reason and "nibabel" in info.value.reason
        assert str(path) in str(info.value)
    with pytest.raises(ImageReadError, match="does not exist"):
        read_header(tmp_path / "missing.nii.gz")


def test_4d_images(tmp_path: Path) -> None:
    series = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 7, 6, 3), np.float32), np.eye(4)), series)
    with pytest.raises(ImageReadError, match="4D image with 3 volumes"):
        read_header(series)
    with pytest.raises(ImageReadError, match="4D image with 3 volumes"):
        read_image(series)

    values = np.random.default_rng(1).random((1, 6, 7, 8)).astype(np.float32)  # (t, z, y, x)
    single_nii = tmp_path / "single.nii.gz"
    nib.save(nib.Nifti1Image(values.transpose(3, 2, 1, 0), np.diag([-1.0, -1.0, 1.0, 1.0])), single_nii)
    assert nib.load(single_nii).shape == (8, 7, 6, 1)
    single_mha = tmp_path / "single.mha"
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(values[0])]), str(single_mha))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(single_mha))
    reader.ReadImageInformation()
    assert reader.GetSize() == (8, 7, 6, 1)  # SimpleITK sees a 4D image
    assert read_header_nibabel(str(single_nii)).shape == (6, 7, 8)
    for path in (single_nii, single_mha):
        assert read_header(path).shape == (6, 7, 8)
        image, props = read_image(path)
        np.testing.assert_array_equal(image, values)
        assert props["spacing"] == [1.0, 1.0, 1.0]
    nib_array, _ = read_canonical_nibabel(str(single_nii))
    np.testing.assert_array_equal(nib_array, values)


def test_multicomponent_image_becomes_channels_only_when_declared(tmp_path: Path) -> None:
    values = np.random.default_rng(2).random((6, 7, 8, 2)).astype(np.float32)  # (z, y, x, c)
    img = sitk.GetImageFromArray(values, isVector=True)
    img.SetSpacing((1.0, 2.0, 3.0))
    path = tmp_path / "vector.nii.gz"
    sitk.WriteImage(img, str(path))
    for fn in (read_header, read_image):
        with pytest.raises(ImageReadError, match="2 channels per voxel") as info:
            fn(path)
        assert '"num_channels": 2' in info.value.reason
    declared = ReadPolicy(num_channels=2)
    header = read_header(path, declared)
    assert header.num_channels == 2 and header.shape == (6, 7, 8) and header.spacing == (3.0, 2.0, 1.0)
    image, _ = read_image(path, declared)
    np.testing.assert_array_equal(image, np.moveaxis(values, -1, 0))
    nib_array, _ = read_canonical_nibabel(str(path))
    np.testing.assert_array_equal(nib_array, np.moveaxis(values, -1, 0))
    with pytest.raises(ImageReadError, match="one channel"):
        read_mask(path, declared)


def test_read_mask_is_int8_on_the_image_grid(tmp_path: Path) -> None:
    mask, props = read_mask(DEMO / "KmeansTest_T1RawSkullStrip.nii.gz")
    image, image_props = read_image(DEMO / "KmeansTest_T1UCharRaw.nii.gz")
    assert mask.dtype == np.int8 and mask.shape == image.shape
    # this shipped "skull strip" is a tissue label map (0 background, 4/5/6 tissue classes): labels are kept
    assert set(np.unique(mask).tolist()) == {0, 4, 5, 6} and 0.05 < (mask > 0).mean() < 0.9
    # and it lies on the brain: mean intensity inside the mask far above outside
    assert image[mask > 0].mean() > 3 * image[mask == 0].mean()
    assert props["spacing"] == image_props["spacing"]

    soft = (_canonical_volume() % 2).astype(np.float32) * 0.9999
    path = tmp_path / "soft.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(soft), str(path))
    mask, _ = read_mask(path)
    np.testing.assert_array_equal(mask[0], (_canonical_volume() % 2).astype(np.int8))
    big = tmp_path / "big.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 4, 4), 300, np.int16)), str(big))
    with pytest.raises(ImageReadError, match="int8"):
        read_mask(big)


def test_read_header_reads_no_voxels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Header reads never call SimpleITK's Execute nor load nibabel's data; full reads do (so this can fail)."""
    calls = {"execute": 0, "nib_data": 0}
    execute = sitk.ImageFileReader.Execute

    def counting_execute(self: sitk.ImageFileReader) -> sitk.Image:
        calls["execute"] += 1
        return execute(self)

    def no_voxels(*args: object, **kwargs: object) -> None:
        calls["nib_data"] += 1
        raise AssertionError("voxel data was loaded")

    monkeypatch.setattr(sitk.ImageFileReader, "Execute", counting_execute)
    monkeypatch.setattr(sitk, "ReadImage", no_voxels)
    for name in DEMO_EXPECTED:
        read_header(DEMO / name)
    assert calls["execute"] == 0
    read_image(DEMO / "anatomical.nii")
    assert calls["execute"] == 1

    angle = np.radians(20)
    affine = np.eye(4)
    affine[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]  # oblique, not sheared
    oblique = tmp_path / "oblique.nii"
    nib.save(nib.Nifti1Image(np.ones((5, 6, 7), np.float32), affine), oblique)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", no_voxels)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "get_unscaled", no_voxels)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "_get_scaled", no_voxels)
    header = read_header(oblique)
    assert header.reader == "nibabel" and header.shape == (7, 6, 5)
    assert calls["nib_data"] == 0
    read_image(oblique)  # a float NIfTI: nibabel is tried first (and refused here), then SimpleITK reads it
    assert calls["nib_data"] >= 1


def test_nan_and_inf_in_float_nifti_survive_reading(tmp_path):
    """SimpleITK's NIfTI reader turns NaN/Inf into 0; read_image must keep them so preprocessing can reject the case."""
    volume = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    volume[1, 2, 3] = np.nan
    volume[2, 2, 2] = np.inf
    path = tmp_path / "broken.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([2.0, 1.0, 1.5, 1.0])), str(path))
    array, _ = read_image(path)
    assert np.isnan(array).sum() == 1
    assert np.isinf(array).sum() == 1
