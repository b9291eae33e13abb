"""VoCo: overlap labels, loss terms, the EMA teacher, presets, and demo runs whose loss falls."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from contrastive_demo import run_demo

from nnssl.architectures import ARCHITECTURES, build_network
from nnssl.engine.trainer import ddp_ignored_names
from nnssl.losses.voco import (
    overlap_correlation,
    position_hit_rate,
    relu_cosine,
    voco_prediction_losses,
    voco_regularization,
)
from nnssl.methods import METHODS
from nnssl.methods.voco import VoCo, VoCoConfig, VoCoTransform
from nnssl.presets import resolve_config

SMALL = {"crop_size": (16, 16, 16), "num_targets": 3, "hidden_dim": 32, "out_dim": 16}


def test_registered_and_presets() -> None:
    assert METHODS.get("VoCo") is VoCo
    cfg = resolve_config("VoCoTrainer")
    assert (cfg.architecture, cfg.train.patch_size, cfg.train.grad_clip, cfg.optim.lr) == (
        "ResEncL",
        (256, 256, 64),
        None,
        1e-2,
    )
    assert cfg.method_cfg.num_targets == 4
    assert resolve_config("VoCoEvaTrainer").architecture == "PrimusM"


def test_transform_labels_rows_sum_to_one_and_match_positions() -> None:
    coords = np.stack(np.meshgrid(*[np.arange(s) for s in (32, 48, 16)], indexing="ij")).astype(np.float32)
    transform = VoCoTransform(VoCoConfig(**SMALL), (32, 48, 16), augment=False)
    np.random.seed(1)
    out = transform({"image": coords})
    assert out["views"].shape == (6 + 3, 3, 16, 16, 16) and out["overlap"].shape == (3, 6)
    np.testing.assert_allclose(out["overlap"].sum(1), 1.0, rtol=1e-6)
    for t in range(3):
        start = out["views"][6 + t, :, 0, 0, 0].astype(int)
        for b in range(6):
            base = out["views"][b, :, 0, 0, 0].astype(int)
            inter = np.prod(np.clip(np.minimum(start, base) + 16 - np.maximum(start, base), 0, None))
            assert out["overlap"][t, b] == pytest.approx(inter / 16**3)


def test_target_equal_to_a_base_gives_a_one_hot_row() -> None:
    from nnssl.transforms.views import grid_starts, overlap_fraction_matrix

    bases = grid_starts((32, 32, 16), (16, 16, 16))
    row = overlap_fraction_matrix(bases[2:3], bases, (16, 16, 16))[0]
    assert row.tolist() == [0.0, 0.0, 1.0, 0.0]


def test_loss_terms() -> None:
    basis = torch.eye(8)
    assert float(voco_regularization(basis[:4].unsqueeze(0))) == 0.0  # orthogonal bases
    assert float(voco_regularization(torch.ones(2, 4, 8))) == pytest.approx(1.0)
    y = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]])
    pos, neg = voco_prediction_losses(y.clone(), y)  # perfect prediction
    assert float(pos) == pytest.approx(0.0, abs=1e-5) and float(neg) == 0.0
    pos, neg = voco_prediction_losses(torch.zeros_like(y), y)
    expected = -(0.5 * math.log(0.5 + 1e-6) * 2 + math.log(1e-6)) / 2.0
    assert float(pos) == pytest.approx(expected, rel=1e-4) and float(neg) == 0.0
    pos, neg = voco_prediction_losses(torch.ones_like(y), y)
    assert float(neg) == pytest.approx(1.0, rel=1e-5)
    s = relu_cosine(basis[:2].unsqueeze(0), -basis[:2].unsqueeze(0))
    assert float(s.max()) == 0.0  # ReLU of negative cosines


def test_learning_signals_hit_rate_and_correlation() -> None:
    """What the loss cannot show: a constant similarity has r = 0 and hits only by tie-breaking; the true overlap
    itself has hit rate 1 and r = 1; a prediction that ranks the bases right but on another scale keeps hit rate 1."""
    overlap = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.0, 0.25, 0.75, 0.0], [0.0, 0.0, 0.0, 1.0]]])
    assert position_hit_rate(overlap, overlap) == 1.0 and overlap_correlation(overlap, overlap) == pytest.approx(1.0)
    assert overlap_correlation(torch.full_like(overlap, 0.3), overlap) == 0.0
    squashed = 0.2 + 0.1 * overlap
    assert position_hit_rate(squashed, overlap) == 1.0 and overlap_correlation(squashed, overlap) == pytest.approx(1.0)
    shuffled = overlap[:, :, [3, 0, 1, 2]]
    assert position_hit_rate(shuffled, overlap) == 0.0 and overlap_correlation(shuffled, overlap) < 0.0


@pytest.mark.parametrize("arch", ["ResEncTiny", "PrimusTiny"])
def test_forward_teacher_and_keys(arch: str) -> None:
    torch.manual_seed(0)
    method = VoCo(VoCoConfig(**SMALL), ARCHITECTURES.get(arch), (32, 32, 16))
    assert method.num_bases == 4 and method.network_patch_size() == (16, 16, 16)
    assert set(method.backbone().state_dict()) == set(build_network(arch, 1, 1, (16, 16, 16)).state_dict())
    assert set(ddp_ignored_names(method)) == {n for n, _ in method.named_parameters() if n.startswith("teacher.")} | {
        n for n, _ in method.named_buffers() if n.startswith("teacher.")
    }
    method.train()
    assert method.student.training and not method.teacher.training
    batch = {"views": torch.randn(2, 7, 1, 16, 16, 16), "overlap": torch.rand(2, 3, 4)}
    out = method(batch)
    assert math.isfinite(float(out.loss)) and {"pos", "neg", "reg", "overlap_mae"} <= set(out.metrics)
    assert {"hit_at_1", "overlap_correlation"} <= set(out.metrics)
    out.loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    old = {k: v.clone() for k, v in method.teacher.module.named_parameters()}
    opt.step()
    method.on_step_end(0, 10)
    m = method.cfg.teacher_momentum
    student = dict(method.student.named_parameters())
    for name, p in method.teacher.module.named_parameters():
        torch.testing.assert_close(p, m * old[name] + (1 - m) * student[name].detach(), rtol=0, atol=1e-6)


def test_patch_must_tile_into_crops() -> None:
    with pytest.raises(ValueError, match="multiple of the crop side"):
        VoCo(VoCoConfig(**SMALL), ARCHITECTURES.get("ResEncTiny"), (40, 32, 16))


DEMO = {"train.val_iterations": 1}  # the presets' 4x4x1 grid: 16 bases of 16^3 from 64x64x16 patches


@pytest.mark.parametrize("preset", ["DemoVoCo_ResEncTiny", "DemoVoCo_PrimusTiny"])
def test_demo_preset_runs_and_checkpoint_loads_downstream(demo_raw_dataset, nnssl_env, preset) -> None:
    records, checkpoint = run_demo(
        nnssl_env, preset, {**DEMO, "train.batch_size": 2, "train.num_epochs": 2, "train.iterations_per_epoch": 2}
    )
    assert len(records) == 2 and all(math.isfinite(r["train_loss"]) for r in records)
    assert any(k.startswith("teacher.") for k in checkpoint["method_state"])
    assert not any(k.startswith("teacher") for k in checkpoint["network_weights"])


@pytest.mark.slow
def test_demo_voco_prediction_term_falls(demo_raw_dataset, nnssl_env) -> None:
    """6 x 10 iterations, batch 4, on the 4x4x1 demo grid: the prediction term L_pos falls.

    The total loss does not fall robustly yet on the demo (it does for some seeds only; L_neg and L_reg rise while
    L_pos falls): documentation/contrastive.md, VoCo, "Open". This test pins what does hold.
    """
    records, _ = run_demo(
        nnssl_env,
        "DemoVoCo_ResEncTiny",
        {**DEMO, "train.batch_size": 4, "train.num_epochs": 6, "train.iterations_per_epoch": 10},
    )
    loss = [r["train_loss"] for r in records]
    pos = [r["train/pos"] for r in records]
    assert all(math.isfinite(v) for v in loss)
    assert max(loss[2:]) < 1.1 * loss[0], loss
    assert min(pos[2:]) < 0.85 * pos[0], pos
