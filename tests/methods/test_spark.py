"""SparK 3D (CNN only): sparse encoding, masked instance norm, densify, loss support, VariableSpark ratios, presets,
refusal on transformers, and a checkpoint network that is the plain downstream ResEnc."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from nnssl.architectures import ARCHITECTURES, build_network
from nnssl.backbones import build_backbone
from nnssl.backbones.sparse import masked_instance_norm, unit_repeat
from nnssl.config import ConfigError
from nnssl.methods import METHODS
from nnssl.methods.spark import Densify, SparK, SparKConfig
from nnssl.presets import PRESETS, resolve_config

PATCH = (16, 16, 16)


def _spark(patch=PATCH, **cfg) -> SparK:
    torch.manual_seed(0)
    return SparK(SparKConfig(**{"block_size": 4, **cfg}), ARCHITECTURES.get("ResEncTiny"), patch).eval()


def _mask(net, batch: int = 2, ratio: float = 0.5, block: int = 4, seed: int = 3):
    return net.draw_mask(batch, ratio, block, generator=torch.Generator().manual_seed(seed))


def _no_hooks(module: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())


def test_registered() -> None:
    assert METHODS.get("SparK") is SparK and SparK.config_cls is SparKConfig


def test_stages_coarser_than_the_cubes_are_dense_as_upstream() -> None:
    # ResEnc-L at 160^3 with 16^3 cubes (unit grid 10^3): stages 160 ... 5; only the 5^3 bottleneck is dense
    assert [unit_repeat((160 // s,) * 3, (10,) * 3) for s in (1, 2, 4, 8, 16, 32)] == [16, 8, 4, 2, 1, None]
    with pytest.raises(ValueError, match="block_size"):
        unit_repeat((20, 20, 20), (8, 8, 8))  # 12-voxel cubes on a stride-8 map of a 160 patch
    spark = _spark()  # ResEncTiny at 16^3, 4^3 cubes: stages 16, 8, 4, 2 -> repeats 4, 2, 1, dense
    assert [d.mask_token is not None for d in spark.densify] == [True, True, True, False]
    assert [isinstance(d.proj, torch.nn.Conv3d) for d in spark.densify] == [False, True, True, True]


def test_masked_instance_norm_uses_the_statistics_of_the_visible_voxels() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6, 6) * 3 + 1
    active = (torch.rand(2, 1, 6, 6, 6) < 0.4).float()
    norm = torch.nn.InstanceNorm3d(3, affine=True)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.5, 0.5, 2.0]))
        norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    with torch.no_grad():
        out = masked_instance_norm(x, active, norm)
    assert float(out[active.expand_as(out) == 0].abs().max()) == 0.0
    for b in range(2):
        keep = active[b, 0].bool()
        visible = x[b][:, keep]  # (C, L)
        expected = F.instance_norm(visible[None, :, :, None, None], weight=norm.weight, bias=norm.bias, eps=norm.eps)
        assert torch.allclose(out[b][:, keep], expected[0, :, :, 0, 0], atol=1e-5)
        # closed form: the visible voxels' mean and biased variance per channel
        mean = visible.mean(dim=1, keepdim=True)
        var = visible.var(dim=1, unbiased=False, keepdim=True)
        closed = (visible - mean) / torch.sqrt(var + 1e-5) * norm.weight[:, None] + norm.bias[:, None]
        assert torch.allclose(out[b][:, keep], closed, atol=1e-5)


def test_every_encoder_operation_is_zero_at_masked_positions_and_hooks_are_removed() -> None:
    net = build_backbone(ARCHITECTURES.get("ResEncTiny"), 1, PATCH, reconstruction=True)
    mask = _mask(net)
    x = torch.randn(2, 1, *PATCH)
    seen = []
    with torch.no_grad(), net.sparse(mask) as context:
        watched = [
            m.register_forward_hook(lambda mod, args, out: seen.append(out.clone()))
            for m in net.network.encoder.modules()
            if isinstance(m, (torch.nn.Conv3d, torch.nn.InstanceNorm3d, torch.nn.AvgPool3d))
        ]
        net.network.encoder(x * (1 - mask.voxels()))
        for handle in watched:
            handle.remove()
        checked = 0
        for out in seen:
            a = context.active(out.shape[2:])
            if a is not None:
                assert float((out * (1 - a)).abs().max()) == 0.0
                checked += 1
    # every conv, norm and pooling output of the masked stages: stem 2, stage 0 4, stages 1 and 2 7 each (with skip)
    assert checked == 20
    assert _no_hooks(net.network)
    with torch.no_grad():
        features = net.encode_sparse(x, mask)
    assert features.active is not None and len(features.active) == 4
    for m, a in zip(features.maps, features.active):
        assert float((m * (1 - a)).abs().max()) == 0.0
    assert float(features.active[-1].min()) == 1.0  # the dense 2^3 stage
    assert float(features.active[0].mean()) == pytest.approx(0.5)  # 32 of 64 cubes visible
    assert _no_hooks(net.network)


def test_all_visible_sparse_encoding_equals_the_dense_encoder() -> None:
    net = build_backbone(ARCHITECTURES.get("ResEncTiny"), 1, PATCH, reconstruction=True)
    none = net.draw_mask(2, counts=torch.zeros(2, dtype=torch.long), block_size=4)
    x = torch.randn(2, 1, *PATCH)
    with torch.no_grad():
        sparse, dense = net.encode_sparse(x, none).maps, net.encode(x).maps
    assert max(float((s - d).abs().max()) for s, d in zip(sparse, dense)) < 1e-5


def test_sparse_features_do_not_see_masked_content_and_why() -> None:
    """The features of the sparse encoder are a function of the visible voxels only: replacing the content of the
    masked cubes changes no feature anywhere (every stage, bit for bit). Both parts of the construction are needed,
    which the controls show: upstream's SparK3D runs the sparse encoder on the raw input, and then the stem's 3x3x3
    convolution reads one voxel into the masked cubes, so exactly the visible voxels within one voxel (Chebyshev
    distance) of a masked cube change at the stem's output (the receptive field), and every visible feature after
    the first norm; MAE's dense encoder on the masked input depends on the value that fills the masked voxels."""
    net = build_backbone(ARCHITECTURES.get("ResEncTiny"), 1, PATCH, reconstruction=True).eval()
    mask = _mask(net)
    masked = mask.voxels()
    torch.manual_seed(1)
    x = torch.randn(2, 1, *PATCH)
    other = x + masked * 5 * torch.randn_like(x)  # different content in the masked cubes only
    with torch.no_grad():
        a, b = net.encode_sparse(x, mask).maps, net.encode_sparse(other, mask).maps
        assert max(float((p - q).abs().max()) for p, q in zip(a, b)) == 0.0
        # control 1: sparse encoder without zeroing the input (upstream): the stem leaks one voxel deep
        stem = {}
        with net.sparse(mask):  # registered inside: runs after the context's masking hook
            handle = net.network.encoder.stem.convs[0].conv.register_forward_hook(
                lambda mod, args, out: stem.__setitem__(len(stem), out.clone())
            )
            raw_a = net.network.encoder(x)
            raw_b = net.network.encoder(other)
            handle.remove()
        changed = (stem[0] - stem[1]).abs().amax(dim=1, keepdim=True) > 0
        near = F.max_pool3d(masked, 3, stride=1, padding=1) * (1 - masked)  # visible, <= 1 voxel from a masked cube
        assert torch.equal(changed.float(), near)
        visible = 1 - masked
        assert float(((raw_a[0] - raw_b[0]).abs() * visible).max()) > 1e-3
        # control 2: dense encoder on the masked input (MAE's), fill value 0 versus 1 in the masked voxels
        d0 = net.network.encoder(x * visible)[0]
        d1 = net.network.encoder(x * visible + masked)[0]
        assert float(((d0 - d1).abs() * visible).max()) > 1e-3
        s0 = net.encode_sparse(x * visible, mask).maps[0]
        s1 = net.encode_sparse(x * visible + masked, mask).maps[0]
        assert float((s0 - s1).abs().max()) == 0.0


