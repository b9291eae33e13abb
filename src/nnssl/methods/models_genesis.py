"""Models Genesis: restore the original volume from a corrupted copy, on any backbone family.

Zhou et al. 2021, "Models Genesis" (Medical Image Analysis 67, 101840; MICCAI 2019); the 3D benchmark recipe of
Wald et al. 2025, "An OpenMind for 3D medical vision self-supervised learning" (upstream ``ModelGenesisTrainer`` on
ResEnc-L and ``ModelGenesisEvaTrainer`` on Primus-M; methods.md 4.4).

Per sample (``train.patch_size`` crop ``x``, z-scored), with upstream's probabilities:

1. flips: up to ``max_flips`` times, while ``U(0, 1) < flip_p``, mirror a random spatial axis; applied to input AND
   target (the target is the flipped clean crop, a separate array);
2. local pixel shuffling (``shuffle_p``): voxels permuted inside small blocks (sides <= 1/10 of each dimension);
3. non-linear intensity map (``nonlinear_p``): a monotone map of [0, 1] built from a cubic Bezier curve through
   (0, 0), two random control points and (1, 1), reversed half of the time;
4. painting (``paint_p``): in-painting with ``inpaint_p`` (up to 5 boxes of side [1/6, 1/3] of the dimension
   filled with U(0, 1) noise), out-painting otherwise (noise everywhere except 1-5 kept boxes of side ~[3/7, 4/7]).

Steps 3 and 4 assume intensities in [0, 1]: they run on the min-max rescaled copy ``u = (x - lo) / (hi - lo)`` of
the crop and the result is mapped back with ``lo + u (hi - lo)`` (upstream applies them to z-scored values and its
``np.interp`` clips everything outside [0, 1], in about 90% of samples). Flips and shuffling only move voxels and
run on the z-scored values directly.

Network: the backbone's whole-input reconstruction (:meth:`nnssl.backbones.Backbone.reconstruct` without a mask:
ResEnc U-Net; Primus: encoder tokens straight into ``PatchDecode``, upstream's ``decoder_eva_depth=0``).

Loss: ``L = mean((f(T(x)) - x)^2)`` over every voxel, in fp32; with ``ignore_anonymized`` over the voxels whose
anonymization mask is 0 (upstream's ``_ANON`` trainers; the mask is flipped with the image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nnssl.architectures.spec import ArchitectureSpec
from nnssl.backbones import build_backbone
from nnssl.losses.reconstruction import masked_mse
from nnssl.methods.base import Sample, SSLMethod, StepOutput, Transform
from nnssl.methods.registry import METHODS

#: Values whose magnitude lies below this fraction of the crop's range come back from the [0, 1] round trip as 0
#: (the float64 round trip of an exact 0 otherwise leaves ~1e-16).
SNAP_TO_ZERO = 2.0**-40

Box = tuple[slice, slice, slice]


# ----------------------------------------------------------------------------------------- the [0, 1] domain
def to_unit(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(u, lo, span)``: ``u = (x - lo) / span`` in float64 with ``lo = min x``, ``span = max x - lo`` (1 if 0)."""
    lo, hi = float(x.min()), float(x.max())
    span = hi - lo if hi > lo else 1.0
    return (x.astype(np.float64) - lo) / span, lo, span


def from_unit(u: np.ndarray, lo: float, span: float) -> np.ndarray:
    """The inverse of :func:`to_unit` as float32: ``lo + u * span`` (magnitudes below 2^-40 span snap to 0)."""
    x = u * span + lo
    x[np.abs(x) < SNAP_TO_ZERO * span] = 0.0
    return x.astype(np.float32)


# ----------------------------------------------------------------------------------------- corruptions
def random_flips(image: np.ndarray, p: float, max_flips: int) -> tuple[np.ndarray, list[int]]:
    """Up to ``max_flips`` mirrors of a random spatial axis, each while ``U(0, 1) < p``; returns the axes flipped."""
    axes: list[int] = []
    while len(axes) < max_flips and np.random.uniform() < p:
        axes.append(int(np.random.randint(3)))
    for axis in axes:
        image = np.flip(image, axis=axis + 1)
    return np.ascontiguousarray(image), axes


