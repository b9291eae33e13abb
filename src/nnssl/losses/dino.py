"""DINO / iBOT / KoLeo losses (DINOv2-style self-distillation), all computed in fp32.

Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers" (DINO); Zhou et al. 2022,
"iBOT: Image BERT Pre-Training with Online Tokenizer"; Oquab et al. 2024, "DINOv2: Learning Robust Visual
Features without Supervision" (KoLeo: Sablayrolles et al. 2019, "Spreading vectors for similarity search").
Formulas as in methods.md 2.2; ``t`` teacher logits, ``s`` student logits, ``K`` prototypes.

* Mean centring: ``P_T = softmax((t - c) / tau_T)``; after the loss, ``c <- m c + (1 - m) mean_batch(t)``
  (mean over all ranks under DDP); the first update sets ``c`` to the first batch's mean (a zero centre leaves the
  teacher uncentred for the first ~1/(1 - m) steps, which shows as a loss far below ln K that is not learning).
  The centre is updated only when that batch mean is finite, so one
  non-finite teacher output can never poison it (the failure mode of methods.md 2.4).
* Sinkhorn-Knopp centring: ``Q = exp(t / tau_T)`` as a K x B matrix, normalised to total mass 1, then
  ``n`` times {rows /= row sums, /= K; columns /= column sums, /= B}; finally times B so that every
  column (sample) is a distribution. Under DDP the sums run over all ranks. Every row's target is capped at
  probability B/K (entropy >= ln(K/B)): with one micro-batch of 8-16 rows against K = 8192 prototypes no target
  can be sharp. With ``queue_size = Q`` the teacher logits of the last Q rows (earlier steps and micro-batches, per
  rank; a FIFO as SwAV's, Caron et al. 2020) join the current rows in the Sinkhorn iterations and only the current
  rows' targets are used, so the cap becomes (B + Q)/K.
* DINO: ``L = mean over pairs (i in teacher globals, j in student views, j != i) of
  mean_b H(P_T(g_i), softmax(s_j / tau_S))`` with ``H(p, q) = -sum_k p_k log q_k``; with 2 globals and L
  locals that is exactly ``2 (2 + L) - 2`` terms.
* iBOT: ``L = (1/B') sum_b (1/|M_b|) sum_{p in M_b} H(P_T(teacher patch p), softmax(s_p / tau_S))``
  over the masked tokens only, every image with at least one masked token weighing the same (B' of them).
* KoLeo: ``L = -(1/n) sum_i log(min_{j != i} ||z_i - z_j|| + eps)`` on L2-normalised vectors, eps 1e-8;
  skipped (``None``) for fewer than 2 vectors.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

CENTERING_MODES = ("mean", "sinkhorn")


def _world_all_reduce(t: torch.Tensor, op=None) -> torch.Tensor:
    """Reduce ``t`` over ranks in place (sum, or ``op``) when a process group is running (no-op otherwise)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op if op is not None else dist.ReduceOp.SUM)
    return t