def _loss_with(spark: SparK, x: torch.Tensor, add: str | None, monkeypatch) -> tuple[float, torch.Tensor]:
    captured = {}
    draw, decode = spark.net.draw_mask, spark.net.decode

    def draw_and_keep(*args, **kwargs):
        captured["mask"] = draw(*args, **kwargs)
        return captured["mask"]

    def decode_and_perturb(features):
        prediction = decode(features)
        captured["prediction"] = prediction.detach().clone()
        if add is None:
            return prediction
        masked = captured["mask"].voxels()
        return prediction + 5.0 * (masked if add == "masked" else 1 - masked)

    monkeypatch.setattr(spark.net, "draw_mask", draw_and_keep)
    monkeypatch.setattr(spark.net, "decode", decode_and_perturb)
    torch.manual_seed(7)
    with torch.no_grad():
        loss = float(spark({"image": x}).loss)
    monkeypatch.undo()
    return loss, captured


def test_loss_is_mse_on_masked_voxels_only(monkeypatch) -> None:
    spark = _spark()
    x = torch.randn(2, 1, *PATCH)
    base, captured = _loss_with(spark, x, None, monkeypatch)
    masked = captured["mask"].voxels()
    assert float(masked.mean()) == pytest.approx(math.floor(0.75 * 64) / 64)
    closed = float(((captured["prediction"] - x) ** 2 * masked).sum() / masked.sum())
    assert base == pytest.approx(closed, rel=1e-6)
    assert _loss_with(spark, x, "visible", monkeypatch)[0] == base
    assert _loss_with(spark, x, "masked", monkeypatch)[0] > base + 10.0


