"""PCRLv2's feature-comparison losses (Zhou et al. 2023, "A Unified Visual Information Preservation Framework for
Self-supervised Pre-training in Medical Image Analysis", TPAMI; methods.md 4.10).

Per decoder scale ``s`` every view ``v`` has an embedding ``z_v = BN(GAP(f_v))`` and a prediction ``p_v = h(z_v)``.
The symmetric, stop-gradient (SimSiam/BYOL-style) term of two views is

    D(v, w) = 1 - (cos(p_v, sg z_w) + cos(p_w, sg z_v)) / 2,

i.e. the reference's ``-(cos + cos) / 2`` shifted by 1 (the same gradients; 0 for identical embeddings with an
identity predictor, 2 for opposite ones; BYOL's ``2 - 2 cos`` is twice one half of it). Averaged over the batch and
over the scales (the reference draws one random scale per term; the mean over scales is that estimator's
expectation and gives every scale's heads a gradient in every step, which DDP without unused-parameter search needs):

    L_global = mean_s D_s(A, B),
    L_local  = mean_s (1 / 2L) sum_{i=1..L} [D_s(A, l_i) + D_s(B, l_i)],

each local crop ``l_i`` of an image paired with that image's globals and counted exactly once (the PCRLv2 code
averages over the 2L terms as here; upstream nnssl sums them and indexes the same local crop in every iteration).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def symmetric_negative_cosine(
    p_v: torch.Tensor, z_v: torch.Tensor, p_w: torch.Tensor, z_w: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """``1 - (cos(p_v, sg z_w) + cos(p_w, sg z_v)) / 2`` per row of the leading axes, in fp32."""
    with torch.autocast(device_type=p_v.device.type, enabled=False):
        a = F.cosine_similarity(p_v.float(), z_w.detach().float(), dim=-1, eps=eps)
        b = F.cosine_similarity(p_w.float(), z_v.detach().float(), dim=-1, eps=eps)
        return 1.0 - 0.5 * (a + b)


def pcrlv2_similarity_losses(
    global_a: Sequence[tuple[torch.Tensor, torch.Tensor]],
    global_b: Sequence[tuple[torch.Tensor, torch.Tensor]],
    local: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_global, L_local)`` from per-scale ``(z, p)`` pairs: globals (B, C_s), locals (B, L, C_s).

    Each scale's terms are averaged over the batch; the local term of image ``b`` and crop ``i`` compares
    ``local[s][k][b, i]`` with the globals of image ``b`` only.
    """
    if not (len(global_a) == len(global_b) == len(local)) or not global_a:
        raise ValueError("PCRLv2 needs the same, non-zero number of scales for both globals and the locals.")
    g_terms, l_terms = [], []
    for (z_a, p_a), (z_b, p_b), (z_l, p_l) in zip(global_a, global_b, local):
        g_terms.append(symmetric_negative_cosine(p_a, z_a, p_b, z_b).mean())
        za, pa, zb, pb = (t.unsqueeze(1).expand_as(z_l) for t in (z_a, p_a, z_b, p_b))
        per_local = 0.5 * (symmetric_negative_cosine(pa, za, p_l, z_l) + symmetric_negative_cosine(pb, zb, p_l, z_l))
        l_terms.append(per_local.mean())  # mean over images and over the L crops: each crop once
    return torch.stack(g_terms).mean(), torch.stack(l_terms).mean()
