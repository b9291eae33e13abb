"""Batch assembly: device-deferred resampling equals the CPU path, buffers are reused only when free, config checks."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnssl.config import DataConfig, RunConfig, TrainConfig
from nnssl.data.case_store import write_case
from nnssl.data.loader import BatchCollator, build_train_loader
from nnssl.data.sampling import PatchSampler
from nnssl.overrides import ConfigError
from nnssl.transforms.spatial import SpatialParams, affine_theta, read_region, resample_region_torch, source_region


@pytest.fixture(scope="module")
def smooth_cases(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("smooth")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        data = ndimage.gaussian_filter(rng.standard_normal((1, 40, 44, 36)).astype(np.float32), (0, 2, 2, 2))
        anon = np.zeros((1, 40, 44, 36), dtype=np.int8)
        anon[:, :, :, :10] = 1
        write_case(root / f"c{i}", data, {"unique_id": f"u{i}"}, {"anonymization": anon} if i == 0 else None)
        paths.append(root / f"c{i}.b2nd")
    return paths


def _cfg(workers: int = 0) -> RunConfig:
    return RunConfig(
        preset="test",
        method="MAE",
        architecture="ResEncTiny",
        train=TrainConfig(batch_size=4, patch_size=(24, 24, 24), seed=5),
        data=DataConfig(num_workers=workers, rotation_p=0.6, scale_p=0.6),
    )


def test_device_resampling_matches_the_cpu_path(smooth_cases: list[Path]) -> None:
    """Same keys -> same parameters; the deferred batch (resampled by torch on 'the device') equals the CPU batch."""
    masks = ("anonymization_mask",)
    cpu = build_train_loader(smooth_cases, _cfg(), None, masks=masks)
    deferred = build_train_loader(smooth_cases, _cfg(), None, masks=masks, augment_on="cpu")
    for a, b in zip(itertools.islice(cpu.make_iter(3), 4), itertools.islice(deferred.make_iter(3), 4)):
        assert a["unique_id"] == b["unique_id"] and set(a) == set(b)
        np.testing.assert_allclose(b["image"].numpy(), a["image"].numpy(), atol=1e-5)
        if "anonymization_mask" in a:
            agree = (a["anonymization_mask"] == b["anonymization_mask"]).float().mean().item()
            assert agree > 0.995  # nearest-neighbour ties may round differently at a few voxels
    cfg = _cfg()
    probe = build_train_loader(smooth_cases, cfg, None, augment_on="cpu").loader.dataset
    flags = ["_deferred_resampling" in probe[(0, 3, i)] for i in range(16)]
    assert any(flags) and not all(flags), "the check needs both plain and deferred samples"


def test_torch_resampling_equals_scipy_trilinear_inside_the_region() -> None:
    rng = np.random.default_rng(1)
    volume = ndimage.gaussian_filter(rng.standard_normal((1, 60, 60, 60)).astype(np.float32), (0, 2, 2, 2))
    params = SpatialParams(angles=(0.3, -0.4, 0.2), scale=1.2, mirror=(True, False, True))
    centre = np.array([29.5, 30.0, 28.5])
    lo, hi = source_region(centre, (20, 20, 20), params)
    region = read_region(volume, lo, hi)
    matrix = params.matrix()
    offset = centre - np.asarray(lo) - matrix @ np.full(3, 9.5)
    expected = ndimage.affine_transform(region[0], matrix, offset=offset, output_shape=(20,) * 3, order=1)
    expected = np.flip(expected, axis=(0, 2))
    theta = affine_theta(region.shape[1:], lo, centre, (20, 20, 20), params, fold_mirror=True)
    out = resample_region_torch(torch.from_numpy(region), theta, (20, 20, 20), nearest=False).numpy()[0]
    np.testing.assert_allclose(out, expected, atol=2e-5)


def test_main_process_buffers_are_reused_only_when_released() -> None:
    collate = BatchCollator((4, 4, 4))
    samples = [{"image": np.full((1, 4, 4, 4), v, np.float32), "unique_id": str(v)} for v in (1.0, 2.0)]
    first = collate(samples)
    kept = first["image"]
    second = collate([{**s, "image": s["image"] + 10} for s in samples])
    assert second["image"].data_ptr() != kept.data_ptr(), "a batch still held must not be overwritten"
    assert float(kept[0].mean()) == 1.0 and float(second["image"][1].mean()) == 12.0
    view = second["image"][0]
    del second
    third = collate(samples)
    assert third["image"].data_ptr() != view.data_ptr() or float(view.mean()) == 11.0
    del kept, first, third, view
    fourth = collate(samples)
    fifth_ptr = fourth["image"].data_ptr()
    del fourth
    assert collate(samples)["image"].data_ptr() == fifth_ptr, "a released buffer is reused"


def test_flipped_views_and_half_precision_are_copied_once_into_float32(tmp_path: Path) -> None:
    collate = BatchCollator((4, 4, 4))
    base = np.arange(64, dtype=np.float16).reshape(1, 4, 4, 4)
    batch = collate([{"image": np.flip(base, axis=(1, 3))}, {"image": base}])
    assert batch["image"].dtype == torch.float32
    np.testing.assert_array_equal(batch["image"][0].numpy(), np.flip(base, axis=(1, 3)).astype(np.float32))


def test_device_augmentation_settings_are_checked(smooth_cases: list[Path]) -> None:
    cfg = _cfg()
    cfg.data.spatial_augmentation_device = "gpu"
    with pytest.raises(ConfigError, match="use one of"):
        build_train_loader(smooth_cases, cfg, None)
    cfg.data.spatial_augmentation_device = "cuda"
    with pytest.raises(ConfigError, match=r"trains on 'cpu'.*per-sample transform"):
        build_train_loader(smooth_cases, cfg, lambda s: s, device_type="cpu")


def _plain_read_case(tmp_path: Path, precision: str = "float32"):
    from nnssl.data.case_store import StoreFormat, open_case

    rng = np.random.default_rng(3)
    data = rng.standard_normal((1, 40, 44, 36)).astype(np.float32)
    anon = (rng.random((1, 40, 44, 36)) > 0.5).astype(np.int8)
    fmt = StoreFormat(chunk_side=16, block_side=8, precision=precision)  # several chunks per patch
    write_case(tmp_path / "c", data, {"unique_id": "u"}, {"anonymization": anon}, fmt=fmt)
    return open_case(tmp_path / "c")


BOXES = {
    "inside": ((5, 6, 4), (29, 30, 28)),
    "inside, two slabs": ((10, 6, 4), (34, 30, 28)),
    "partly outside, low": ((-7, 30, -3), (17, 54, 21)),
    "partly outside, both sides": ((-2, -5, -1), (42, 49, 37)),
    "fully outside": ((50, 0, 0), (74, 24, 24)),
    "fully outside, negative": ((-30, -30, 5), (-6, -6, 29)),
}


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_a_plain_read_decodes_into_its_slot_what_the_per_sample_read_returns(tmp_path: Path, precision: str) -> None:
    """PlainRead.read_into == mirror(read_region(...)) for boxes inside, partly and fully outside, every mirroring."""
    from nnssl.data.sampling import PlainRead
    from nnssl.transforms.spatial import mirror

    case = _plain_read_case(tmp_path, precision)
    sampler = PatchSampler([tmp_path / "c"], (24, 24, 24), DataConfig())
    collate = BatchCollator((24, 24, 24))
    plain_numpy = np.asarray(case.data[:])  # any array-like (open_fn may return one): decoded by slicing
    arrays = ((case.data, np.float32), (case.masks["anonymization"], np.int8), (plain_numpy, np.float32))
    for (name, (lo, hi)), flips in itertools.product(BOXES.items(), itertools.product((False, True), repeat=3)):
        for array, dtype in arrays:
            expected = mirror(read_region(array, lo, hi), flips).astype(dtype)
            out = np.full((1, *np.subtract(hi, lo)), 7, dtype=dtype)  # stale values must all be overwritten
            PlainRead(sampler, 0, array, lo, hi, flips).read_into(out, collate._scratch_buffer)
            np.testing.assert_array_equal(out, expected, err_msg=f"{name}, flips {flips}")
    inside = np.asarray(case.data[:, 5:29, 6:30, 4:28], dtype=np.float32)
    assert np.abs(inside).sum() > 100 and not (expected == 7).any()


def _sampler_dataset(paths: list[Path], unreadable: float = 0.05, **cfg: float):
    from nnssl.config import DataConfig as Data
    from nnssl.data.loader import _SampleDataset
    from nnssl.data.sampling import PatchSampler as Sampler

    sampler = Sampler(paths, (24, 24, 24), Data(**cfg), masks=("anonymization_mask",))
    return _SampleDataset(sampler, 11, None, False, False, unreadable, BatchCollator((24, 24, 24)))


def test_the_batch_decoded_into_its_slots_equals_the_per_sample_batch(smooth_cases: list[Path], tmp_path: Path) -> None:
    """Same keys -> same batch (images, masks, filled masks, ids) through __getitems__ as through per-sample reads."""
    from nnssl.data.loader import AssembledBatch

    small = tmp_path / "small"  # smaller than the patch on two axes: every patch of it leaves the volume
    write_case(small, np.arange(30 * 24 * 18, dtype=np.float32).reshape(1, 30, 24, 18), {"unique_id": "s"})
    paths = [*smooth_cases, tmp_path / "small.b2nd"]
    for cfg in ({"rotation_p": 0.0, "scale_p": 0.0}, {"rotation_p": 0.4, "scale_p": 0.4}):
        dataset = _sampler_dataset(paths, **cfg)
        reference = BatchCollator((24, 24, 24))
        ids, mixed = set(), 0
        for b in range(6):
            keys = [(0, 2, b * 4 + j) for j in range(4)]
            assembled = dataset.__getitems__(keys)
            assert isinstance(assembled, AssembledBatch)
            new = dataset.collate(assembled)
            old = reference([dataset[key] for key in keys])
            assert set(new) == set(old) and new["unique_id"] == old["unique_id"]
            for key in [k for k in ("image", "anonymization_mask") if k in old]:
                assert new[key].dtype == old[key].dtype
                assert torch.equal(new[key], old[key]), f"{key} differs in batch {b} with {cfg}"
            ids.update(new["unique_id"])
            mixed += "anonymization_mask" in old and "u0" in old["unique_id"] and len(set(old["unique_id"])) > 1
        assert ids == {"u0", "u1", "s"}, "every case, with and without a stored mask, must be in the check"
        assert mixed, "the check needs a batch mixing a stored mask with filled ones"


def test_a_damaged_case_met_while_decoding_into_slots_gives_the_per_sample_batch(tmp_path: Path) -> None:
    """A case that opens but cannot be decoded is skipped in the batched path exactly as in the per-sample path."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        write_case(tmp_path / f"d{i}", rng.standard_normal((1, 40, 40, 40)).astype(np.float32), {"unique_id": f"d{i}"})
        paths.append(tmp_path / f"d{i}.b2nd")
    raw = bytearray(paths[1].read_bytes())
    a, b = int(len(raw) * 0.9), int(len(raw) * 0.97)
    raw[a:b] = b"\xff" * (b - a)
    paths[1].write_bytes(bytes(raw))
    batched = _sampler_dataset(paths, 0.5, rotation_p=0.0, scale_p=0.0)
    per_sample = _sampler_dataset(paths, 0.5, rotation_p=0.0, scale_p=0.0)
    batched.sampler.patch_size = per_sample.sampler.patch_size = (40, 40, 40)  # whole volumes: every read fails
    collate = BatchCollator((40, 40, 40))
    for b in range(4):
        keys = [(0, 0, b * 4 + j) for j in range(4)]
        new = batched.collate(batched.__getitems__(keys))
        old = collate([per_sample[key] for key in keys])
        assert new["unique_id"] == old["unique_id"] and torch.equal(new["image"], old["image"])
        assert "d1" not in new["unique_id"]
    assert set(batched.unreadable) == set(per_sample.unreadable) == {1}
