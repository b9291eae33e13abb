"""Fixed synthetic batches and a fixed protocol for method-level loss regression tests.

``reference_loss(method_name, architecture)`` builds the method from its ``Demo<method>_<architecture>`` preset
(torch seeded before construction, so the initial weights are fixed), feeds it a synthetic batch drawn from a
seeded torch generator (no loader, no transforms: the numbers depend on the method alone) and returns the
training-mode loss (torch seeded again right before the forward, so masks are fixed too).

``tests/methods/reference_losses.json`` holds the values recorded on main at 1d5829a, before the methods were
rewritten on the backbone interface (issue 7), with one deliberate difference: the Primus MAE/AlignedMAE token
draw was patched to the unified mask convention (the ``floor(r N)`` units with the lowest noise are masked; the old
draw *kept* the ``n_keep`` lowest), which has the same distribution. ``test_method_equivalence.py`` checks the
current code against them. Regenerate only for an intended change of a method's loss, and say why in the commit:
``python tests/methods/reference_batches.py > tests/methods/reference_losses.json``.
"""

from __future__ import annotations

import json

import torch

from nnssl.config import architecture_of
from nnssl.methods import METHODS
from nnssl.presets import resolve_config

METHOD_NAMES = ("MAE", "SimCLR", "VoCo", "DINO", "AlignedMAE")
ARCHITECTURE_NAMES = ("ResEncTiny", "PrimusTiny")
BATCH = 2
#: Settings that restore the behaviour of 1d5829a where a default changed on purpose later (issue 13: no
#: normalisation after the last projector layer of SimCLR and VoCo; mean instead of Sinkhorn centring for DINOv2),
#: so the recorded values keep proving the rewrite. Keys: method, or method/architecture.
RECORDED_BEHAVIOUR = {
    "SimCLR": ["method.head_last_norm=true"],
    "VoCo": ["method.head_last_norm=true"],
    "DINO/PrimusTiny": ["method.centering=sinkhorn"],
}
BUILD_SEED = 1234
FORWARD_SEED = 99


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def synthetic_batch(method_name: str, method, cfg) -> dict[str, torch.Tensor]:
    """A batch with the keys and shapes ``method`` reads, drawn from a fixed generator."""
    gen = torch.Generator().manual_seed(7)
    mcfg = cfg.method_cfg
    if method_name == "MAE":
        return {"image": _randn(gen, BATCH, 1, *cfg.train.patch_size)}
    if method_name == "SimCLR":
        return {"views": _randn(gen, BATCH, 2 * mcfg.crops_per_image, 1, *mcfg.crop_size)}
    if method_name == "VoCo":
        n, t = method.num_bases, mcfg.num_targets
        overlap = torch.rand(BATCH, t, n, generator=gen)
        overlap = torch.where(overlap > 0.7, overlap, torch.zeros_like(overlap))
        overlap = overlap / overlap.sum(dim=2, keepdim=True).clamp_min(1e-6)
        return {"views": _randn(gen, BATCH, n + t, 1, *mcfg.crop_size), "overlap": overlap}
    if method_name == "DINO":
        g, loc = mcfg.global_crop_size, mcfg.local_crop_size
        return {
            "global_views": _randn(gen, BATCH, 2, 1, g, g, g),
            "local_views": _randn(gen, BATCH, mcfg.num_local_crops, 1, loc, loc, loc),
        }
    if method_name == "AlignedMAE":
        lo = 0.2 + 0.2 * torch.rand(BATCH, 3, generator=gen)
        boxes = torch.stack([torch.cat([lo, torch.ones_like(lo)], 1), torch.cat([torch.zeros_like(lo), 1 - lo], 1)], 1)
        return {"views": _randn(gen, BATCH, 2, 1, *mcfg.crop_size), "boxes": boxes}
    raise KeyError(method_name)


def build(method_name: str, architecture: str):
    """``(method, cfg)`` of the Demo preset of ``method_name`` on ``architecture``, built under a fixed seed."""
    recorded = RECORDED_BEHAVIOUR.get(f"{method_name}/{architecture}", RECORDED_BEHAVIOUR.get(method_name, []))
    cfg = resolve_config(f"Demo{method_name}_{architecture}", recorded)
    torch.manual_seed(BUILD_SEED)
    method = METHODS.get(cfg.method)(cfg.method_cfg, architecture_of(cfg), cfg.train.patch_size)
    method.configure_schedule(10, 100)
    return method, cfg


def reference_loss(method_name: str, architecture: str) -> float:
    """The training-mode loss of the fixed protocol (see the module docstring)."""
    method, cfg = build(method_name, architecture)
    batch = synthetic_batch(method_name, method, cfg)
    method.train()
    torch.manual_seed(FORWARD_SEED)
    return float(method(batch).loss)


if __name__ == "__main__":
    values = {f"{m}/{a}": reference_loss(m, a) for m in METHOD_NAMES for a in ARCHITECTURE_NAMES}
    print(json.dumps(values, indent=1, sort_keys=True))  # noqa: T201
