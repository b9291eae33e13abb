"""Tests of the blosc2 case store: round trip, lazy slicing, int8 masks, atomic writes, completion marker."""

from __future__ import annotations

import numpy as np
import pytest

from nnssl.data.case_store import (
    case_is_complete,
    chunk_and_block_shape,
    data_path,
    mask_path,
    open_case,
    properties_path,
    write_case,
)


def _case(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    data = rng.normal(size=(1, 40, 36, 44)).astype(np.float32)
    anat = (rng.random((1, 40, 36, 44)) > 0.5).astype(np.uint8)
    anon = np.zeros((1, 40, 36, 44), dtype=np.float32)
    anon[:, :5] = 1
    return data, {"anatomy": anat, "anonymization": anon}


def test_round_trip_and_partial_slicing(tmp_path):
    data, masks = _case(np.random.default_rng(0))
    stem = tmp_path / "coll" / "ds" / "sub" / "ses" / "img"
    write_case(stem, data, {"spacing": [1.0, 1.0, 1.0], "unique_id": "u"}, masks)
    assert case_is_complete(stem)
    case = open_case(stem)
    np.testing.assert_array_equal(case.data[:], data)
    np.testing.assert_array_equal(case.data[0:1, 3:20, 5:9, 10:44], data[0:1, 3:20, 5:9, 10:44])
    assert case.masks["anatomy"].dtype == np.int8 and case.masks["anonymization"].dtype == np.int8
    np.testing.assert_array_equal(case.masks["anatomy"][:], masks["anatomy"].astype(np.int8))
    np.testing.assert_array_equal(case.masks["anonymization"][:], masks["anonymization"].astype(np.int8))
    assert mask_path(stem, "anatomy").name == "img__anat.b2nd"
    assert mask_path(stem, "anonymization").name == "img__anon.b2nd"
    assert case.properties["spacing"] == [1, 1, 1] and case.properties["unique_id"] == "u"
    assert not list(tmp_path.rglob("*.nnssl_tmp*"))
    assert not list(tmp_path.rglob("*.pkl"))


def test_chunks_tile_large_volumes():
    chunks, blocks = chunk_and_block_shape((1, 200, 240, 30), chunk_side=64, block_side=16)
    assert chunks == (1, 64, 64, 32) and blocks == (1, 16, 16, 16)
    assert all(c % b == 0 for c, b in zip(chunks, blocks))
    chunks, blocks = chunk_and_block_shape((1, 200, 240, 30))  # the default: 64^3 chunks of 32^3 blocks
    assert chunks == (1, 64, 64, 30) and blocks == (1, 32, 32, 30)


def test_per_axis_block_sides_are_stored_and_checked(tmp_path):
    """Non-cubic blocks (measured in benchmarks/store_codecs.py): (X, Y, Z) sides, capped and tiled per axis."""
    from nnssl.data.case_store import StoreFormat

    chunks, blocks = chunk_and_block_shape((1, 200, 240, 30), chunk_side=64, block_side=(32, 32, 64))
    assert chunks == (1, 64, 64, 30) and blocks == (1, 32, 32, 30)
    fmt = StoreFormat(block_side=[16, 32, 64])  # a list, as read back from JSON
    assert fmt.block_side == (16, 32, 64) and fmt.to_dict()["block_side"] == (16, 32, 64)
    data, masks = _case(np.random.default_rng(2))
    write_case(tmp_path / "img", data, {}, masks, fmt=fmt)
    case = open_case(tmp_path / "img")
    assert case.data.blocks == (1, *[min(b, s) for b, s in zip((16, 32, 64), data.shape[1:])])
    np.testing.assert_array_equal(case.data[:], data)
    for bad in (0, (32, 32), (32, 0, 32), 16.0, True):
        with pytest.raises(ValueError, match="block_side must be a positive int or three positive ints"):
            StoreFormat(block_side=bad)


def test_missing_json_or_leftover_temp_is_incomplete(tmp_path):
    data, masks = _case(np.random.default_rng(1))
    stem = tmp_path / "img"
    write_case(stem, data, {"spacing": [1, 1, 1]}, masks)
    properties_path(stem).unlink()
    assert not case_is_complete(stem)
    with pytest.raises(FileNotFoundError, match="nnssl_preprocess"):
        open_case(stem)
    write_case(stem, data, {"spacing": [1, 1, 1]}, masks)
    mask_path(stem, "anatomy").unlink()
    assert not case_is_complete(stem), "a listed mask is missing"

    other = tmp_path / "other"
    (tmp_path / "other.nnssl_tmp-deadbeef.b2nd").write_bytes(b"partial")
    assert not case_is_complete(other)
    assert not data_path(other).exists()


def test_wrong_mask_grid_is_rejected(tmp_path):
    data, masks = _case(np.random.default_rng(2))
    masks["anatomy"] = masks["anatomy"][:, :-1]
    with pytest.raises(ValueError, match="anatomy mask"):
        write_case(tmp_path / "img", data, {"spacing": [1, 1, 1]}, masks)
    assert not case_is_complete(tmp_path / "img")


def test_formats_round_trip_and_old_stores_stay_readable(tmp_path):
    """Lossless default, float16 and mantissa truncation round-trip within their error; every format reads back."""
    from nnssl.config import DataConfig
    from nnssl.data.case_store import DEFAULT_FORMAT, StoreFormat
    from nnssl.data.sampling import PatchSampler

    data, masks = _case(np.random.default_rng(3))
    formats = {
        "default": DEFAULT_FORMAT,
        "previous LZ4HC-5": StoreFormat("LZ4HC", 5, block_side=16, splitmode="AUTO_SPLIT"),
        "upstream-like ZSTD-8": StoreFormat("ZSTD", 8, block_side=16, splitmode="AUTO_SPLIT"),
        "float16": StoreFormat(precision="float16"),
        "mantissa10": StoreFormat(precision="mantissa10"),
    }
    tolerance = {"float16": 2**-11, "mantissa10": 2**-10}
    for name, fmt in formats.items():
        stem = tmp_path / name.replace(" ", "_")
        write_case(stem, data, {"unique_id": name}, masks, fmt)
        case = open_case(stem)
        assert case.properties["storage"]["precision"] == fmt.precision
        assert set(case.properties["checksums"]) == {"image", "anatomy", "anonymization"}
        stored = np.asarray(case.data[:], dtype=np.float32)
        relative = np.abs(stored - data) / np.maximum(np.abs(data), 1e-3)
        assert relative.max() <= tolerance.get(name, 0.0), name
        assert (name == "float16") == (case.data.dtype == np.float16)
        np.testing.assert_array_equal(case.masks["anatomy"][:], masks["anatomy"].astype(np.int8))
        sampler = PatchSampler([stem], (16, 16, 16), DataConfig(rotation_p=0, scale_p=0, mirror_axes=()))
        assert sampler.sample(0, np.random.default_rng(0))["image"].shape == (1, 16, 16, 16)


def test_float16_storage_refuses_values_beyond_its_range(tmp_path):
    from nnssl.data.case_store import StoreFormat

    data = np.full((1, 8, 8, 8), 1e5, dtype=np.float32)
    with pytest.raises(ValueError, match="do not fit storage precision float16"):
        write_case(tmp_path / "big", data, {}, None, StoreFormat(precision="float16"))
    with pytest.raises(ValueError, match="Unknown storage precision 'mantissa30'"):
        StoreFormat(precision="mantissa30")
