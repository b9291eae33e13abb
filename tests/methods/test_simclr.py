"""SimCLR: paired views, NT-Xent on the projections, presets, demo runs with loadable encoders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from contrastive_demo import run_demo

from nnssl.architectures import ARCHITECTURES, build_network
from nnssl.methods import METHODS
from nnssl.methods.simclr import PairedCropTransform, SimCLR, SimCLRConfig
from nnssl.presets import resolve_config

SMALL = {"crop_size": (16, 16, 16), "hidden_dim": 32, "out_dim": 16}


def test_registered_and_presets() -> None:
    assert METHODS.get("SimCLR") is SimCLR
    cfg = resolve_config("SimCLRTrainer")
    assert (cfg.architecture, cfg.train.patch_size, cfg.train.grad_clip) == ("ResEncL", (192, 192, 64), 0.1)
    assert cfg.method_cfg.crop_size == (64, 64, 64) and cfg.method_cfg.temperature == 0.5
    assert resolve_config("SimCLRTrainer_BS32").train.batch_size == 32
    eva = resolve_config("SimCLREvaTrainer")
    assert (eva.architecture, eva.optim.name, eva.train.grad_clip) == ("PrimusM", "adamw", 1.0)


def test_views_pair_overlap_and_are_augmented_independently() -> None:
    cfg = SimCLRConfig(crop_size=(16, 16, 16), crops_per_image=3, min_overlap=0.5)
    coords = np.stack(np.meshgrid(*[np.arange(40)] * 3, indexing="ij")).astype(np.float32)
    np.random.seed(0)
    views = PairedCropTransform(cfg, augment=False)({"image": coords})["views"]
    assert views.shape == (6, 3, 16, 16, 16)
    for k in range(3):
        shift = views[3 + k, :, 0, 0, 0] - views[k, :, 0, 0, 0]
        assert np.all(np.abs(shift) <= 8)  # >= 50% overlap per axis
    np.random.seed(0)
    image = np.random.randn(1, 40, 40, 40).astype(np.float32)
    clean = image.copy()
    augmented = PairedCropTransform(cfg, augment=True)({"image": image})["views"]
    np.testing.assert_array_equal(image, clean)
    assert augmented.dtype == np.float32 and np.isfinite(augmented).all()


@pytest.mark.parametrize("arch", ["ResEncTiny", "PrimusTiny"])
def test_forward_loss_and_backbone_keys(arch: str) -> None:
    torch.manual_seed(0)
    method = SimCLR(SimCLRConfig(**SMALL), ARCHITECTURES.get(arch), (32, 32, 32))
    assert method.network_patch_size() == (16, 16, 16)
    assert set(method.backbone().state_dict()) == set(build_network(arch, 1, 1, (16, 16, 16)).state_dict())
    out = method({"views": torch.randn(3, 4, 1, 16, 16, 16)})
    assert math.isfinite(float(out.loss.detach())) and 0.0 <= out.metrics["top1"] <= 1.0
    assert 0.5 * math.log(11) < float(out.loss.detach()) < 2 * math.log(11)  # 2N-1 = 11 candidates at random init
    out.loss.backward()
    stem = "encoder.stem.convs.0.conv.weight" if arch == "ResEncTiny" else "down_projection.proj.weight"
    assert dict(method.backbone().named_parameters())[stem].grad.abs().sum() > 0


def test_crop_larger_than_patch_is_rejected() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        SimCLR(SimCLRConfig(crop_size=(64, 64, 64)), ARCHITECTURES.get("ResEncTiny"), (32, 32, 32))


DEMO = {
    "method.crop_size": "16,16,16",
    "train.patch_size": "32,32,32",
    "train.batch_size": 4,
    "train.val_iterations": 1,
}


@pytest.mark.parametrize("preset", ["DemoSimCLR_ResEncTiny", "DemoSimCLR_PrimusTiny"])
def test_demo_preset_runs_and_checkpoint_loads_downstream(demo_raw_dataset, nnssl_env, preset) -> None:
    records, checkpoint = run_demo(nnssl_env, preset, {**DEMO, "train.num_epochs": 2, "train.iterations_per_epoch": 2})
    losses = [r["train_loss"] for r in records]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert any(k.startswith("projector.") for k in checkpoint["method_state"])


@pytest.mark.slow
def test_demo_simclr_loss_falls(demo_raw_dataset, nnssl_env) -> None:
    records, _ = run_demo(
        nnssl_env, "DemoSimCLR_ResEncTiny", {**DEMO, "train.num_epochs": 5, "train.iterations_per_epoch": 10}
    )
    val = [r["val_loss"] for r in records]
    assert all(math.isfinite(v) for v in val)
    assert min(val[2:]) < val[0] - 0.1, val  # log(15) = 2.71 at chance
