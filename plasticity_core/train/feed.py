"""The device feed: how a split reaches the training device, batch after batch, the same on every data path.

A split that fits the memory budget lives on the training device as uint8 and comes out in normalised (and
augmented) batches (``DeviceSplit``); larger or per-item-decoded data goes through a DataLoader. ``plan_data_path``
chooses, ``TrainBatches`` draws the training batches and ``eval_batches`` the evaluation ones. The sources
(datasets, decoding, splits) are ``plasticity_core.data``'s.
"""
from __future__ import annotations

import copy
import io
import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler


from plasticity_core.data import DatasetError, FolderDataset, ImageTensorDataset, augment_pad, flip_crop

# --- The device-resident data path -----------------------------------------------------------------------------
# A split that fits the memory budget lives on the training device as uint8 and comes out in normalised (and
# augmented) batches; larger or per-item-decoded data goes through a DataLoader. Both paths draw the same batches:
# the epoch order is the one ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))`` draws, and
# augmentation parameters come per epoch from their own seeded CPU generator, whatever the device.

DATA_PATHS = ("auto", "device", "loader")


def epoch_orders(n: int, seed: int) -> Iterator[torch.Tensor]:
    """Index permutations, epoch after epoch, exactly as a seeded shuffling DataLoader draws them.

    Per epoch the DataLoader's iterator draws a base seed from the generator, then ``RandomSampler`` draws a
    permutation and, once exhausted, a second one for its (empty) remainder. Replaying those draws lets a run
    start at any epoch (resume) and lets the device path use the loader's order without a loader.
    """
    g = torch.Generator().manual_seed(seed)
    while True:
        torch.empty((), dtype=torch.int64).random_(generator=g)
        perm = torch.randperm(n, generator=g)
        torch.randperm(n, generator=g)
        yield perm