def test_prediction_does_not_depend_on_masked_content_only_the_target_does(monkeypatch) -> None:
    spark = _spark()
    x = torch.randn(2, 1, *PATCH)
    _, first = _loss_with(spark, x, None, monkeypatch)
    masked = first["mask"].voxels()
    loss, second = _loss_with(spark, x + masked * torch.randn_like(x), None, monkeypatch)
    assert torch.equal(first["mask"].masked, second["mask"].masked)
    assert float((first["prediction"] - second["prediction"]).abs().max()) == 0.0
    target = x + 0  # the loss changes only through the new target on the masked voxels
    assert loss != pytest.approx(float(((first["prediction"] - target) ** 2 * masked).sum() / masked.sum()))


def test_densify_fills_masked_positions_with_the_stage_token() -> None:
    torch.manual_seed(0)
    feature = torch.randn(2, 4, 4, 4, 4)
    active = (torch.rand(2, 1, 4, 4, 4) < 0.5).float()
    feature = feature * active  # a sparse stage: 0 at masked positions
    token = Densify(4, maskable=True, mode="token", project=True, token_std=0.02)
    assert [n for n, _ in token.named_parameters()] == ["mask_token"]  # EffSpark: no norm, no projection
    out = token(feature, active)
    assert torch.equal(out * active, feature)
    assert torch.allclose(out * (1 - active), (1 - active) * token.mask_token)
    assert float(token.mask_token.abs().max()) <= 0.02  # truncated at +-std as upstream
    full = Densify(4, maskable=True, mode="full", project=False, token_std=0.02)  # the finest stage: no projection
    out = full(feature, active)
    norm = masked_instance_norm(feature, active, torch.nn.InstanceNorm3d(4))
    assert torch.allclose(out * active, norm) and torch.allclose(out * (1 - active), (1 - active) * full.mask_token)


def test_variable_spark_draws_the_ratio_in_its_range_per_step() -> None:
    spark = _spark(mask_ratio_range=(0.6, 0.9))
    torch.manual_seed(0)
    ratios = [spark.draw_ratio() for _ in range(2000)]
    assert 0.6 <= min(ratios) < 0.61 and 0.89 < max(ratios) <= 0.9
    assert sum(r < 0.75 for r in ratios) == pytest.approx(1000, abs=100)  # uniform: half below the middle
    x = torch.randn(2, 1, *PATCH)
    seen = set()
    with torch.no_grad():
        for step in range(3):
            torch.manual_seed(step)
            metrics = spark({"image": x}).metrics
            assert 0.6 <= metrics["mask_ratio"] <= 0.9
            assert metrics["masked_fraction"] == math.floor(metrics["mask_ratio"] * 64 + 1e-9) / 64
            seen.add(metrics["mask_ratio"])
    assert len(seen) == 3
    assert _spark().draw_ratio() == 0.75


