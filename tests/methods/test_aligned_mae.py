"""AlignedMAE: zero alignment loss for identical views, EMA teacher, pretrained start, exact resume, keys."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from nnssl.architectures import ARCHITECTURES, build_network
from nnssl.engine import Callback, Trainer
from nnssl.engine.checkpoint import load_pretrained_weights, save_checkpoint
from nnssl.methods import METHODS
from nnssl.methods.aligned_mae import AlignedMAE, AlignedMAEConfig, check_view_layout
from nnssl.methods.mae import MAE, MAEConfig
from nnssl.presets import resolve_config
from nnssl.transforms.overlap_views import OverlapViews

CROP = (16, 16, 16)
TINY = {
    "crop_size": CROP,
    "block_size": 8,
    "dense_grid": 4,
    "roi_grid": (3, 3, 3),
    "projector_hidden_dim": 32,
    "projector_dim": 32,
    "predictor_hidden_dim": 16,
}


def _method(arch: str = "ResEncTiny", seed: int = 0, **cfg) -> AlignedMAE:
    torch.manual_seed(seed)
    return AlignedMAE(AlignedMAEConfig(**{**TINY, **cfg}), ARCHITECTURES.get(arch), (24, 24, 24))


def _batch(b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    transform = OverlapViews(CROP)
    np.random.seed(seed)
    rng = np.random.default_rng(seed)
    samples = [transform({"image": rng.normal(size=(1, 24, 24, 24)).astype(np.float32)}) for _ in range(b)]
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}


def test_registered_and_backbone_keys_match_the_downstream_network() -> None:
    assert METHODS.get("AlignedMAE") is AlignedMAE
    for arch in ("ResEncTiny", "PrimusTiny"):
        method = _method(arch)
        assert method.network_patch_size() == CROP
        expected = build_network(arch, 1, 1, CROP).state_dict()
        got = method.backbone().state_dict()
        assert list(got) == list(expected)
        assert all(got[k].shape == expected[k].shape for k in expected)
        assert method.ddp_ignored_prefixes() == ("teacher",)
        assert not any(p.requires_grad for p in method.teacher.parameters())


def test_identical_views_with_teacher_equal_student_give_zero_alignment_loss() -> None:
    method = _method(use_predictor=False, mask_ratio=0.0).train()
    x = torch.randn(2, 1, *CROP)
    batch = {
        "views": torch.stack([x, x], dim=1),
        "boxes": torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]).expand(2, 2, 6).contiguous(),
    }
    out = method(batch)
    assert out.metrics["loss_cva"] == pytest.approx(0.0, abs=1e-5)
    # with a predictor the student is no longer the teacher: the loss is clearly positive
    assert _method(mask_ratio=0.0)(batch).metrics["loss_cva"] > 1e-2


@pytest.mark.parametrize("arch", ["ResEncTiny", "PrimusTiny"])
def test_teacher_is_the_ema_of_the_student_and_gets_no_gradient(arch: str) -> None:
    method = _method(arch, teacher_momentum=0.9).train()
    assert not method.teacher.training
    before = {k: v.clone() for k, v in method.teacher.module.named_parameters()}
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    out = method(_batch())
    assert all(np.isfinite(v) for v in out.metrics.values())
    out.loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    optimizer.step()
    method.on_step_end(0, 10)
    student = dict(method.teacher.student.named_parameters())
    changed = 0
    for name, param in method.teacher.module.named_parameters():
        assert torch.allclose(param, 0.9 * before[name] + 0.1 * student[name], atol=1e-6), name
        changed += int(not torch.equal(param, before[name]))
    assert changed > 0


def test_view_layout_is_checked() -> None:
    check_view_layout(4, 2)
    with pytest.raises(ValueError, match="view 1 ; view 2"):
        check_view_layout(3, 2)
    with pytest.raises(ValueError, match="'views'"):
        _method()({"views": torch.zeros(2, 3, 1, *CROP), "boxes": torch.zeros(2, 3, 6)})


@pytest.mark.parametrize("arch", ["ResEncTiny", "PrimusTiny"])
def test_pretrained_mae_start_loads_backbone_and_mae_head_and_resets_teacher(tmp_path: Path, arch: str, caplog) -> None:
    torch.manual_seed(1)
    mae = MAE(MAEConfig(block_size=8), ARCHITECTURES.get(arch), CROP)
    path = tmp_path / "mae.pth"
    save_checkpoint({"network_weights": mae.backbone().state_dict(), "method_state": mae.state_dict()}, path)
    method = _method(arch, seed=2)
    with caplog.at_level(logging.INFO, logger="nnssl"):
        loaded, not_loaded = load_pretrained_weights(method.backbone(), path)
        method.on_pretrained_weights_loaded(str(path), loaded, not_loaded)
    assert not_loaded == [] and len(loaded) == len(mae.backbone().state_dict())
    for key, value in mae.state_dict().items():  # the whole MAE network, incl. Primus decoder and mask token
        assert torch.equal(method.state_dict()[key], value), key
    report = method.pretrained_report
    assert report["backbone_loaded"] == loaded
    if arch == "PrimusTiny":
        assert "net.mask_token" in report["mae_head_loaded"]
        assert any(k.startswith("net.decoder.") for k in report["mae_head_loaded"])
        assert any(k.startswith("context.") for k in report["fresh"])
    assert any(k.startswith("projector.") for k in report["fresh"])
    assert not any(k.startswith("net.") for k in report["fresh"])
    for name, param in method.teacher.student.state_dict().items():
        assert torch.equal(method.teacher.module.state_dict()[name], param), name
    text = caplog.text
    assert f"loaded {len(loaded)} of {len(loaded)} tensors" in text and "EMA teacher reset to the student" in text


def _synthetic_loader(cfg, transform):
    def make(epoch: int):
        rng = np.random.default_rng(1000 + epoch)

        def batches():
            while True:
                np.random.seed(int(rng.integers(2**31)))
                samples = [
                    transform({"image": rng.normal(size=(1, *cfg.train.patch_size)).astype(np.float32)})
                    for _ in range(cfg.train.batch_size)
                ]
                yield {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}

        return batches()

    return make


def test_checkpoint_with_teacher_resumes_exactly(tmp_path: Path) -> None:
    overrides = [
        "train.patch_size=24,24,24",
        "method.crop_size=16,16,16",
        "method.dense_grid=4",
        "method.roi_grid=3,3,3",
        "method.projector_hidden_dim=32",
        "method.projector_dim=32",
        "method.predictor_hidden_dim=16",
        "train.num_epochs=1",
        "train.iterations_per_epoch=3",
        "train.val_iterations=0",
        "train.precision=fp32",
    ]
    cfg = resolve_config("DemoAlignedMAE_ResEncTiny", overrides)

    def trainer(folder: Path, seed: int, callbacks=()) -> Trainer:
        torch.manual_seed(seed)
        method = AlignedMAE(cfg.method_cfg, ARCHITECTURES.get(cfg.architecture), cfg.train.patch_size)
        make_iter = _synthetic_loader(cfg, method.train_transform())
        return Trainer(method, cfg, make_iter, None, folder, {}, device="cpu", callbacks=callbacks)

    class StopAt(Callback):
        def on_step_end(self, trainer, result) -> None:
            if result.step == 1:
                trainer.request_stop()

    full = trainer(tmp_path / "a", 0)
    assert full.fit()
    first = trainer(tmp_path / "b", 0, callbacks=[StopAt()])
    assert not first.fit()
    resumed = trainer(tmp_path / "b", 7)
    resumed.load_checkpoint(tmp_path / "b" / "checkpoint_latest.pth")
    teacher_keys = [k for k in resumed.method.state_dict() if k.startswith("teacher.")]
    assert teacher_keys
    for key in teacher_keys:  # the teacher comes back from the checkpoint, not from the new student
        assert torch.equal(resumed.method.state_dict()[key], first.method.state_dict()[key]), key
    assert resumed.fit()
    for key, value in full.method.state_dict().items():
        assert torch.equal(value, resumed.method.state_dict()[key]), key
