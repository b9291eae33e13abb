"""A tiny conv autoencoder method and synthetic batches for engine tests (no data path, no real architectures)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from nnssl.architectures.spec import ArchitectureSpec
from nnssl.config import RunConfig
from nnssl.methods import METHODS
from nnssl.methods.base import SSLMethod, StepOutput
from nnssl.presets import PRESETS, Preset, add_preset, resolve_config

PATCH = (8, 8, 8)


@dataclass
class ToyConfig:
    """Toy hyper-parameters; ``nan_at_calls`` makes training forward calls with these indices return NaN."""

    width: int = 4
    mask_ratio: float = 0.5
    nan_at_calls: tuple[int, ...] = ()
    nan_in_gradient: bool = False
    fixed_mask: bool = False


class ToyAE(SSLMethod):
    """Masked reconstruction with two 3D convolutions; the mask comes from torch's global RNG."""

    config_cls = ToyConfig

    def __init__(self, cfg, arch, patch_size, in_channels=1):
        super().__init__(cfg, arch, patch_size, in_channels)
        self.encoder = nn.Sequential()
        self.encoder.add_module("stem", nn.Conv3d(in_channels, cfg.width, 3, padding=1))
        self.encoder.add_module("act", nn.ReLU())
        self.decoder = nn.Conv3d(cfg.width, in_channels, 3, padding=1)
        self.calls = 0

    def forward(self, batch):
        x = batch["image"]
        if self.cfg.fixed_mask:
            grid = torch.stack(torch.meshgrid(*[torch.arange(s, device=x.device) for s in x.shape[2:]], indexing="ij"))
            keep = (grid.sum(0) % 2).to(x.dtype).expand_as(x)
        else:
            keep = (torch.rand(x.shape, device=x.device) > self.cfg.mask_ratio).to(x.dtype)
        rec = self.decoder(self.encoder(x * keep))
        loss = (((rec - x) ** 2) * (1 - keep)).mean()
        if self.training:
            if self.calls in self.cfg.nan_at_calls:
                if self.cfg.nan_in_gradient:
                    loss = loss + 0.0 * torch.sqrt(self.decoder.bias.sum() - self.decoder.bias.sum())
                else:
                    loss = loss * float("nan")
            self.calls += 1
        return StepOutput(loss=loss, metrics={"masked_fraction": float(1 - keep.mean())})

    def backbone(self):
        return self.encoder


TOY_ARCH = ArchitectureSpec(
    name="Toy",
    build=lambda i, o, p: nn.Conv3d(i, o, 1),
    arch_class_name="Toy",
    key_to_encoder="encoder",
    key_to_stem="encoder.stem",
    keys_to_in_proj=("encoder.stem",),
    patch_multiple=1,
    tiny=True,
)

if "Toy" not in METHODS:
    METHODS.add("Toy", ToyAE)
if "ToyPreset" not in PRESETS:
    add_preset(
        Preset(
            "ToyPreset",
            method="Toy",
            architecture="ResEncTiny",
            overrides={
                "train.patch_size": PATCH,
                "train.batch_size": 2,
                "train.num_epochs": 2,
                "train.iterations_per_epoch": 3,
                "train.val_iterations": 2,
                "optim.lr": 0.05,
                "optim.momentum": 0.9,
            },
        )
    )


def toy_config(*overrides: str) -> RunConfig:
    return resolve_config("ToyPreset", list(overrides))


def make_method(cfg: RunConfig, init_seed: int = 0) -> ToyAE:
    torch.manual_seed(init_seed)
    return ToyAE(cfg.method_cfg, TOY_ARCH, cfg.train.patch_size)


def synthetic_batches(seed: int, batch_size: int, patch=PATCH) -> Iterator[dict]:
    """An infinite stream of smooth random volumes that is a pure function of ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn((batch_size, 1, *patch), generator=gen)
        yield {"image": torch.nn.functional.avg_pool3d(x, 3, 1, 1)}


def train_iter_factory(cfg: RunConfig, rank: int = 0, batch_size: int | None = None):
    bs = batch_size or cfg.train.batch_size
    return lambda epoch: synthetic_batches(1000 * epoch + 17 * rank + cfg.train.seed, bs)


def val_iter_factory(cfg: RunConfig):
    return lambda: synthetic_batches(99, cfg.train.batch_size)


ADAPTATION_PLAN = {"architecture_plans": {"arch_class_name": "Toy"}, "key_to_encoder": "encoder"}
