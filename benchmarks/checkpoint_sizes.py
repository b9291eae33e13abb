"""Checkpoint sizes of full-size presets, before and after storing each tensor once (not a test).

For every preset: the method is built on the CPU with its preset patch size, every trainable parameter gets a
zero gradient and the preset's optimizer takes one step (that creates its state: SGD momentum, AdamW's two
moments). Then, with ``torch.save`` into a byte counter (nothing written to disk):

- ``before``: the payload as it was built before (every entry of ``network_weights`` and ``method_state`` an
  own copy: ResEnc's decoder holds the encoder, and the backbone is in both dicts), computed as the sum of the
  bytes of every entry plus the bytes ``torch.save`` writes for the rest of the payload;
- ``after``: the payload :meth:`nnssl.engine.Trainer.checkpoint_payload` builds now, saved for real;
- ``expected``: 4 bytes x (parameters x (1 + optimizer moments)) + buffers, from the counts;
- ``export``: ``nnssl_export_weights`` (network_weights + adaptation plan + config).

    python benchmarks/checkpoint_sizes.py [PRESET ...]
"""

from __future__ import annotations

import gc
import sys

import torch

from nnssl.architectures import ARCHITECTURES
from nnssl.engine import Trainer
from nnssl.engine.export import export_payload
from nnssl.methods import METHODS
from nnssl.presets import resolve_config

PRESETS = ("BaseMAETrainer", "BaseEvaMAETrainer", "DINOResEncTrainer", "DINOv2EvaTrainer", "DINOTrainer")


class ByteCounter:
    """A write-only file object that counts bytes."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> int:
        self.n += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def saved_bytes(obj: object) -> int:
    counter = ByteCounter()
    torch.save(obj, counter)
    return counter.n


def mib(n: float) -> str:
    return f"{n / 2**20:8.0f} MiB"


def measure(preset: str) -> None:
    cfg = resolve_config(preset)
    torch.manual_seed(0)
    method = METHODS.get(cfg.method)(cfg.method_cfg, ARCHITECTURES.get(cfg.architecture), cfg.train.patch_size)
    trainer = Trainer(method, cfg, lambda epoch: iter(()), None, "/nonexistent", {"benchmark": True}, device="cpu")
    trainable = [p for p in method.parameters() if p.requires_grad]
    for p in trainable:
        p.grad = torch.zeros_like(p)
    trainer.optimizer.step()
    payload = trainer.checkpoint_payload()
    after = saved_bytes(payload)
    entries = sum(t.nbytes for key in ("network_weights", "method_state") for t in payload[key].values())
    rest = saved_bytes({k: v for k, v in payload.items() if k not in ("network_weights", "method_state")})
    before = entries + rest
    params = sum(p.numel() for p in method.parameters())
    moments = 1 if cfg.optim.name == "sgd" else 2
    buffers = {b.untyped_storage().data_ptr(): b.nbytes for b in method.buffers()}
    expected = 4 * (params + moments * sum(p.numel() for p in trainable)) + sum(buffers.values())
    export = saved_bytes(export_payload(payload))
    backbone = sum(
        t.nbytes for t in {t.untyped_storage().data_ptr(): t for t in method.backbone().state_dict().values()}.values()
    )
    print(
        f"{preset:20s} {cfg.method:4s} {cfg.architecture:8s} patch {cfg.train.patch_size} | "
        f"params {params / 1e6:7.2f} M ({cfg.optim.name}) | before {mib(before)} | after {mib(after)} "
        f"({before / after:.2f}x smaller) | "
        f"expected {mib(expected)} (after/expected {after / expected:.3f}) | backbone weights {mib(backbone)} | "
        f"export {mib(export)}",
        flush=True,
    )
    del trainer, method, payload
    gc.collect()


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    for preset in argv or PRESETS:
        measure(preset)


if __name__ == "__main__":
    main(sys.argv[1:])