@dataclass(frozen=True)
class ShuffleBlocks:
    """A tiling for :func:`local_pixel_shuffle`: block sides, the tiling's start, blocks per axis, chosen blocks."""

    side: tuple[int, int, int]
    start: tuple[int, int, int]
    count: tuple[int, int, int]
    chosen: np.ndarray  # (n_blocks,) bool, blocks in C order of the (count) grid

    def region(self) -> Box:
        return tuple(slice(o, o + n * b) for o, n, b in zip(self.start, self.count, self.side))  # type: ignore[return-value]


def draw_shuffle_blocks(shape: tuple[int, int, int], fraction: float, max_side_fraction: float) -> ShuffleBlocks:
    """One block shape per sample, each side ``~ U{1..max(1, floor(max_side_fraction * dim))}``, a random start of
    the tiling in ``[0, side)``, and each whole block chosen with probability ``fraction``."""
    side = tuple(int(np.random.randint(1, max(1, int(max_side_fraction * d)) + 1)) for d in shape)
    start = tuple(int(np.random.randint(b)) for b in side)
    count = tuple((d - o) // b for d, o, b in zip(shape, start, side))
    chosen = np.random.uniform(size=int(np.prod(count))) < fraction
    return ShuffleBlocks(side, start, count, chosen)  # type: ignore[arg-type]


def local_pixel_shuffle(image: np.ndarray, blocks: ShuffleBlocks) -> np.ndarray:
    """A new array where the voxels of every chosen block are randomly permuted inside that block (vectorised).

    Every channel moves with its voxel. Upstream (the Models Genesis code) shuffles 10,000 random, overlapping
    blocks one by one in Python; here one random tiling per sample is shuffled in one call: one random key per
    voxel, ``argsort`` per block.
    """
    out = np.array(image, dtype=np.float32, copy=True)
    n_blocks = int(blocks.chosen.sum())
    voxels = int(np.prod(blocks.side))
    if n_blocks == 0 or voxels == 1:
        return out
    (n0, n1, n2), (b0, b1, b2) = blocks.count, blocks.side
    channels = out.shape[0]
    region = out[(slice(None), *blocks.region())]
    tiles = region.reshape(channels, n0, b0, n1, b1, n2, b2).transpose(0, 1, 3, 5, 2, 4, 6)
    tiles = tiles.reshape(channels, n0 * n1 * n2, voxels)
    keys = np.random.default_rng(np.random.randint(2**31)).random((n_blocks, voxels), dtype=np.float32)
    order = np.argsort(keys, axis=1)
    tiles[:, blocks.chosen] = np.take_along_axis(tiles[:, blocks.chosen], order[None], axis=2)
    tiles = tiles.reshape(channels, n0, n1, n2, b0, b1, b2).transpose(0, 1, 4, 2, 5, 3, 6)
    out[(slice(None), *blocks.region())] = tiles.reshape(region.shape)
    return out


def bezier_map(points: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """``(xs, ys)`` of a monotone map of [0, 1] onto [0, 1] (``np.interp(u, xs, ys)``; :func:`uniform_table`).

    The cubic Bezier curve ``B(t) = (1-t)^3 P0 + 3 (1-t)^2 t P1 + 3 (1-t) t^2 P2 + t^3 P3`` with ``P0 = (0, 0)``,
    ``P3 = (1, 1)`` and ``P1, P2 ~ U([0, 1]^2)``, sampled at ``points`` values of t; its x and y samples sorted
    (as the reference does for the increasing case), and with probability 1/2 the y values reversed (0 -> 1,
    1 -> 0; the reference pairs sorted x with unsorted y, which is not monotone in general).
    """
    p1, p2 = np.random.uniform(size=2), np.random.uniform(size=2)
    t = np.linspace(0.0, 1.0, points)
    w1, w2, w3 = 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3
    xs = np.sort(w1 * p1[0] + w2 * p2[0] + w3)
    ys = np.sort(w1 * p1[1] + w2 * p2[1] + w3)
    if np.random.uniform() < 0.5:
        ys = ys[::-1]
    return xs, ys


def uniform_table(xs: np.ndarray, ys: np.ndarray, knots: int = 4097) -> np.ndarray:
    """The map ``(xs, ys)`` sampled at ``knots`` equally spaced points of [0, 1] (monotone if the map is)."""
    return np.interp(np.linspace(0.0, 1.0, knots), xs, ys)


def apply_table(u: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Piecewise-linear lookup of ``u`` in [0, 1] in a :func:`uniform_table`: O(1) per voxel (``np.interp``
    searches the knots, ~10x slower on a 160^3 crop); monotone tables give monotone maps."""
    position = np.clip(u, 0.0, 1.0) * (len(table) - 1)
    index = np.minimum(position.astype(np.int64), len(table) - 2)
    fraction = position - index
    return table[index] + fraction * (table[index + 1] - table[index])


def _box(shape: tuple[int, ...], side: list[int], margin: int = 3) -> Box:
    """A box of ``side`` at a random position at least ``margin`` voxels from the border (less when it cannot)."""
    slices = []
    for d, s in zip(shape, side):
        s = max(1, min(int(s), d))
        low = min(margin, d - s)
        high = max(low, d - s - margin)
        start = int(np.random.randint(low, high + 1))
        slices.append(slice(start, start + s))
    return tuple(slices)  # type: ignore[return-value]


def in_painting(u: np.ndarray) -> tuple[np.ndarray, list[Box]]:
    """A new [0, 1] array with up to 5 boxes (while ``U(0, 1) < 0.95``) of sides ``U{dim//6..dim//3}`` filled with
    U(0, 1) noise (one noise volume shared by the channels); returns the boxes."""
    out = u.copy()
    shape = u.shape[1:]
    boxes: list[Box] = []
    while len(boxes) < 5 and np.random.uniform() < 0.95:
        side = [int(np.random.randint(max(1, d // 6), max(1, d // 3) + 1)) for d in shape]
        box = _box(shape, side)
        out[(slice(None), *box)] = np.random.uniform(size=tuple(s.stop - s.start for s in box))
        boxes.append(box)
    return out, boxes


def out_painting(u: np.ndarray) -> tuple[np.ndarray, list[Box]]:
    """A new array of U(0, 1) noise except 1 to 5 boxes (the 2nd to 5th while ``U(0, 1) < 0.95``) that keep ``u``;
    box sides ``dim - U{3 dim // 7..4 dim // 7}``; returns the kept boxes."""
    out = np.random.uniform(size=u.shape)
    shape = u.shape[1:]
    boxes: list[Box] = []
    while not boxes or (len(boxes) < 5 and np.random.uniform() < 0.95):
        side = [d - int(np.random.randint(3 * d // 7, 4 * d // 7 + 1)) for d in shape]
        box = _box(shape, side)
        out[(slice(None), *box)] = u[(slice(None), *box)]
        boxes.append(box)
    return out, boxes


# ----------------------------------------------------------------------------------------- config and transform
@dataclass
class ModelsGenesisConfig:
    """Models Genesis corruptions (upstream probabilities) and the transformer decoder depth.

    ``flip_p``: probability of each further flip (at most ``max_flips``). ``shuffle_p``: local pixel shuffling;
    ``shuffle_fraction``: the fraction of blocks shuffled (0.8: upstream's 10,000 blocks touch ~80% of the voxels
    at 64^3 to 160^3); ``shuffle_max_side``: block side <= this fraction of the dimension. ``nonlinear_p``: the
    Bezier intensity map. ``paint_p``: painting; ``inpaint_p``: in-painting given painting (out-painting
    otherwise). ``decoder_depth``: Eva blocks between encoder and ``PatchDecode`` on transformers (0 as upstream).
    ``ignore_anonymized``: leave voxels removed by defacing (anonymization mask 1) out of the loss.
    """

    flip_p: float = 0.4
    max_flips: int = 3
    shuffle_p: float = 0.5
    shuffle_fraction: float = 0.8
    shuffle_max_side: float = 0.1
    nonlinear_p: float = 0.9
    paint_p: float = 0.9
    inpaint_p: float = 0.2
    decoder_depth: int = 0
    ignore_anonymized: bool = False

    def validate(self, run: object) -> None:
        """Probabilities in [0, 1], counts >= 0, the patch a multiple of the architecture's unit."""
        from nnssl.config import require, require_patch_multiple

        for key in ("flip_p", "shuffle_p", "shuffle_fraction", "nonlinear_p", "paint_p", "inpaint_p"):
            value = getattr(self, key)
            require(0.0 <= value <= 1.0, f"method.{key}", value, "a probability in [0, 1]")
        require(0.0 < self.shuffle_max_side <= 1.0, "method.shuffle_max_side", self.shuffle_max_side, "in (0, 1]")
        require(self.max_flips >= 0, "method.max_flips", self.max_flips, ">= 0")
        require(self.decoder_depth >= 0, "method.decoder_depth", self.decoder_depth, ">= 0")
        require_patch_multiple(run, "train.patch_size", run.train.patch_size)


class GenesisCorruption:
    """Per sample: ``{"image": T(x), "target": x}`` (both flipped alike; ``target`` never shares memory), plus the
    flipped ``anonymization_mask`` when the sample has one."""

    def __init__(self, cfg: ModelsGenesisConfig) -> None:
        self.cfg = cfg

    def __call__(self, sample: Sample) -> Sample:
        cfg = self.cfg
        image, axes = random_flips(np.asarray(sample["image"], dtype=np.float32), cfg.flip_p, cfg.max_flips)
        target = np.array(image, dtype=np.float32, copy=True)
        corrupted = image
        if np.random.uniform() < cfg.shuffle_p:
            blocks = draw_shuffle_blocks(image.shape[1:], cfg.shuffle_fraction, cfg.shuffle_max_side)
            corrupted = local_pixel_shuffle(corrupted, blocks)
        nonlinear = np.random.uniform() < cfg.nonlinear_p
        paint = np.random.uniform() < cfg.paint_p
        if nonlinear or paint:
            u, lo, span = to_unit(corrupted)
            if nonlinear:
                u = apply_table(u, uniform_table(*bezier_map()))
            if paint:
                u = in_painting(u)[0] if np.random.uniform() < cfg.inpaint_p else out_painting(u)[0]
            corrupted = from_unit(u, lo, span)
        out = {"image": np.array(corrupted, dtype=np.float32, copy=True), "target": target}
        if "anonymization_mask" in sample:
            anon = sample["anonymization_mask"]
            for axis in axes:
                anon = np.flip(anon, axis=axis + 1)
            out["anonymization_mask"] = np.ascontiguousarray(anon)
        return out


@METHODS.register("ModelsGenesis")
class ModelsGenesis(SSLMethod):
    """Models Genesis restoration; ``backbone()`` is the downstream network (ResidualEncoderUNet or dna Primus)."""

    config_cls = ModelsGenesisConfig
    presets_module = "nnssl.presets.models_genesis"
    batch_masks = ("anonymization_mask",)  # read by forward when cfg.ignore_anonymized

    def __init__(
        self, cfg: ModelsGenesisConfig, arch: ArchitectureSpec, patch_size: tuple[int, int, int], in_channels: int = 1
    ) -> None:
        super().__init__(cfg, arch, patch_size, in_channels)
        self.net = build_backbone(
            arch, in_channels, patch_size, reconstruction=True, decoder_depth=cfg.decoder_depth, mask_token=False
        )

    def train_transform(self) -> Transform:
        return GenesisCorruption(self.cfg)

    def val_transform(self) -> Transform:
        return GenesisCorruption(self.cfg)

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        prediction = self.net.reconstruct(batch["image"]).prediction
        target = batch["target"]
        if self.cfg.ignore_anonymized and "anonymization_mask" in batch:
            loss = masked_mse(prediction, target, 1.0 - batch["anonymization_mask"].to(torch.float32))
        else:
            loss = F.mse_loss(prediction.float(), target.float())
        changed = (batch["image"] != target).float().mean()
        return StepOutput(loss=loss, metrics={"corrupted_fraction": float(changed.detach())})
