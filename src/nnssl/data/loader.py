"""Training and validation batches: a torch DataLoader over :class:`nnssl.data.sampling.PatchSampler`.

Reproducibility. Every sample is a pure function of ``(seed, rank, epoch, i)`` where ``i`` counts samples
within the epoch: its generator is ``np.random.default_rng([seed, rank, epoch, i])``; it picks the case
(uniformly with replacement, as upstream) and the crop and augmentation. The method's per-sample transform runs
with Python's, NumPy's and torch's global generators seeded from the same key (and restored afterwards, so the
calling process's streams are untouched when ``num_workers=0``). The batch sequence of an epoch is therefore the
same for any ``num_workers`` and after a resume, and differs between ranks (the rank is part of the key).

Workers. ``DataConfig.num_workers`` worker processes (0 = in the main process), persistent across epochs, one
torch thread each; memory is pinned when the device is CUDA.

Batch size. ``TrainConfig.batch_size`` is the global batch; rank ``r`` of ``world_size`` gets
:func:`per_rank_batch_size` samples (upstream: ceil(total / world), the last rank the remainder).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nnssl.config import RunConfig
from nnssl.data.sampling import PatchSampler
from nnssl.engine.distributed import split_batch

Transform = Callable[[dict[str, Any]], dict[str, Any]]
VAL_STREAM = 2**31 - 1  # rank slot of validation keys; no real rank reaches it


def per_rank_batch_size(total: int, rank: int, world_size: int) -> int:
    """This rank's share of the global batch, as even as possible (8 over 3 ranks -> 3, 3, 2)."""
    return split_batch(total, world_size)[rank]


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed ``random``, ``numpy.random`` and torch's CPU generator for a block, then restore their states."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _image_paths_and_ids(images: Sequence[Any]) -> tuple[list[str], list[str] | None]:
    """Case paths and unique ids; plain paths take their id from the case's properties (``unique_id``)."""
    if all(isinstance(image, str) or hasattr(image, "__fspath__") for image in images):
        return [str(image) for image in images], None
    return [str(image.image_path) for image in images], [str(image.unique_id) for image in images]


class _SampleDataset(Dataset):
    """Map-style dataset whose keys are ``(stream, epoch, i)``; ``stream`` is the rank or :data:`VAL_STREAM`."""

    def __init__(self, sampler: PatchSampler, seed: int, transform: Transform | None, cyclic_cases: bool) -> None:
        self.sampler = sampler
        self.seed = int(seed)
        self.transform = transform
        self.cyclic_cases = cyclic_cases

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        stream, epoch, i = (int(k) for k in key)
        rng = np.random.default_rng([self.seed, stream, epoch, i])
        case = i % len(self.sampler) if self.cyclic_cases else int(rng.integers(len(self.sampler)))
        sample = self.sampler.sample(case, rng)
        if self.transform is not None:
            with seeded_global_rngs(int(rng.integers(2**62))):
                sample = self.transform(sample)
        return sample


class _EpochBatches:
    """Batch sampler yielding lists of keys for the current epoch; ``num_batches=None`` means infinite."""

    def __init__(self, stream: int, batch_size: int, num_batches: int | None) -> None:
        self.stream = stream
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.epoch = 0

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        b = 0
        while self.num_batches is None or b < self.num_batches:
            yield [(self.stream, self.epoch, b * self.batch_size + j) for j in range(self.batch_size)]
            b += 1

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("An infinite batch sampler has no length.")
        return self.num_batches


def _worker_init(_: int) -> None:
    from nnssl.engine.signals import ignore_stop_signals

    torch.set_num_threads(1)
    ignore_stop_signals()  # SIGTERM to the process group / Ctrl-C: the main process saves and stops the workers


class TrainLoader:
    """Reproducible per-epoch training batches; ``make_iter(epoch)`` returns an infinite iterator of batches.

    Starting a new iterator (the next epoch) discards the previous one; workers persist across epochs.
    """

    def __init__(self, dataset: _SampleDataset, batch_sampler: _EpochBatches, num_workers: int, pin: bool) -> None:
        self.batch_sampler = batch_sampler
        self.per_rank_batch_size = batch_sampler.batch_size
        self.loader = DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=num_workers,
            pin_memory=pin,
            persistent_workers=num_workers > 0,
            worker_init_fn=_worker_init if num_workers > 0 else None,
            prefetch_factor=2 if num_workers > 0 else None,
            generator=torch.Generator().manual_seed(0),  # keeps DataLoader's base-seed draw off the global stream
        )

    def make_iter(self, epoch: int) -> Iterator[dict[str, Any]]:
        """Batches of ``epoch``: ``{"image": (B, C, *patch) float32 tensor, masks, "unique_id": [str]}``."""
        self.batch_sampler.epoch = int(epoch)
        return iter(self.loader)

    __call__ = make_iter


def build_train_loader(
    images: Sequence[Any],
    cfg: RunConfig,
    transform: Transform | None,
    rank: int = 0,
    world_size: int = 1,
    device_type: str = "cpu",
    open_fn: Callable[[str], Any] | None = None,
    data_order: int | None = None,
) -> TrainLoader:
    """Training loader over ``images`` (IndependentImage with a ``.b2nd`` ``image_path``, or case paths).

    Crops of ``cfg.train.patch_size`` with the augmentation of ``cfg.data``; ``transform`` (the method's
    ``train_transform()``) runs per sample in the workers. ``data_order`` overrides
    ``cfg.data.interpolation_order``, the interpolation order used for rotated or scaled images.
    """
    paths, ids = _image_paths_and_ids(images)
    sampler = PatchSampler(
        paths,
        cfg.train.patch_size,
        cfg.data,
        augment=True,
        unique_ids=ids,
        open_fn=open_fn,
        data_order=data_order,
    )
    dataset = _SampleDataset(sampler, cfg.train.seed, transform, cyclic_cases=False)
    batches = _EpochBatches(rank, per_rank_batch_size(cfg.train.batch_size, rank, world_size), None)
    return TrainLoader(dataset, batches, cfg.data.num_workers, pin=device_type == "cuda")


def build_val_loader(
    images: Sequence[Any],
    cfg: RunConfig,
    transform: Transform | None,
    rank: int = 0,
    world_size: int = 1,
    device_type: str = "cpu",
    open_fn: Callable[[str], Any] | None = None,
) -> Callable[[], Iterator[dict[str, Any]]]:
    """A callable returning a fresh iterator of ``cfg.train.val_iterations`` fixed validation batches.

    Crops are seeded by ``(seed, i)`` only (the same on every call and every rank), cases are visited in turn,
    and there is no augmentation. ``transform`` is the method's ``val_transform()``.
    """
    paths, ids = _image_paths_and_ids(images)
    sampler = PatchSampler(paths, cfg.train.patch_size, cfg.data, augment=False, unique_ids=ids, open_fn=open_fn)
    dataset = _SampleDataset(sampler, cfg.train.seed, transform, cyclic_cases=True)
    batch_size = per_rank_batch_size(cfg.train.batch_size, rank, world_size)
    batches = _EpochBatches(VAL_STREAM, batch_size, cfg.train.val_iterations)
    loader = TrainLoader(dataset, batches, max(0, cfg.data.num_workers // 2), pin=device_type == "cuda")
    return lambda: loader.make_iter(0)
