"""Checkpoint files: each tensor stored once, checksums, a full disk, leftovers of killed saves, weights-only export."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from engine_toy import ADAPTATION_PLAN, make_method, toy_config, train_iter_factory, val_iter_factory

from nnssl.config import architecture_of
from nnssl.engine import Trainer
from nnssl.engine import checkpoint as checkpoint_module
from nnssl.engine.checkpoint import (
    CHECKSUM_KEY,
    CheckpointError,
    load_checkpoint,
    remove_temporary_checkpoints,
    tensor_checksum,
)
from nnssl.engine.export import export_weights, load_exported_weights
from nnssl.methods import METHODS
from nnssl.presets import resolve_config
from nnssl.serialization import TEMP_MARKER


def _toy_trainer(folder: Path, *overrides: str) -> Trainer:
    cfg = toy_config(*overrides)
    return Trainer(
        make_method(cfg), cfg, train_iter_factory(cfg), val_iter_factory(cfg), folder, ADAPTATION_PLAN, device="cpu"
    )


def _method_trainer(preset: str, folder: Path, patch: int, *overrides: str) -> Trainer:
    """A real method on CPU whose optimizer state exists (one step with zero gradients)."""
    cfg = resolve_config(preset, [f"train.patch_size={patch},{patch},{patch}", *overrides])
    torch.manual_seed(0)
    method = METHODS.get(cfg.method)(cfg.method_cfg, architecture_of(cfg), cfg.train.patch_size)
    trainer = Trainer(method, cfg, lambda epoch: iter(()), None, folder, {"toy": True}, device="cpu")
    for p in method.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    trainer.optimizer.step()
    return trainer


def _unique_bytes(tensors) -> int:
    storages = {}
    for t in tensors:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def _optimizer_bytes(trainer: Trainer) -> int:
    return sum(
        t.nbytes for state in trainer.optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)
    )


def test_each_tensor_is_stored_once(tmp_path: Path) -> None:
    trainer = _method_trainer("DemoMAE_ResEncTiny", tmp_path, 32)
    method = trainer.method
    # ResEnc's decoder holds the encoder, and the backbone is inside the method: the state dicts repeat tensors
    state = method.state_dict()
    keys_total = sum(t.nbytes for t in state.values())
    weights = _unique_bytes(method.state_dict().values())
    assert keys_total > 1.5 * weights
    path = trainer.save_checkpoint("checkpoint_latest.pth")
    expected = weights + _optimizer_bytes(trainer)
    size = path.stat().st_size
    assert size < 1.1 * expected, (size, expected)  # the old key-by-key copies wrote about 2.7x this
    loaded = torch.load(path, weights_only=True)
    backbone_key = next(k for k in loaded["network_weights"] if k.startswith("encoder.stem"))
    method_key = next(k for k in loaded["method_state"] if k.endswith(backbone_key))
    assert loaded["network_weights"][backbone_key].data_ptr() == loaded["method_state"][method_key].data_ptr()


def test_checksum_detects_a_flipped_byte_and_keeps_the_file(tmp_path: Path) -> None:
    trainer = _toy_trainer(tmp_path)
    path = trainer.save_checkpoint("checkpoint_latest.pth")
    checkpoint = load_checkpoint(path)
    assert checkpoint[CHECKSUM_KEY]["value"] == tensor_checksum(checkpoint)
    with zipfile.ZipFile(path) as archive:
        record = max(
            (i for i in archive.infolist() if "/data/" in i.filename and i.compress_type == zipfile.ZIP_STORED),
            key=lambda i: i.file_size,
        )
        offset = record.header_offset
    raw = bytearray(path.read_bytes())
    name_length = int.from_bytes(raw[offset + 26 : offset + 28], "little")
    extra_length = int.from_bytes(raw[offset + 28 : offset + 30], "little")
    position = offset + 30 + name_length + extra_length + record.file_size // 2  # inside the tensor's bytes
    raw[position] ^= 0x10
    path.write_bytes(bytes(raw))
    torch.load(path, weights_only=True)  # torch itself does not notice
    with pytest.raises(CheckpointError, match="is corrupted: its tensors do not match the checksum"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="corrupted"):
        _toy_trainer(tmp_path / "other").load_checkpoint(path)
    assert path.read_bytes() == bytes(raw)


def _fill_free_space(monkeypatch, free: int) -> None:
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda _: usage._replace(free=free))


def test_full_disk_during_save_is_named_and_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    trainer = _toy_trainer(tmp_path)
    good = trainer.save_checkpoint("checkpoint_latest.pth")
    original = good.read_bytes()
    real_save = torch.save
    # torch's C++ writer on a full device: a RuntimeError without errno ("unexpected pos ...")
    monkeypatch.setattr(checkpoint_module.torch, "save", lambda obj, f: real_save(obj, "/dev/full"))
    _fill_free_space(monkeypatch, 1000)
    with pytest.raises(CheckpointError) as info:
        trainer.save_checkpoint("checkpoint_latest.pth")
    message = str(info.value)
    assert f"checkpoint_latest.pth was not saved: no space left on {tmp_path}" in message
    assert "The previous checkpoint_latest.pth was kept" in message and "--c" in message
    assert good.read_bytes() == original
    assert not list(tmp_path.glob(f"*{TEMP_MARKER}*"))


def test_enospc_is_reported_and_other_errors_pass_through(tmp_path: Path, monkeypatch) -> None:
    trainer = _toy_trainer(tmp_path)

    def enospc(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", enospc)
    with pytest.raises(CheckpointError, match="no space left on .*No earlier checkpoint_best.pth exists"):
        trainer.save_checkpoint("checkpoint_best.pth")

    def permission(obj, f):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(checkpoint_module.torch, "save", permission)
    with pytest.raises(PermissionError):
        trainer.save_checkpoint("checkpoint_best.pth")


def _mount_tmpfs(folder: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return result.returncode == 0


def test_real_full_disk_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    """On a real 1 MiB file system (tmpfs, needs root): the second save of a 0.6 MB checkpoint cannot fit."""
    small = tmp_path / "small_disk"
    if not _mount_tmpfs(small, "1m"):
        pytest.skip("needs root and mount to build a small file system")
    try:
        trainer = _toy_trainer(small, "method.width=2800")
        first = trainer.save_checkpoint("checkpoint_latest.pth")
        size = first.stat().st_size
        assert 500_000 < size < 1_000_000
        original = first.read_bytes()
        trainer.global_step += 1
        with pytest.raises(CheckpointError, match=f"no space left on {small}"):
            trainer.save_checkpoint("checkpoint_latest.pth")
        assert first.read_bytes() == original
        assert sorted(p.name for p in small.iterdir()) == ["checkpoint_latest.pth"]
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_leftover_temporary_checkpoints_are_removed(tmp_path: Path) -> None:
    leftovers = [
        tmp_path / f"checkpoint_latest{TEMP_MARKER}-0123abcd.pth",
        tmp_path / f"checkpoint_final{TEMP_MARKER}-x.pth",
    ]
    for path in leftovers:
        path.write_bytes(b"partial")
    kept = [tmp_path / "checkpoint_latest.pth", tmp_path / f"metrics{TEMP_MARKER}-1.jsonl"]
    for path in kept:
        path.write_bytes(b"x")
    assert sorted(remove_temporary_checkpoints(tmp_path)) == sorted(leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_only_export(tmp_path: Path, suffix: str) -> None:
    trainer = _method_trainer("DemoMAE_ResEncTiny", tmp_path, 32)
    trainer.adaptation_plan = {"architecture_plans": {"arch_class_name": "ResidualEncoderUNet"}, "key_to_encoder": "x"}
    source = trainer.save_checkpoint("checkpoint_final.pth")
    out = export_weights(source, tmp_path / f"export{suffix}")
    exported = load_exported_weights(out)
    original = load_checkpoint(source)
    assert set(exported) >= {"network_weights", "nnssl_adaptation_plan", "config"}
    assert "optimizer_state" not in exported and "method_state" not in exported
    assert exported["nnssl_adaptation_plan"] == original["nnssl_adaptation_plan"]
    assert exported["config"] == original["config"]
    assert sorted(exported["network_weights"]) == sorted(original["network_weights"])
    for key, value in original["network_weights"].items():
        assert torch.equal(exported["network_weights"][key], value), key
    weights = _unique_bytes(original["network_weights"].values())
    assert out.stat().st_size < 1.1 * weights + 100_000  # each tensor once, no optimizer state
    assert out.stat().st_size < 0.6 * source.stat().st_size
    if suffix == ".pth":
        plain = torch.load(out, weights_only=True)  # what nnU-Net's PretrainedTrainer does
        assert set(plain) == {"network_weights", "nnssl_adaptation_plan", "config", CHECKSUM_KEY}


def test_export_cli(tmp_path: Path, capsys) -> None:
    from nnssl.cli.export_weights import main

    trainer = _toy_trainer(tmp_path)
    source = trainer.save_checkpoint("checkpoint_final.pth")
    assert main([str(source), str(tmp_path / "w.pth"), "--no_config"]) == 0
    assert "config" not in torch.load(tmp_path / "w.pth", weights_only=True)
    assert main([str(tmp_path / "missing.pth"), str(tmp_path / "w2.pth")]) == 1
    assert "nnssl_export_weights: error:" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "patch"), [("BaseMAETrainer", 160), ("BaseEvaMAETrainer", 160)])
def test_full_size_checkpoint_is_weights_plus_optimizer_state(tmp_path: Path, preset: str, patch: int) -> None:
    """Full-size ResEnc-L / Primus-M MAE: the file is within 1.1x of (weights + optimizer state) from the counts."""
    trainer = _method_trainer(preset, tmp_path, patch)
    params = sum(p.numel() for p in trainer.method.parameters())
    # parameters the method never uses (ResEnc-L's deep-supervision heads) are frozen: no optimizer state
    trainable = sum(p.numel() for p in trainer.method.parameters() if p.requires_grad)
    buffers = _unique_bytes(trainer.method.buffers())
    moments = 1 if trainer.cfg.optim.name == "sgd" else 2
    expected = 4 * params + 4 * trainable * moments + buffers
    assert _optimizer_bytes(trainer) >= 4 * trainable * moments  # the step created the state
    path = trainer.save_checkpoint("checkpoint_latest.pth")
    assert path.stat().st_size < 1.1 * expected, (path.stat().st_size / 2**20, expected / 2**20)
