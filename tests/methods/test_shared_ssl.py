"""Shared pieces of the contrastive/teacher-student methods: the EMA teacher component, DDP ignore list, heads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from nnssl.architectures import ARCHITECTURES
from nnssl.engine.distributed import DistContext, destroy_process_group, init_process_group, spawn
from nnssl.engine.trainer import ddp_ignored_names
from nnssl.methods.base import SSLMethod
from nnssl.methods.heads import FeatureNorm, GlobalBatchNorm1d, PredictorHead, ProjectionHead
from nnssl.methods.teacher import EMATeacher, cosine_momentum, ema_update_, make_teacher


class _WithTeacher(SSLMethod):
    config_cls = dict

    def __init__(self) -> None:
        super().__init__({}, ARCHITECTURES.get("ResEncTiny"), (16, 16, 16))
        torch.manual_seed(0)
        self.student = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        self.teacher = EMATeacher(self.student, 0.9)

    def forward(self, batch):
        return self.student(batch["x"]).pow(2).mean()


def test_teacher_is_a_frozen_eval_copy() -> None:
    method = _WithTeacher()
    assert not method.teacher.training
    assert all(not p.requires_grad for p in method.teacher.parameters())
    for (_, s), (_, t) in zip(method.student.state_dict().items(), method.teacher.state_dict().items()):
        torch.testing.assert_close(s, t)
    assert all(n.startswith("teacher.") for n in ddp_ignored_names(method))
    names = ddp_ignored_names(method)
    assert "teacher.module.1.running_mean" in names and "teacher.module.0.weight" in names
    assert not any(n.startswith("student") for n in ddp_ignored_names(method))


def test_ema_step_is_exact_and_the_teacher_gets_no_gradient() -> None:
    method = _WithTeacher()
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    old = {k: v.clone() for k, v in method.teacher.module.named_parameters()}
    old_buffers = {k: v.clone() for k, v in method.teacher.module.named_buffers()}
    loss = method({"x": torch.randn(8, 4)})
    loss.backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    opt.step()
    m = 0.9
    method.on_step_end(0, 10)  # the base class updates every EMATeacher
    for name, p in method.teacher.module.named_parameters():
        expected = m * old[name] + (1 - m) * dict(method.student.named_parameters())[name].detach()
        torch.testing.assert_close(p, expected, rtol=0, atol=1e-7)
    assert not torch.equal(method.teacher.module[0].weight, old["0.weight"])  # the student moved, so did the teacher
    for name, b in method.teacher.module.named_buffers():  # buffers are not averaged
        torch.testing.assert_close(b, old_buffers[name])


def test_teacher_schedule_reset_and_eval_mode() -> None:
    student = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    constant, cosine = EMATeacher(student, 0.9), EMATeacher(student, 0.992, final_momentum=1.0)
    assert constant.momentum_at(0, 10) == constant.momentum_at(9, 10) == 0.9
    assert cosine.momentum_at(0, 10) == pytest.approx(0.992) and cosine.momentum_at(9, 10) == pytest.approx(1.0)
    with torch.no_grad():
        student[0].weight.add_(1.0)  # e.g. pretrained weights loaded after construction
    assert not torch.equal(constant.module[0].weight, student[0].weight)
    constant.reset()
    assert torch.equal(constant.module[0].weight, student[0].weight)
    constant.train()
    assert not constant.training and not constant.module[1].training
    assert "student" not in dict(constant.named_modules()) and len(constant.state_dict()) == 2
    with pytest.raises(ValueError, match="momentum"):
        EMATeacher(student, 1.5)


def test_ema_rejects_foreign_students() -> None:
    with pytest.raises(KeyError, match="no parameter"):
        ema_update_(make_teacher(nn.Linear(2, 2)), nn.Sequential(nn.Linear(2, 2)), 0.9)


def test_cosine_momentum_endpoints() -> None:
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(99, 100, 0.996) == pytest.approx(1.0)
    assert cosine_momentum(500, 100, 0.99, 0.999) == pytest.approx(0.999)
    mid = cosine_momentum(50, 101, 0.9)
    assert mid == pytest.approx(0.95)
    assert cosine_momentum(0, 1, 0.99) == 0.99


def _ddp_ignore_worker(ctx: DistContext, out: Path) -> None:
    init_process_group(ctx, "cpu")
    try:
        from torch.nn.parallel import DistributedDataParallel

        method = _WithTeacher()
        with torch.no_grad():  # ranks disagree about the teacher: DDP must not broadcast it
            for p in method.teacher.parameters():
                p.fill_(float(ctx.rank + 1))
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(method, ddp_ignored_names(method))
        model = DistributedDataParallel(method)
        model({"x": torch.randn(4, 4)}).backward()
        torch.save({k: v for k, v in method.state_dict().items()}, out / f"rank{ctx.rank}.pt")
    finally:
        destroy_process_group()


@pytest.mark.ddp
def test_ddp_leaves_the_teacher_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MASTER_PORT", raising=False)
    spawn(_ddp_ignore_worker, 2, (tmp_path,))
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert float(states[0]["teacher.module.0.weight"].mean()) == 1.0
    assert float(states[1]["teacher.module.0.weight"].mean()) == 2.0


def test_projection_head_layout_init_and_norms() -> None:
    head = ProjectionHead(10, 16, 8, num_layers=3, norm="batch_no_stats", act="silu")
    kinds = [type(m).__name__ for m in head.layers]
    norm = "GlobalBatchNorm1d"
    assert kinds == ["Linear", norm, "SiLU", "Linear", norm, "SiLU", "Linear", norm]
    assert all(not m.track_running_stats and not m.affine for m in head.layers if isinstance(m, nn.BatchNorm1d))
    linears = [m for m in head.layers if isinstance(m, nn.Linear)]
    assert all(float(m.bias.abs().max()) == 0 for m in linears)
    assert all(float(m.weight.abs().max()) <= 0.04 for m in linears)
    assert 0.01 < float(linears[1].weight.std()) < 0.02  # truncated at 2 std: std ~0.0176
    no_last = ProjectionHead(10, 16, 8, num_layers=2, norm="feature", act="relu", last_norm=False)
    assert [type(m).__name__ for m in no_last.layers] == ["Linear", "FeatureNorm", "ReLU", "Linear"]
    x = torch.randn(5, 7, 10)
    assert no_last(x).shape == (5, 7, 8)
    head.eval()  # batch statistics also in eval mode
    y = torch.randn(6, 10)
    assert head(y).mean(0).abs().max() < 1e-5
    with pytest.raises(ValueError, match="normalisation"):
        ProjectionHead(4, 4, 4, norm="layer")


def test_feature_norm_matches_instance_norm_on_rows() -> None:
    x = torch.randn(4, 32) * 3 + 1
    expected = nn.InstanceNorm1d(4)(x.unsqueeze(0)).squeeze(0)  # (1, N, C): each row normalised over C
    torch.testing.assert_close(FeatureNorm()(x), expected, rtol=1e-4, atol=1e-5)


def test_predictor_head() -> None:
    head = PredictorHead(8, 4, 8)
    assert [type(m).__name__ for m in head.layers] == ["Linear", "GlobalBatchNorm1d", "SiLU", "Linear"]
    assert head(torch.randn(3, 8)).shape == (3, 8)


def _rows(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(rank)
    return torch.randn(3 - rank, 5, generator=gen) * 2 + 1, torch.randn(3 - rank, 5, generator=gen)


def _global_bn_worker(ctx: DistContext, out: Path) -> None:
    torch.set_num_threads(1)
    init_process_group(ctx, "cpu")
    try:
        results = {}
        for affine in (False, True):
            torch.manual_seed(0)
            norm = GlobalBatchNorm1d(5, affine=affine, track_running_stats=affine)
            x, weight = _rows(ctx.rank)
            x.requires_grad_(True)
            y = norm(x)
            (y * weight).sum().backward()
            results[affine] = {"y": y.detach(), "grad": x.grad, "state": norm.state_dict()}
            if not affine:  # without running statistics, eval mode (an EMA teacher) uses global statistics too
                results["eval"] = norm.eval()(x.detach())
        torch.save(results, out / f"rank{ctx.rank}.pt")
    finally:
        destroy_process_group()


@pytest.mark.ddp
def test_global_batch_norm_over_two_processes_equals_batch_norm_over_all_rows(tmp_path: Path, monkeypatch) -> None:
    """Rows split 3 + 2 over two ranks: outputs, input gradients and running statistics equal BatchNorm1d on the 5."""
    monkeypatch.delenv("MASTER_PORT", raising=False)
    spawn(_global_bn_worker, 2, (tmp_path,))
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    xs, weights = zip(*[_rows(r) for r in range(2)])
    for affine in (False, True):
        torch.manual_seed(0)
        reference = nn.BatchNorm1d(5, affine=affine, track_running_stats=affine)
        x = torch.cat(xs).requires_grad_(True)
        y = reference(x)
        (y * torch.cat(weights)).sum().backward()
        torch.testing.assert_close(torch.cat([g[affine]["y"] for g in got]), y.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.cat([g[affine]["grad"] for g in got]), x.grad, rtol=1e-4, atol=1e-6)
        for key, value in reference.state_dict().items():
            for g in got:
                torch.testing.assert_close(g[affine]["state"][key], value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([g["eval"] for g in got]), torch.cat([g[False]["y"] for g in got]))


def test_global_batch_norm_is_batch_norm_in_one_process() -> None:
    torch.manual_seed(0)
    ours, reference = GlobalBatchNorm1d(4), nn.BatchNorm1d(4)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(6, 4)
    torch.testing.assert_close(ours(x), reference(x))
    torch.testing.assert_close(ours.running_var, reference.running_var)