def test_presets_carry_upstream_names_and_hyper_parameters() -> None:
    spark = resolve_config("SparkMAETrainer")
    assert (spark.method, spark.architecture, spark.train.patch_size) == ("SparK", "ResEncL", (160, 160, 160))
    assert (spark.optim.name, spark.optim.lr, spark.optim.momentum, spark.train.grad_clip) == ("sgd", 1e-2, 0.99, 12.0)
    assert (spark.train.batch_size, spark.train.num_epochs, spark.train.iterations_per_epoch) == (2, 1000, 250)
    assert spark.method_cfg == SparKConfig()
    assert (spark.method_cfg.mask_ratio, spark.method_cfg.block_size, spark.method_cfg.densify) == (0.75, 16, "full")
    for alias, upstream in (
        ("SparkTrainer", "SparkMAETrainer"),
        ("EffSparkTrainer", "EffSparkMAETrainer"),
        ("VariableSparkTrainer", "BaseVariableSparkMAETrainer"),
    ):
        assert resolve_config(alias).method_cfg == resolve_config(upstream).method_cfg
        assert resolve_config(alias).train == resolve_config(upstream).train
    assert resolve_config("EffSparkTrainer").method_cfg.densify == "token"
    assert resolve_config("VariableSparkTrainer").method_cfg.mask_ratio_range == (0.6, 0.9)
    big = resolve_config("BigVariableSparkMAETrainer")
    assert (big.train.batch_size, big.train.num_epochs, big.optim.lr) == (48, 4000, 3e-2)
    assert resolve_config("SparkMAETrainer_BS8").train.batch_size == 8


def test_spark_is_cnn_only_in_the_list_and_refused_on_transformers() -> None:
    from nnssl.cli.train import format_preset_list

    names = [n for n in PRESETS.names() if resolve_config(n).method == "SparK"]
    assert len(names) >= 12
    assert {resolve_config(n).architecture for n in names} <= {"ResEncL", "ResEncTiny"}
    listing = {line.split()[0]: line for line in format_preset_list().splitlines()[1:]}
    assert all("SparK (CNN only)" in listing[n] for n in names)
    cfg = dataclasses.replace(resolve_config("SparkMAETrainer"), architecture="PrimusM")
    with pytest.raises(ConfigError, match=r"'architecture' = 'PrimusM' is not allowed: .*CNN"):
        cfg.validate()
    with pytest.raises(ValueError, match="CNN-only"):
        SparK(SparKConfig(), ARCHITECTURES.get("PrimusTiny"), (32, 32, 32))
    primus = build_backbone(ARCHITECTURES.get("PrimusTiny"), 1, (16, 16, 16))
    with pytest.raises(NotImplementedError, match="SparK runs on CNN architectures only"):
        primus.encode_sparse(torch.zeros(1, 1, 16, 16, 16), _mask(primus, 1, block=8))


def test_config_validation_names_the_field() -> None:
    base = "DemoSparK_ResEncTiny"
    for override, field in (
        ("method.block_size=12", "method.block_size"),
        ("method.densify=dense", "method.densify"),
        ("method.mask_ratio_range=0.9,0.6", "method.mask_ratio_range"),
        ("method.mask_ratio=1.0", "method.mask_ratio"),
    ):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            resolve_config(base, [override])


def test_checkpoint_network_is_the_plain_downstream_resenc() -> None:
    spark = _spark()
    x = torch.randn(2, 1, *PATCH)
    spark.train()
    spark({"image": x}).loss.backward()  # after a sparse step: no hook, no renamed or added module remains
    state = spark.backbone().state_dict()
    fresh = build_network("ResEncTiny", 1, 1, PATCH)
    assert list(state) == list(fresh.state_dict())
    fresh.load_state_dict(state, strict=True)
    assert _no_hooks(spark.backbone())
    assert not any("densify" in k or "mask_token" in k for k in state)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())