def cross_entropy(teacher_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Per-row ``H(p, softmax(s / tau_S)) = -sum_k p_k log_softmax(s / tau_S)_k`` in fp32 (shape: leading dims)."""
    log_q = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    return -(teacher_probs.float() * log_q).sum(dim=-1)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, teacher_temp: float, iterations: int = 3) -> torch.Tensor:
    """(B, K) teacher logits -> (B, K) targets whose rows (samples) each sum to 1 (see module docstring)."""
    logits = teacher_logits.float()
    shift = logits.max().reshape(1) if logits.numel() else logits.new_full((1,), -math.inf)
    _world_all_reduce(shift, dist.ReduceOp.MAX if dist.is_available() else None)
    q = torch.exp((logits - shift) / teacher_temp).t()  # K x B (one shift for all ranks)
    batch = torch.tensor([float(q.shape[1])], device=q.device, dtype=torch.float32)
    _world_all_reduce(batch)
    num_k = q.shape[0]
    total = q.sum().reshape(1)
    _world_all_reduce(total)
    q = q / total
    for _ in range(iterations):
        rows = q.sum(dim=1, keepdim=True)
        _world_all_reduce(rows)
        q = q / rows / num_k
        q = q / q.sum(dim=0, keepdim=True) / batch
    q = q * batch
    return q.t()


class CenteredTargets(nn.Module):
    """Teacher targets with mean centring (``center`` buffer of shape (1, K)) or Sinkhorn-Knopp.

    :meth:`update` is separate from :meth:`targets` so the caller decides when the centre moves (after the
    loss, in training only). ``skipped_updates`` counts the non-finite batches that were refused.
    """

    def __init__(
        self,
        num_prototypes: int,
        centering: str = "mean",
        momentum: float = 0.9,
        sk_iterations: int = 3,
        queue_size: int = 0,
    ):
        super().__init__()
        if queue_size < 0:
            raise ValueError(f"The Sinkhorn queue size (method.sinkhorn_queue) must be >= 0, got {queue_size}.")
        if centering not in CENTERING_MODES:
            raise ValueError(f"centering '{centering}' is unknown (method.centering): use one of {CENTERING_MODES}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Centre momentum must be in [0, 1) (method.center_momentum), got {momentum}.")
        self.centering = centering
        self.momentum = float(momentum)
        self.sk_iterations = int(sk_iterations)
        self.register_buffer("center", torch.zeros(1, num_prototypes))
        self.register_buffer("skipped_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.queue_size = int(queue_size) if centering == "sinkhorn" else 0
        self.register_buffer("queue", torch.zeros(self.queue_size, num_prototypes))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_next", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def targets(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """(..., K) logits -> (..., K) fp32 target distributions (no gradient)."""
        logits = teacher_logits.float()
        if self.centering == "sinkhorn":
            flat = logits.reshape(-1, logits.shape[-1])
            n, filled = flat.shape[0], int(self.queue_filled)
            if filled:
                flat = torch.cat([flat, self.queue[:filled].to(flat.device)])
            return sinkhorn_knopp(flat, teacher_temp, self.sk_iterations)[:n].reshape(logits.shape)
        return F.softmax((logits - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update(self, teacher_logits: torch.Tensor) -> bool:
        """``c <- m c + (1 - m) mean(t)`` (mean over all rows of all ranks); refused unless that mean is finite.

        Returns whether the centre moved. Sinkhorn-Knopp needs no centre (the buffer stays at zero); with a queue its
        finite rows are pushed into the queue instead (oldest rows dropped first).
        """
        flat = teacher_logits.detach().float().reshape(-1, teacher_logits.shape[-1])
        if self.centering != "mean":
            return self._push(flat)
        stats = torch.cat([flat.sum(dim=0), flat.new_tensor([float(flat.shape[0])])])
        _world_all_reduce(stats)
        count = float(stats[-1])
        if count == 0:
            return False
        mean = stats[:-1] / count
        if not bool(torch.isfinite(mean).all()):
            self.skipped_updates += 1
            logger.warning("DINO centre not updated: the teacher output of this batch is not finite.")
            return False
        momentum = self.momentum if int(self.num_updates) > 0 else 0.0
        self.center.mul_(momentum).add_(mean.unsqueeze(0), alpha=1.0 - momentum)
        self.num_updates += 1
        return True

    def _push(self, rows: torch.Tensor) -> bool:
        if self.queue_size == 0:
            return False
        rows = rows[torch.isfinite(rows).all(dim=1)][-self.queue_size :].to(self.queue.dtype)
        n = rows.shape[0]
        if n == 0:
            return False
        positions = (int(self.queue_next) + torch.arange(n, device=self.queue.device)) % self.queue_size
        self.queue[positions] = rows.to(self.queue.device)
        self.queue_next.fill_((int(self.queue_next) + n) % self.queue_size)
        self.queue_filled.fill_(min(int(self.queue_filled) + n, self.queue_size))
        return True


def dino_cross_view_loss(
    student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor], student_temp: float
) -> tuple[torch.Tensor, int]:
    """DINO loss over view pairs; returns ``(loss, number of terms)``.

    ``student_logits[j]`` is (B, K) for student view ``j`` (globals first, in the same order as the teacher's),
    ``teacher_probs[i]`` (B, K) for teacher global ``i``; pairs with ``i == j`` (same view) are skipped.
    """
    total = student_logits[0].new_zeros((), dtype=torch.float32)
    terms = 0
    for i, p in enumerate(teacher_probs):
        for j, s in enumerate(student_logits):
            if i == j:
                continue
            total = total + cross_entropy(p, s, student_temp).mean()
            terms += 1
    if terms == 0:
        raise ValueError("The DINO loss needs at least one student view different from the teacher views.")
    return total / terms, terms


def ibot_masked_loss(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor, student_temp: float
) -> torch.Tensor:
    """iBOT patch loss over masked tokens with per-image weighting.

    ``mask`` (B, N) bool marks masked tokens; ``student_logits`` and ``teacher_probs`` are (M, K) for the
    ``M = mask.sum()`` masked tokens in the order of ``mask.nonzero()`` (image-major). Each masked token of
    image ``b`` weighs ``1 / |M_b|``; the sum is divided by the number of images with at least one masked token.
    """
    counts = mask.sum(dim=1)
    images = int((counts > 0).sum())
    if images == 0:
        return student_logits.new_zeros((), dtype=torch.float32)
    image_of_token = mask.nonzero(as_tuple=True)[0]
    weights = 1.0 / counts[image_of_token].float()
    per_token = cross_entropy(teacher_probs, student_logits, student_temp)
    return (per_token * weights).sum() / images


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor | None:
    """KoLeo regulariser on the rows of ``x`` (n, d) after L2 normalisation; ``None`` when ``n < 2``.

    The nearest neighbour is found without gradient; the distance to it is differentiable and, for
    duplicated rows (distance 0), ``-log(eps)`` (finite, with a finite zero gradient).
    """
    if x.shape[0] < 2:
        return None
    z = F.normalize(x.float(), dim=-1, eps=1e-8)
    with torch.no_grad():
        sim = z @ z.t()
        sim.fill_diagonal_(-math.inf)
        nearest = sim.argmax(dim=1)
    diff = z - z[nearest]
    sq = (diff * diff).sum(dim=-1)
    dist_nn = torch.where(sq > 0, sq.clamp_min(1e-30).sqrt(), torch.zeros_like(sq))
    return -torch.log(dist_nn + eps).mean()


def teacher_entropy_ratio(teacher_probs: torch.Tensor) -> float:
    """Mean normalised entropy ``H(P_T) / ln K`` of (..., K) target rows: ~1 uniform collapse, ~0 one-hot."""
    p = teacher_probs.detach().float()
    k = p.shape[-1]
    h = -(p * torch.log(p.clamp_min(1e-30))).sum(dim=-1)
    return float(h.mean() / math.log(k))


def effective_rank(embeddings: torch.Tensor) -> float:
    """Roy & Vetterli (2007) effective rank ``exp(H(sigma / sum sigma))`` of the batch-centred (n, d) embeddings.

    Centring removes the shared mean direction, so the value measures how many directions the samples spread
    over: 0 when all rows are identical (collapse), at most ``min(n - 1, d)``; NaN for non-finite input.
    """
    x = embeddings.detach().float()
    x = x - x.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(x)
    total = s.sum()
    if not bool(torch.isfinite(total)):
        return float("nan")
    if float(total) <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * torch.log(p)).sum()))


def mean_pairwise_cosine(rows: torch.Tensor) -> float:
    """Mean cosine similarity between different rows of (n, d) ``rows`` (1: all equal, e.g. a head that ignores its
    input; ~0: unrelated); NaN for fewer than 2 rows."""
    x = F.normalize(rows.detach().float(), dim=-1, eps=1e-8)
    n = x.shape[0]
    if n < 2:
        return float("nan")
    sim = x @ x.t()
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))
