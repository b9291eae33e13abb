"""Training and validation batches: a torch DataLoader over :class:`nnssl.data.sampling.PatchSampler`.

Reproducibility. Every sample is a pure function of ``(seed, rank, epoch, i)`` where ``i`` counts samples
within the epoch: its generator is ``np.random.default_rng([seed, rank, epoch, i])``; it picks the case
(uniformly with replacement, as upstream) and the crop and augmentation. The method's per-sample transform runs
with Python's, NumPy's and torch's global generators seeded from the same key (and restored afterwards, so the
calling process's streams are untouched when ``num_workers=0``). The batch sequence of an epoch is therefore the
same for any ``num_workers`` and after a resume, and differs between ranks (the rank is part of the key).

Workers. ``DataConfig.num_workers`` worker processes (0 = in the main process), persistent across epochs, one
torch thread each; memory is pinned when the device is CUDA. Workers ignore the stop signals (a scheduler signals
the whole process group; the main process saves first and then stops them), so ``multiprocessing``'s exit-time
``terminate()`` (SIGTERM) cannot stop them: an ``atexit`` hook that runs before ``multiprocessing``'s kills every
worker still running. Without it a program whose loader outlived its training (an exception traceback is enough)
waited for its workers forever at exit; torch's own shutdown of a collected iterator did not always reach the
worker (seen after a worker had raised).

Batch size. ``TrainConfig.batch_size`` is the global batch; rank ``r`` of ``world_size`` gets
:func:`per_rank_batch_size` samples (upstream: ceil(total / world), the last rank the remainder).

Batches (:class:`BatchCollator`). Each array key has one batch buffer: shared memory in a worker (sent to the main
process without another copy), a reused (pinned on CUDA) buffer in the main process. The DataLoader fetches a
batch's keys at once (:meth:`_SampleDataset.__getitems__`): a plain sample (neither rotated nor scaled) is drawn
lazily (:class:`~nnssl.data.sampling.PlainRead`) and decoded straight into its slot, where only the part of the
patch outside the case is zero-filled; mirrored, partial or half-precision boxes pass through a block-aligned slab
scratch buffer and are flipped and cast by the one copy into the slot. Other samples (resampled, or transformed by
the method) are copied once into their slots. The batch equals the per-sample path's (``dataset[key]`` then the
collation), damaged cases included. Samples carry only the
masks the method asks for (``SSLMethod.batch_masks``) and the case stores; a requested mask that some samples of a
batch lack is filled with :data:`~nnssl.data.sampling.MASK_FILL`, and a batch where no sample has it lacks the key.

Device augmentation (``data.spatial_augmentation_device=cuda``). Rotated/scaled samples leave the workers as their
source regions; :meth:`TrainLoader.make_iter` resamples them on the training device with the same parameters
(drawn in the workers from the same keys), so the batch is the CPU path's up to float rounding.

Unreadable cases. A case that cannot be opened or decoded (:class:`~nnssl.data.case_store.CaseReadError`) is
skipped with a warning naming its unique id and file, and the sample is drawn again from the key extended by the
attempt number (so a batch without bad cases is unchanged). Each process stops with
:class:`UnreadableCasesError` when more than ``data.max_unreadable_fraction`` of its cases failed.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import multiprocessing
import multiprocessing.util  # noqa: F401  (its exit hook is registered before ours, so ours runs first)
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from nnssl.config import RunConfig
from nnssl.data.case_store import CaseReadError
from nnssl.data.sampling import DEFERRED_KEY, MASK_FILL, DeferredResampling, PatchSampler, PlainRead
from nnssl.transforms.spatial import resample_region_torch

logger = logging.getLogger(__name__)

Transform = Callable[[dict[str, Any]], dict[str, Any]]
VAL_STREAM = 2**31 - 1  # rank slot of validation keys; no real rank reaches it
MAX_ATTEMPTS = 64  # draws per sample before giving up (only reached when most cases are unreadable)
SPATIAL_DEVICES = ("cpu", "cuda")


class UnreadableCasesError(RuntimeError):
    """Too many cases of a loader could not be read; the message lists them and the command that repairs them."""


def split_batch(total: int, world_size: int) -> list[int]:
    """Per-rank batch sizes summing to ``total``, as even as possible, larger ones first (8, 3 -> [3, 3, 2])."""
    if total < world_size:
        raise ValueError(
            f"train.batch_size={total} is smaller than the number of processes ({world_size}); "
            "every process needs at least one sample. Raise the batch size or use fewer GPUs."
        )
    base, rest = divmod(total, world_size)
    return [base + 1 if r < rest else base for r in range(world_size)]


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


def _contiguous(sample: dict[str, Any]) -> dict[str, Any]:
    """Sample arrays as a transform expects them: contiguous, image float32 (samples may hold views or float16)."""
    out = dict(sample)
    for key, value in sample.items():
        if isinstance(value, np.ndarray):
            out[key] = np.ascontiguousarray(value, dtype=np.float32 if key == "image" else value.dtype)
    return out


class _SampleDataset(Dataset):
    """Map-style dataset whose keys are ``(stream, epoch, i)``; ``stream`` is the rank or :data:`VAL_STREAM`."""

    def __init__(
        self,
        sampler: PatchSampler,
        seed: int,
        transform: Transform | None,
        cyclic_cases: bool,
        defer_resampling: bool = False,
        max_unreadable_fraction: float = 0.05,
        collate: BatchCollator | None = None,
    ) -> None:
        self.sampler = sampler
        self.collate = collate
        self.seed = int(seed)
        self.transform = transform
        self.cyclic_cases = cyclic_cases
        self.defer_resampling = defer_resampling
        self.max_unreadable_fraction = float(max_unreadable_fraction)
        self.unreadable: dict[int, str] = {}  # case index -> reason, found by this process

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        return self._draw(key)[2]

    def _draw(self, key: tuple[int, int, int], first: int = 0, lazy: bool = False) -> tuple[int, int, dict[str, Any]]:
        """``(case, attempt, sample)`` of ``key``, trying attempts from ``first`` on (see the module docstring)."""
        stream, epoch, i = (int(k) for k in key)
        for attempt in range(first, MAX_ATTEMPTS):
            rng = np.random.default_rng([self.seed, stream, epoch, i, *([attempt] if attempt else [])])
            if self.cyclic_cases:
                case = (i + attempt) % len(self.sampler)
            else:
                case = int(rng.integers(len(self.sampler)))
            if case in self.unreadable:
                continue
            try:
                sample = self.sampler.sample(case, rng, defer_resampling=self.defer_resampling, lazy=lazy)
            except CaseReadError as err:
                self._skip(case, err)
                continue
            if self.transform is not None:
                with seeded_global_rngs(int(rng.integers(2**62))):
                    sample = self.transform(_contiguous(sample))
            return case, attempt, sample
        raise UnreadableCasesError(self._summary(f"no readable case in {MAX_ATTEMPTS} draws"))

    def __getitems__(self, keys: list[tuple[int, int, int]]) -> Any:
        """A whole batch (torch's batched fetch): plain samples are decoded straight into their batch slots.

        Without a collator, or with a per-sample transform (which needs the arrays), the samples are returned for
        the DataLoader's ``collate_fn``. Otherwise the samples are drawn lazily and :attr:`collate` decodes them
        sample by sample; when sample ``j`` turns out damaged, its case is skipped as in :meth:`__getitem__` and
        samples ``j, j+1, ...`` are drawn again in order, so the batch equals the per-sample path's.
        """
        if self.collate is None or self.transform is not None:
            return [self[key] for key in keys]
        drawn = [self._draw(key, lazy=True) for key in keys]
        while True:
            try:
                return AssembledBatch(self.collate([sample for _, _, sample in drawn]))
            except SampleReadError as failure:
                j = failure.index
                case, attempt, _ = drawn[j]
                self._skip(case, failure.error)
                drawn[j:] = [self._draw(keys[j], attempt + 1, lazy=True)]
                drawn += [self._draw(key, lazy=True) for key in keys[j + 1 :]]

    def _skip(self, case: int, err: CaseReadError) -> None:
        self.unreadable[case] = str(err)
        n, bad = len(self.sampler), len(self.unreadable)
        logger.warning("Skipping an unreadable case (%d of %d so far in this process): %s", bad, n, err)
        if bad > self.max_unreadable_fraction * n:
            raise UnreadableCasesError(
                self._summary(f"more than data.max_unreadable_fraction={self.max_unreadable_fraction:g} of the cases")
            )

    def _summary(self, what: str) -> str:
        listed = "\n".join(f"  {reason}" for reason in list(self.unreadable.values())[:10])
        return (
            f"{len(self.unreadable)} of {len(self.sampler)} cases could not be read ({what}):\n{listed}\n"
            "Find and redo every damaged case with nnssl_verify_dataset -d DATASET -c CONFIGURATION --redo, "
            "or raise data.max_unreadable_fraction to train on the rest."
        )


class SampleReadError(Exception):
    """Sample ``index`` of a batch being assembled could not be decoded (``error``, naming the case)."""

    def __init__(self, index: int, error: CaseReadError) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


class AssembledBatch:
    """A batch assembled by :meth:`_SampleDataset.__getitems__`; :class:`BatchCollator` passes it through."""

    def __init__(self, batch: dict[str, Any]) -> None:
        self.batch = batch


class BatchCollator:
    """Stack samples into batch buffers with one copy per array (see the module docstring).

    ``patch_size`` gives the shape of deferred (device-resampled) samples. ``pin``: main-process buffers are
    allocated in pinned memory (for CUDA). A main-process buffer is reused for the next batch only when nothing
    else references it any more (its storage's use count is 1), so batches kept by a caller are never overwritten.
    """

    def __init__(self, patch_size: Sequence[int], pin: bool = False) -> None:
        self.patch_size = tuple(int(p) for p in patch_size)
        self.pin = pin
        self._pool: dict[str, tuple[torch.Tensor, torch.UntypedStorage]] = {}
        self._scratch: dict[np.dtype, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pool": {}, "_scratch": {}}

    def __call__(self, samples: list[dict[str, Any]] | AssembledBatch) -> dict[str, Any]:
        if isinstance(samples, AssembledBatch):
            return samples.batch
        deferred = [(i, s[DEFERRED_KEY]) for i, s in enumerate(samples) if DEFERRED_KEY in s]
        keys: list[str] = []
        for sample in samples:
            keys += [k for k in sample if k not in keys and k != DEFERRED_KEY]
        for _, item in deferred:
            keys += [k for k in item.regions if k not in keys]
        batch: dict[str, Any] = {}
        stacked: dict[str, torch.Tensor] = {}
        for key in keys:
            values = [s.get(key) for s in samples]
            arrays = [v for v in values if isinstance(v, (np.ndarray, torch.Tensor, PlainRead))]
            if arrays or any(key in item.regions for _, item in deferred):
                batch[key] = stacked[key] = self._allocate(key, values, deferred)
            else:
                batch[key] = default_collate(values) if all(v is not None for v in values) else values
        deferred_rows = {i for i, _ in deferred}
        for i, sample in enumerate(samples):  # sample by sample: a damaged case is met in the per-sample order
            for key, out in stacked.items():
                try:
                    self._fill(out, i, key, sample.get(key), i in deferred_rows)
                except CaseReadError as err:
                    raise SampleReadError(i, err) from err
        if deferred:
            batch[DEFERRED_KEY] = [(i, item) for i, item in deferred]
        return batch

    def _allocate(self, key: str, values: list[Any], deferred: list[tuple[int, DeferredResampling]]) -> torch.Tensor:
        present = next((v for v in values if v is not None), None)
        if present is not None:
            shape = tuple(present.shape)
        else:
            channels = next(item.regions[key].shape[0] for _, item in deferred if key in item.regions)
            shape = (channels, *self.patch_size)
        dtype = torch.float32 if key == "image" else _torch_dtype(present, deferred, key)
        return self._buffer(key, (len(values), *shape), dtype)

    def _fill(self, out: torch.Tensor, i: int, key: str, value: Any, deferred: bool) -> None:
        """Write sample ``i``'s ``value`` of ``key`` into slot ``out[i]`` (a PlainRead is decoded into it)."""
        if isinstance(value, torch.Tensor):
            out[i].copy_(value)
        elif isinstance(value, PlainRead):
            value.read_into(out[i].numpy(), self._scratch_buffer)
        elif value is not None:
            np.copyto(out[i].numpy(), value, casting="unsafe")
        elif key in MASK_FILL:
            out[i].numpy().fill(MASK_FILL[key])
        elif not deferred:
            raise KeyError(f"Sample {i} of the batch has no '{key}' while others have it.")

    def _scratch_buffer(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A reused C-contiguous array of ``shape`` (valid until the next call for the same dtype)."""
        size = math.prod(shape)
        flat = self._scratch.get(np.dtype(dtype))
        if flat is None or flat.size < size:
            flat = self._scratch[np.dtype(dtype)] = np.empty(size, dtype=dtype)
        return flat[:size].reshape(shape)

    def _buffer(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if get_worker_info() is not None:  # shared memory: the main process receives it without a copy
            proto = torch.empty(0, dtype=dtype)
            storage = proto._typed_storage()._new_shared(math.prod(shape), device=proto.device)
            return proto.new(storage).resize_(shape)
        cached, storage = self._pool.get(key, (None, None))
        # free when nothing but the pool holds the tensor (the pool's tuple, ``cached`` and getrefcount's argument)
        # and its memory (the pool's tensor and storage object): a caller's batch or any view of it adds to these
        if (
            cached is not None
            and tuple(cached.shape) == shape
            and cached.dtype == dtype
            and sys.getrefcount(cached) == 3
            and _use_count(storage) == 2
        ):
            return cached
        fresh = torch.empty(shape, dtype=dtype, pin_memory=self.pin and torch.cuda.is_available())
        self._pool[key] = (fresh, fresh.untyped_storage())
        return fresh


def _use_count(storage: torch.UntypedStorage) -> int:
    """How many tensors and storage objects hold ``storage`` (0 where torch does not say: never reuse)."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    return int(count(storage._cdata)) if count is not None else 0


def _torch_dtype(present: Any, deferred: list[tuple[int, DeferredResampling]], key: str) -> torch.dtype:
    if isinstance(present, torch.Tensor):
        return present.dtype
    array = present if present is not None else next(item.regions[key] for _, item in deferred if key in item.regions)
    return torch.from_numpy(np.empty(0, dtype=array.dtype)).dtype


def resample_deferred(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move ``batch`` to ``device`` and resample its deferred samples there (trilinear images, nearest masks)."""
    deferred = batch.pop(DEFERRED_KEY, [])
    out = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    patch = out["image"].shape[2:]
    for i, item in deferred:
        for key, region in item.regions.items():
            if key not in out:
                continue
            source = torch.from_numpy(np.ascontiguousarray(region)).to(device, non_blocking=True)
            if key == "image":
                source = source.to(torch.float32)
            out[key][i] = resample_region_torch(source, item.theta, patch, nearest=key != "image")
        for key, fill in MASK_FILL.items():
            if key in out and key not in item.regions:
                out[key][i] = fill
    return out


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


#: PIDs of every loader worker process started here; those still running at interpreter exit are killed.
_WORKER_PIDS: set[int] = set()


def _kill_leftover_workers() -> None:
    """Kill this process's loader workers that are still running (their loader's shutdown did not reach them)."""
    for process in multiprocessing.active_children():
        if process.pid in _WORKER_PIDS:
            process.kill()
            process.join()


atexit.register(_kill_leftover_workers)  # atexit runs hooks last-registered first: before multiprocessing's join


def _worker_init(_: int) -> None:
    from nnssl.engine.signals import ignore_stop_signals

    torch.set_num_threads(1)
    ignore_stop_signals()  # SIGTERM to the process group / Ctrl-C: the main process saves and stops the workers


class TrainLoader:
    """Reproducible per-epoch training batches; ``make_iter(epoch)`` returns an infinite iterator of batches.

    Starting a new iterator (the next epoch) discards the previous one; workers persist across epochs. With
    ``augment_on`` (a device), batches are moved there and their deferred samples resampled there.
    """

    def __init__(
        self,
        dataset: _SampleDataset,
        batch_sampler: _EpochBatches,
        num_workers: int,
        pin: bool,
        collate: BatchCollator,
        augment_on: torch.device | None = None,
    ) -> None:
        self.batch_sampler = batch_sampler
        self.per_rank_batch_size = batch_sampler.batch_size
        self.augment_on = augment_on
        self.loader = DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=num_workers,
            collate_fn=collate,
            pin_memory=pin,
            persistent_workers=num_workers > 0,
            worker_init_fn=_worker_init if num_workers > 0 else None,
            prefetch_factor=2 if num_workers > 0 else None,
            generator=torch.Generator().manual_seed(0),  # keeps DataLoader's base-seed draw off the global stream
        )

    def make_iter(self, epoch: int) -> Iterator[dict[str, Any]]:
        """Batches of ``epoch``: ``{"image": (B, C, *patch) float32 tensor, masks, "unique_id": [str]}``."""
        self.batch_sampler.epoch = int(epoch)
        iterator = iter(self.loader)
        _WORKER_PIDS.update(worker.pid for worker in getattr(iterator, "_workers", ()))
        if self.augment_on is None:
            return iterator
        return (resample_deferred(batch, self.augment_on) for batch in iterator)

    __call__ = make_iter


def _augmentation_device(cfg: RunConfig, transform: Transform | None, device_type: str) -> torch.device | None:
    """The device that resamples rotated/scaled samples (None: the workers); invalid settings raise ConfigError."""
    from nnssl.overrides import ConfigError

    choice = cfg.data.spatial_augmentation_device
    if choice not in SPATIAL_DEVICES:
        raise ConfigError(f"data.spatial_augmentation_device={choice!r}: use one of {list(SPATIAL_DEVICES)}.")
    if choice == "cpu":
        return None
    problems = []
    if device_type != "cuda":
        problems.append(f"the run trains on '{device_type}' (use -device cuda)")
    if transform is not None:
        problems.append("the method cuts its views in the workers (only methods without a per-sample transform, "
                        "such as MAE, can defer resampling)")  # fmt: skip
    if cfg.data.interpolation_order != 1:
        problems.append(f"data.interpolation_order={cfg.data.interpolation_order} (the device path is trilinear: 1)")
    if problems:
        raise ConfigError(
            "data.spatial_augmentation_device=cuda cannot be used: " + "; ".join(problems) + ". "
            "Set data.spatial_augmentation_device=cpu."
        )
    return torch.device("cuda", torch.cuda.current_device())


def build_train_loader(
    images: Sequence[Any],
    cfg: RunConfig,
    transform: Transform | None,
    rank: int = 0,
    world_size: int = 1,
    device_type: str = "cpu",
    open_fn: Callable[[str], Any] | None = None,
    data_order: int | None = None,
    masks: Sequence[str] = (),
    augment_on: torch.device | str | None = None,
) -> TrainLoader:
    """Training loader over ``images`` (IndependentImage with a ``.b2nd`` ``image_path``, or case paths).

    Crops of ``cfg.train.patch_size`` with the augmentation of ``cfg.data``; ``transform`` (the method's
    ``train_transform()``) runs per sample in the workers; ``masks`` are the method's ``batch_masks``.
    ``data_order`` overrides ``cfg.data.interpolation_order``, the interpolation order used for rotated or scaled
    images. ``augment_on`` forces the device that resamples rotated/scaled samples (tests and benchmarks use
    ``"cpu"`` to run the device path without a GPU); by default ``cfg.data.spatial_augmentation_device`` decides.
    """
    device = _augmentation_device(cfg, transform, device_type) if augment_on is None else torch.device(augment_on)
    paths, ids = _image_paths_and_ids(images)
    sampler = PatchSampler(
        paths,
        cfg.train.patch_size,
        cfg.data,
        augment=True,
        unique_ids=ids,
        open_fn=open_fn,
        data_order=data_order,
        masks=masks,
    )
    pin = device_type == "cuda"
    collate = BatchCollator(cfg.train.patch_size, pin=pin and cfg.data.num_workers == 0)
    dataset = _SampleDataset(
        sampler, cfg.train.seed, transform, False, device is not None, cfg.data.max_unreadable_fraction, collate
    )
    batches = _EpochBatches(rank, per_rank_batch_size(cfg.train.batch_size, rank, world_size), None)
    return TrainLoader(dataset, batches, cfg.data.num_workers, pin, collate, device)


def build_val_loader(
    images: Sequence[Any],
    cfg: RunConfig,
    transform: Transform | None,
    rank: int = 0,
    world_size: int = 1,
    device_type: str = "cpu",
    open_fn: Callable[[str], Any] | None = None,
    masks: Sequence[str] = (),
) -> Callable[[], Iterator[dict[str, Any]]]:
    """A callable returning a fresh iterator of ``cfg.train.val_iterations`` fixed validation batches.

    Crops are seeded by ``(seed, i)`` only (the same on every call and every rank), cases are visited in turn,
    and there is no augmentation. ``transform`` is the method's ``val_transform()``.
    """
    paths, ids = _image_paths_and_ids(images)
    sampler = PatchSampler(
        paths, cfg.train.patch_size, cfg.data, augment=False, unique_ids=ids, open_fn=open_fn, masks=masks
    )
    batch_size = per_rank_batch_size(cfg.train.batch_size, rank, world_size)
    batches = _EpochBatches(VAL_STREAM, batch_size, cfg.train.val_iterations)
    num_workers = max(0, cfg.data.num_workers // 2)
    pin = device_type == "cuda"
    collate = BatchCollator(cfg.train.patch_size, pin=pin and num_workers == 0)
    dataset = _SampleDataset(sampler, cfg.train.seed, transform, True, False, cfg.data.max_unreadable_fraction, collate)
    loader = TrainLoader(dataset, batches, num_workers, pin, collate)
    return lambda: loader.make_iter(0)
