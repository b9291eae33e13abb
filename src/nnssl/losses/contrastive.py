"""NT-Xent (normalised temperature-scaled cross-entropy), SimCLR's contrastive loss, with DDP negatives.

Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations" (SimCLR);
methods.md 0.4. Given embeddings ``u, v`` of shape (N, d) whose row k is a positive pair, both are
L2-normalised here, stacked as ``R = [v; u]`` (2N rows) and compared by ``S = R R^T / tau``. For row a the
positive is the row of the other view of the same index; with ``Neg(a)`` its negatives

    L = 1/(2N) sum_a -log( exp(S[a, pos(a)]) / (exp(S[a, pos(a)]) + sum_{n in Neg(a)} exp(S[a, n])) ).

* Plain form (``same_image_aware=False``, nnssl's ``contrastive_loss.py``): every row except ``a`` and
  ``pos(a)`` is a negative: 2N-2 negatives.
* Same-image-aware form (``same_image_aware=True``, CVA's global loss, methods.md 1.5 item 3): the input
  follows CVA's layout, i.e. N is even and rows ``k`` and ``k + N/2`` (mod N) of ``u`` (and of ``v``) belong to
  the same image (``[view 1 of images 0..N/2-1 ; view 2 of the same images]``). Besides ``a`` and
  ``pos(a)``, the two rows of the image's other view (index ``k +- N/2`` in ``u`` and in ``v``) are removed
  from the denominator: 2N-4 negatives.

Both are computed as one masked cross-entropy in fp32 (also under autocast). The top-1 accuracy is the
fraction of rows whose positive has the largest logit among positive and negatives.

DDP (``gather=True``, torch.distributed initialised, world size > 1): ``u`` and ``v`` of every rank are
all-gathered WITH gradients (``torch.distributed.nn.functional.all_gather``; ranks may hold different
numbers of rows, the tensors are padded for the collective and the padding is dropped). Each rank's loss
covers its own 2N_r rows against all 2M gathered rows; a rank's rows keep the "same image" structure of
its local layout. Scaling: the gather's backward sums the gradients that every rank's loss sends to a
rank's embeddings, so rank r's parameter gradient is ``d(sum_r' w_r' L_r') / d theta`` through its own
samples; the engine multiplies ``L_r`` by ``w_r = b_r W / B`` and DDP averages over the W ranks, which gives
``d(sum_r (b_r / B) L_r) / d theta`` = the gradient of the single-process loss over all 2M rows (as long as
every rank has the same number of rows per sample, which holds for a fixed number of views per image).
``tests/losses/test_contrastive.py`` checks loss and gradients against one process numerically.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """All rows of ``x`` from every rank (autograd-aware), and the number of rows each rank contributed.

    Ranks may hold different numbers of rows: sizes are exchanged first, tensors padded to the largest
    and the padding removed. Identity (``[len(x)]``) without an initialised process group of size > 1.
    """
    if not _distributed():
        return x, [int(x.shape[0])]
    from torch.distributed.nn.functional import all_gather

    world = dist.get_world_size()
    size = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = x if x.shape[0] == longest else torch.cat([x, x.new_zeros(longest - x.shape[0], *x.shape[1:])])
    parts = all_gather(padded.contiguous())
    gathered = torch.cat([part[:n] for part, n in zip(parts, counts)])
    return gathered, counts


def _image_ids(n: int, offset: int, same_image_aware: bool, device: torch.device) -> torch.Tensor:
    """Per row an id shared by rows of the same image (CVA layout) or unique per row (plain)."""
    index = torch.arange(n, device=device)
    if same_image_aware:
        index = index % (n // 2)
    return index + offset


def nt_xent(
    u: torch.Tensor,
    v: torch.Tensor,
    temperature: float = 0.5,
    same_image_aware: bool = False,
    gather: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent of the positive pairs ``(u[k], v[k])``: returns ``(loss, top1_accuracy)`` (see the module docstring).

    ``u``, ``v``: (N, d) embeddings (normalised here). ``same_image_aware`` needs even N in CVA's layout.
    With ``gather`` and an initialised process group, negatives come from every rank.
    """
    if u.shape != v.shape or u.ndim != 2:
        raise ValueError(f"nt_xent needs u and v of the same shape (N, d); got {tuple(u.shape)} and {tuple(v.shape)}.")
    n = u.shape[0]
    if same_image_aware and n % 2:
        raise ValueError(
            f"The same-image-aware NT-Xent needs an even number of rows laid out as [view 1 ; view 2], got {n}."
        )
    if n < 1:
        raise ValueError("nt_xent needs at least one pair.")
    u = F.normalize(u.float(), dim=1, eps=1e-6)
    v = F.normalize(v.float(), dim=1, eps=1e-6)
    all_u, all_v, counts, offset = u, v, [n], 0
    if gather and _distributed():
        all_u, counts = gather_with_grad(u)
        all_v, _ = gather_with_grad(v)
        offset = sum(counts[: dist.get_rank()])
    # ids shared by the rows of one image, unique across ranks (each rank's ids start at its row offset)
    starts = [sum(counts[:r]) for r in range(len(counts))]
    all_ids = torch.cat([_image_ids(c, s, same_image_aware, u.device) for c, s in zip(counts, starts)])
    ids = _image_ids(n, offset, same_image_aware, u.device)
    m = all_u.shape[0]
    rows = torch.cat([v, u])  # local rows: view v first, as R = [v; u]
    columns = torch.cat([all_v, all_u])  # (2M, d)
    logits = rows @ columns.T / temperature  # (2N, 2M)
    local = torch.arange(n, device=u.device) + offset
    pos_col = torch.cat([local + m, local])
    column_ids = torch.cat([all_ids, all_ids])
    row_ids = torch.cat([ids, ids])
    excluded = row_ids[:, None] == column_ids[None, :]  # self, positive and (same-image-aware) the other view
    excluded[torch.arange(2 * n, device=u.device), pos_col] = False
    if bool(((~excluded).sum(dim=1) < 2).any()):  # the positive and at least one negative
        raise ValueError(
            f"NT-Xent has no negative for some rows: {m} pair(s) in the global batch"
            f"{' (the other view of the same image is not a negative)' if same_image_aware else ''}; the loss would be "
            "0 and teach nothing. Use more images per batch (train.batch_size) or more crops per image."
        )
    logits = logits.masked_fill(excluded, float("-inf"))
    loss = F.cross_entropy(logits, pos_col)
    accuracy = (logits.argmax(dim=1) == pos_col).float().mean()
    return loss, accuracy.detach()