def epoch_augments(n: int, size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per epoch: (flip ``(n,)`` bool, crop offset ``(n, 2)`` int64) for each position of the epoch's order."""
    g = torch.Generator().manual_seed(seed + 7919)
    span = 2 * augment_pad(size) + 1
    while True:
        yield torch.rand(n, generator=g) < 0.5, torch.randint(0, span, (n, 2), generator=g)


def flip_crop_batch(x: torch.Tensor, flips: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """``flip_crop`` for a batch ``(B, C, H, W)``: per image its flip and crop offset, as a few batched tensor ops."""
    h, w = x.shape[-2:]
    x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    windows = F.pad(x, (pad, pad, pad, pad), mode="reflect").unfold(2, h, 1).unfold(3, w, 1)  # (B, C, I, J, h, w)
    return windows[torch.arange(len(x), device=x.device), :, offsets[:, 0], offsets[:, 1]]


class DeviceSplit:
    """One split held on a device as uint8 ``(N, 3, H, W)`` plus int64 labels; batches come out normalised."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | str = "cpu") -> None:
        self.images, self.labels = images.to(device), labels.to(device, torch.int64)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()

    def to(self, device: torch.device | str) -> "DeviceSplit":
        """This split on ``device`` (one copy of the uint8 images; normalisation happens per batch there)."""
        other = copy.copy(self)
        other.images, other.labels = self.images.to(device), self.labels.to(device)
        other.mean, other.std = self.mean.to(device), self.std.to(device)
        return other

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> float, the same operations as the per-item CPU transform (so the same numbers)."""
        return (x.float().div_(255) - self.mean) / self.std

    def batch(self, index: torch.Tensor, flips: torch.Tensor | None = None,
              offsets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images and labels at ``index`` (on the device), flipped and cropped when params are given."""
        x = self.normalise(self.images[index])
        if flips is not None:  # after normalising: a per-channel affine map commutes with flips, padding and crops
            x = flip_crop_batch(x, flips, offsets, augment_pad(x.shape[-1]))
        return x, self.labels[index]


@dataclass
class DataPlan:
    """Which data path a run takes and why; the device splits when it is the device path."""

    path: str  # "device" | "loader"
    reason: str
    train: DeviceSplit | None = None
    val: DeviceSplit | None = None
    over_budget: bool = False


def _uint8_source(ds: Any) -> tuple[Any, list[int] | None]:
    """(in-memory-capable base dataset, subset indices) or (None, None) when a split can only be read per item."""
    from torch.utils.data import Subset

    if isinstance(ds, Subset):
        base, idx = _uint8_source(ds.dataset)
        if base is None:
            return None, None
        inner = list(range(len(base))) if idx is None else idx
        return base, [inner[i] for i in ds.indices]
    if isinstance(ds, (ImageTensorDataset, FolderDataset)) and not ds.augment:
        return ds, None
    return None, None


def _split_bytes(base: Any, idx: list[int] | None) -> int:
    n = len(base) if idx is None else len(idx)
    shape = base.images.shape[1:] if isinstance(base, ImageTensorDataset) else (3, base.size, base.size)
    return n * math.prod(shape)


class _Decoded(Dataset):
    def __init__(self, base: "FolderDataset", idx: list[int]) -> None:
        self.base, self.idx = base, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.base.decode(self.idx[i])


def _split_uint8(base: Any, idx: list[int] | None, num_workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and labels of a split; folder images are decoded once (in parallel workers) and cached."""
    idx = list(range(len(base))) if idx is None else idx
    if isinstance(base, ImageTensorDataset):
        index = torch.tensor(idx, dtype=torch.long)
        return base.images[index], base.labels[index]
    cache = base.__dict__.setdefault("_decoded_cache", {})
    key = tuple(idx)
    if key not in cache:
        loader = DataLoader(_Decoded(base, idx), batch_size=256, num_workers=num_workers)
        images = torch.cat(list(loader)) if idx else torch.zeros(0, 3, base.size, base.size, dtype=torch.uint8)
        cache[key] = images, torch.tensor([base.labels[i] for i in idx], dtype=torch.int64)
    return cache[key]


def plan_data_path(data: Any, mode: str = "auto", budget_mb: float = 2048, num_workers: int = 0) -> DataPlan:
    """Choose the device path (train and val as uint8 on the device) or the DataLoader path, with the reason.

    ``auto`` takes the device path when both splits are in-memory-capable (bundled, synthetic, folder images) and
    their uint8 size fits ``budget_mb``; ``device`` insists (ignoring the budget), ``loader`` never takes it.
    The returned splits are on the CPU; ``DeviceSplit.to`` is up to the caller (``finetune`` moves them).
    """
    if mode not in DATA_PATHS:
        raise DatasetError(f"data_path must be one of {', '.join(DATA_PATHS)}, got {mode!r}")
    if mode == "loader":
        return DataPlan("loader", "data_path='loader' requested")
    (tb, ti), (vb, vi) = _uint8_source(data.train), _uint8_source(data.val)
    if tb is None or vb is None:
        why = ("its splits are read and decoded per item (torchvision datasets, custom datasets, per-item "
               "augmentation); the device path holds bundled, synthetic and folder images")
        if mode == "device":
            raise DatasetError(f"data_path='device' is not possible for {getattr(data, 'name', 'this data')}: {why}; "
                               "use data_path='auto' or 'loader'")
        return DataPlan("loader", f"DataLoader: {why}")
    nbytes = _split_bytes(tb, ti) + _split_bytes(vb, vi)
    size = f"{nbytes / 2**20:.1f} MB of uint8 images"
    if mode == "auto" and nbytes > budget_mb * 2**20:
        return DataPlan("loader", f"DataLoader: {size} exceed the device-path memory budget of {budget_mb:g} MB "
                        "(data_memory_mb); raise it or keep the loader", over_budget=True)
    train = DeviceSplit(*_split_uint8(tb, ti, num_workers), tb.mean.flatten().tolist(), tb.std.flatten().tolist())
    val = DeviceSplit(*_split_uint8(vb, vi, num_workers), vb.mean.flatten().tolist(), vb.std.flatten().tolist())
    how = "requested (data_path='device')" if mode == "device" else f"within the {budget_mb:g} MB budget"
    return DataPlan("device", f"device-resident: {size}, {how}", train, val)


class _EpochBatchSampler(Sampler):
    """Endless index batches in the seeded epoch order, from batch ``start`` on (a DataLoader ``batch_sampler``)."""

    def __init__(self, n: int, batch_size: int, drop_last: bool, seed: int, start: int = 0) -> None:
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start
        self.per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, pos = divmod(self.start, self.per_epoch)
        orders = epoch_orders(self.n, self.seed)
        for _ in range(epoch):
            next(orders)
        while True:
            perm = next(orders)
            for b in range(pos, self.per_epoch):
                yield perm[b * self.batch_size:(b + 1) * self.batch_size].tolist()
            pos = 0


class TrainBatches:
    """Endless training batches on ``device``: the seeded epoch order, augmented on the device when asked.

    With a ``DeviceSplit`` the batches are gathered on the device; otherwise a DataLoader (workers, pinned memory,
    non-blocking copies) reads ``dataset`` in the same order. ``start`` skips that many batches (a resumed run
    continues the order and the augmentation exactly). ``consumed`` counts the batches handed out so far.
    """

    def __init__(self, dataset: Dataset, store: DeviceSplit | None, batch_size: int, seed: int, augment: bool,
                 device: torch.device, num_workers: int = 0, start: int = 0) -> None:
        n = len(store if store is not None else dataset)  # type: ignore[arg-type]
        if n == 0:
            raise DatasetError("the train split is empty")
        self.store, self.device, self.batch_size, self.consumed = store, device, batch_size, start
        drop_last = n >= batch_size  # no last batch of a few images (BatchNorm cannot train on one)
        self.per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
        self._orders = epoch_orders(n, seed)
        size = int(store.images.shape[-1] if store is not None else dataset[0][0].shape[-1])
        self._augs = epoch_augments(n, size, seed) if augment else None
        epoch = start // self.per_epoch
        for _ in range(epoch):
            next(self._orders)
            if self._augs is not None:
                next(self._augs)
        self._epoch = epoch - 1
        self._loader_iter = None
        if store is None:
            sampler = _EpochBatchSampler(n, batch_size, drop_last, seed, start)
            cuda = device.type == "cuda"
            loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=cuda,
                                persistent_workers=False, generator=torch.Generator().manual_seed(seed))
            self._loader_iter = iter(loader)

    def _next_epoch(self) -> None:
        self._epoch += 1
        perm = next(self._orders)
        aug = next(self._augs) if self._augs is not None else None
        copy_ = (lambda t: t.pin_memory().to(self.device, non_blocking=True)) if self.device.type == "cuda" else \
            (lambda t: t.to(self.device))
        self._perm = copy_(perm) if self.store is not None else None
        self._aug = None if aug is None else (copy_(aug[0]), copy_(aug[1]))

    def __iter__(self) -> "TrainBatches":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, pos = divmod(self.consumed, self.per_epoch)
        while self._epoch < epoch:
            self._next_epoch()
        sl = slice(pos * self.batch_size, (pos + 1) * self.batch_size)
        flips, offsets = (None, None) if self._aug is None else (self._aug[0][sl], self._aug[1][sl])
        if self.store is not None:
            x, y = self.store.batch(self._perm[sl], flips, offsets)
        else:
            x, y = next(self._loader_iter)  # type: ignore[arg-type]
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if flips is not None:
                x = flip_crop_batch(x, flips, offsets, augment_pad(x.shape[-1]))
        self.consumed += 1
        return x, y

    def close(self) -> None:
        """Stop the loader's workers (if any)."""
        self._loader_iter = None


def eval_batches(dataset: Dataset, store: DeviceSplit | None, batch_size: int, device: torch.device,
                 max_batches: int | None = None, num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The val split in stored order, on ``device``: the first ``max_batches`` batches (None: all of it)."""
    if store is not None:
        n = len(store)
        stop = n if max_batches is None else min(n, max_batches * batch_size)
        for i in range(0, stop, batch_size):
            index = torch.arange(i, min(i + batch_size, stop), device=store.images.device)
            yield store.batch(index)
        return
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    for b, (x, y) in enumerate(loader):
        if max_batches is not None and b >= max_batches:
            break
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
