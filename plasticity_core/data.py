"""Target datasets: one spec string in, a seeded stratified train/val split out.

Specs: ``bundled:animal-silhouettes`` and ``bundled:mnist-5k`` (real images from the offline cache),
``folder:PATH`` (one sub-folder per class), ``torchvision:NAME?root=...&download=1`` (CIFAR10, CIFAR100,
Flowers102, DTD, EuroSAT, ...), and ``synthetic:classes=4,n=256,size=32,seed=0`` (procedural images with
learnable class structure, for tests). Grayscale becomes 3 channels; images are resized to ``image_size`` and
normalised with the backbone's mean/std.
"""
from __future__ import annotations

import copy
import gzip
import io
import math
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qsl

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from plasticity_core.errors import UserError
from plasticity_core.models import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]


class DatasetError(UserError):
    """A dataset spec that cannot be honoured (unknown name, empty folder, unreadable files, bad options)."""


class _ImageDataset(Dataset):
    """Shared tail of every dataset here: optional augmentation, then normalisation with the backbone's mean/std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], augment: bool) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = augment

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: float (3, H, W) in [0, 1]."""
        if self.augment:
            x = random_flip_crop(x)
        return (x - self.mean) / self.std

    def with_augment(self, augment: bool) -> "_ImageDataset":
        other = copy.copy(self)
        other.augment = augment
        return other


class ImageTensorDataset(_ImageDataset):
    """Images held in memory as uint8 ``(N, 3, H, W)`` at the target size (bundled and synthetic data)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 augment: bool = False) -> None:
        super().__init__(mean, std, augment)
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.finish(self.images[i].float().div_(255)), int(self.labels[i])


class FolderDataset(_ImageDataset):
    """Images read lazily from files (``folder:`` specs), resized per item."""

    def __init__(self, files: list[Path], labels: list[int], size: int, mean, std, augment: bool = False) -> None:
        super().__init__(mean, std, augment)
        self.files, self.labels, self.size = files, labels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.finish(self.decode(i).float().div_(255)), self.labels[i]

    def decode(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 ``(3, size, size)``: what ``__getitem__`` normalises (the device path stores it).
        Decoded with its real range (``decode_image``), then quantised to 8 bits."""
        return decode_image(self.files[i], self.size).mul_(255).round_().to(torch.uint8)


class SkippedFilesWarning(UserWarning):
    """Some image files of a folder could not be used (unreadable, or over PIL's decompression limit)."""


def _to_unit_range(im) -> np.ndarray:
    """A PIL image as float32 ``(H, W, 3)`` in [0, 1], read with its real range.

    8-bit modes (L, P, RGB, RGBA, CMYK, YCbCr, ...) become RGB / 255; 16-bit integer images / 65535; 32-bit integer
    images / 65535 when their values fit 16 bits (PIL reads 16-bit PNGs as 32-bit), else / (2^31 - 1); float
    images as they are when they lie in [0, 1], else min-max scaled to it (a float image has no fixed white).
    """
    mode = im.mode
    if mode.startswith("I;16"):
        x = np.asarray(im, dtype=np.float32) / 65535.0
    elif mode == "I":
        raw = np.asarray(im)
        x = raw.astype(np.float32) / (65535.0 if raw.min() >= 0 and raw.max() <= 65535 else 2147483647.0)
    elif mode == "F":
        x = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    else:
        if mode in ("LA", "PA", "La") or (mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    x = np.clip(x, 0.0, 1.0)
    return np.repeat(x[:, :, None], 3, axis=2)


def decode_image(path: Path | str, size: int | None = None) -> torch.Tensor:
    """One image file as float ``(3, H, W)`` in [0, 1] with its real range (16-bit, float, palette, CMYK), turned
    upright by its EXIF orientation, and resized to ``size`` x ``size`` (bilinear, antialiased) when given."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        x = torch.from_numpy(np.ascontiguousarray(_to_unit_range(im))).permute(2, 0, 1)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        x = x.clamp_(0, 1)
    return x


class WrappedDataset(_ImageDataset):
    """A torchvision dataset, resized per item."""

    def __init__(self, base: Dataset, size: int, mean, std, augment: bool = False) -> None:
        super().__init__(mean, std, augment)
        self.base, self.size = base, size

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, label = self.base[i]
        arr = np.asarray(img.convert("RGB")) if hasattr(img, "convert") else np.asarray(img)
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)
        x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)[0]
        return self.finish(x), int(label)


def augment_pad(size: int) -> int:
    """Reflection padding of the random crop: 1/8 of the side."""
    return max(1, size // 8)


def random_flip_crop(x: torch.Tensor, pad: int | None = None) -> torch.Tensor:
    """Random horizontal flip and a random crop after reflection padding (1/8 of the side), from the global RNG."""
    flip = bool(torch.rand(()) < 0.5)
    pad = pad if pad is not None else augment_pad(x.shape[-1])
    i, j = torch.randint(0, 2 * pad + 1, (2,)).tolist()
    return flip_crop(x, flip, i, j, pad)


def flip_crop(x: torch.Tensor, flip: bool, i: int, j: int, pad: int) -> torch.Tensor:
    """One image ``(C, H, W)``: optional horizontal flip, reflection padding, crop at offset ``(i, j)``."""
    if flip:
        x = x.flip(-1)
    padded = F.pad(x[None], (pad, pad, pad, pad), mode="reflect")[0]
    return padded[:, i:i + x.shape[-2], j:j + x.shape[-1]]


@dataclass
class DataBundle:
    """A train/val split of one dataset, with the class names and how images were prepared."""

    name: str
    train: Dataset
    val: Dataset
    classes: list[str]
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def loader(self, split: str = "train", batch_size: int = 64, shuffle: bool | None = None, augment: bool = False,
               num_workers: int = 0, seed: int = 0, drop_last: bool = False) -> DataLoader:
        """A DataLoader over a split; shuffled (seeded) for train by default; ``augment`` only affects train."""
        if split not in ("train", "val"):
            raise DatasetError(f"split must be 'train' or 'val', got {split!r}")
        ds = self.train if split == "train" else self.val
        if augment and split == "train":
            ds = _with_augment(ds)
        shuffle = (split == "train") if shuffle is None else shuffle
        g = torch.Generator().manual_seed(seed)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, generator=g,
                          drop_last=drop_last, persistent_workers=num_workers > 0)


def probe_batches(data: Any, batch_size: int = 32, seed: int = 0) -> Any:
    """Batches for statistics (diagnosis probes, BatchNorm recalibration) from a Dataset or a DataLoader.

    A Dataset is batched in a seeded random order: datasets are often stored class by class, and the first
    few batches in stored order would describe one or two classes only. DataLoaders and other iterables
    of batches are used as given.
    """
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        try:
            empty = len(data) == 0  # type: ignore[arg-type]
        except TypeError:
            empty = False
        if empty:
            raise DatasetError(f"the {type(data).__name__} given as data is empty (0 items): nothing to measure or "
                               f"recalibrate on; pass a Dataset or DataLoader with images")
        return DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return data


def _with_augment(ds: Dataset) -> Dataset:
    from torch.utils.data import Subset

    if isinstance(ds, Subset):
        return Subset(_with_augment(ds.dataset), ds.indices)
    return ds.with_augment(True) if hasattr(ds, "with_augment") else ds


def load_dataset(spec: str, image_size: int = 64, val_fraction: float = 0.2, seed: int = 0, limit: int | None = None,
                 data_config: dict | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, train_per_class: int | None = None) -> DataBundle:
    """Load a dataset spec (see module docstring) into a seeded, stratified train/val ``DataBundle``.

    Normalisation comes from ``mean``/``std``, else from ``data_config`` (a backbone's), else ImageNet's.
    ``limit`` keeps a stratified subset of at most that many images before splitting.
    ``train_per_class`` keeps the first N train images of each class in a seeded order (low-data studies): the val
    split does not depend on N, and the subsets are nested (the 5 per class are among the 10 per class).
    """
    if not 0 < val_fraction < 1:
        raise DatasetError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if image_size < 8:
        raise DatasetError(f"image_size must be >= 8, got {image_size}")
    mean = tuple(mean or (data_config or {}).get("mean") or IMAGENET_MEAN)
    std = tuple(std or (data_config or {}).get("std") or IMAGENET_STD)
    scheme, _, rest = spec.partition(":")
    name, _, query = rest.partition("?")
    opts = dict(parse_qsl(query))
    skipped = ""  # what a folder scan left out, said in info["skipped"]
    if scheme == "bundled":
        images, labels, classes = _bundled(name)
        base: Dataset = ImageTensorDataset(_resize_uint8(images, image_size), labels, mean, std)
    elif scheme == "synthetic":
        images, labels, classes = synthetic_images(**_synthetic_opts(name))
        base = ImageTensorDataset(_resize_uint8(images, image_size), labels, mean, std)
    elif scheme == "folder":
        if not name.strip():
            raise DatasetError("folder: needs the path of an image folder, e.g. folder:/data/my-images "
                               "(one sub-folder per class)")
        files, file_labels, classes, skipped = _scan_folder(Path(name).expanduser())
        base, labels = FolderDataset(files, file_labels, image_size, mean, std), torch.tensor(file_labels)
    elif scheme == "torchvision":
        tv, labels, classes = _torchvision(name, opts)
        base = WrappedDataset(tv, image_size, mean, std)
    else:
        raise DatasetError(f"unknown dataset scheme {scheme!r} in {spec!r}; use bundled:, folder:, torchvision: or synthetic:")
    if len(classes) < 2:
        raise DatasetError(f"{spec} has {len(classes)} class ({', '.join(classes) or 'none'}): classification needs at "
                           f"least 2 classes; add one sub-folder of images per class")
    idx = np.arange(len(labels))
    if limit is not None:
        if limit < 2 * len(classes):
            raise DatasetError(f"limit={limit} is too small for {len(classes)} classes")
        idx = _stratified(labels.numpy(), min(1.0, limit / len(labels)), seed)[1] if limit < len(labels) else idx
    train_idx, val_idx = _stratified(labels.numpy()[idx], val_fraction, seed)
    if train_per_class is not None:
        train_idx = _per_class(labels.numpy()[idx], train_idx, train_per_class, classes, spec)
    from torch.utils.data import Subset

    return DataBundle(name=spec, train=Subset(base, idx[train_idx].tolist()), val=Subset(base, idx[val_idx].tolist()),
                      classes=classes, image_size=image_size, mean=mean, std=std,
                      info=dict(total=len(idx), train=len(train_idx), val=len(val_idx), seed=seed,
                                train_per_class=train_per_class,
                                train_counts=np.bincount(labels.numpy()[idx][train_idx], minlength=len(classes)).tolist(),
                                **({"skipped": skipped} if skipped else {})))


def _per_class(labels: np.ndarray, train_idx: np.ndarray, n: int, classes: list[str], spec: str) -> np.ndarray:
    """The first ``n`` entries of each class in ``train_idx`` (already in a seeded random order), order kept."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DatasetError(f"train_per_class must be a positive integer, got {n!r}")
    counts = np.bincount(labels[train_idx], minlength=len(classes))
    short = [f"{classes[c]} ({counts[c]})" for c in range(len(classes)) if counts[c] < n]
    if short:
        raise DatasetError(f"train_per_class={n}: the train split of {spec} has fewer images in class(es) "
                           f"{', '.join(short[:5])}; lower train_per_class or raise the data limit")
    rank = np.zeros(len(train_idx), dtype=np.int64)
    seen: dict[int, int] = {}
    for i, c in enumerate(labels[train_idx].tolist()):
        rank[i] = seen.get(c, 0)
        seen[c] = rank[i] + 1
    return train_idx[rank < n]


def _stratified(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices split per class: (rest, picked) with ``fraction`` of each class in ``picked``, each shuffled."""
    rng = np.random.default_rng(seed)
    rest, picked = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rng.shuffle(members)
        k = int(round(len(members) * fraction))
        k = min(max(k, 1), len(members) - 1) if len(members) > 1 else 0
        picked.append(members[:k])
        rest.append(members[k:])
    return rng.permutation(np.concatenate(rest)), rng.permutation(np.concatenate(picked))


def _resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, 3, size, size), resized in chunks with antialiasing."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.contiguous()
    out = []
    for chunk in images.split(1024):
        x = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


class _NumpyOnly(pickle.Unpickler):
    """Unpickler that admits numpy arrays and nothing else (the animal-mnist files are numpy pickles)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def _bundled(name: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from plasticity_core.assets import asset_path

    if name == "animal-silhouettes":
        with gzip.open(asset_path("animal_images")) as f:
            images = _NumpyOnly(io.BytesIO(f.read())).load()
        with gzip.open(asset_path("animal_labels")) as f:
            labels = _NumpyOnly(io.BytesIO(f.read())).load()
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).reshape(-1, 1, 28, 28)
        return x, torch.from_numpy(np.asarray(labels, dtype=np.int64)).flatten(), list(ANIMAL_CLASSES)
    if name == "mnist-5k":
        raw = np.loadtxt(asset_path("mnist_5k"), delimiter=",", dtype=np.int64)
        x = torch.from_numpy(raw[:, :784].astype(np.uint8)).reshape(-1, 1, 28, 28)
        return x, torch.from_numpy(raw[:, 784]), [str(i) for i in range(10)]
    raise DatasetError(f"unknown bundled dataset {name!r}; bundled: animal-silhouettes, mnist-5k")


def _synthetic_opts(text: str) -> dict[str, int]:
    opts: dict[str, int] = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key not in ("classes", "n", "size", "seed", "noise"):
            raise DatasetError(f"synthetic option {key!r} unknown; use classes=, n=, size=, seed=, noise= (percent)")
        try:
            opts[key] = int(value)
        except ValueError:
            raise DatasetError(f"synthetic option {key}={value!r} must be an integer") from None
    return opts


def synthetic_images(classes: int = 4, n: int = 256, size: int = 32, seed: int = 0, noise: int = 30
                     ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Deterministic procedural images: each class is an oriented grating on its own colour, plus noise.

    Classes are separable but not trivially (random phase, contrast and ``noise`` percent of pixel noise), so a
    small network learns them within a few dozen steps: a real learning signal for tests.
    """
    if classes < 2 or n < classes:
        raise DatasetError(f"synthetic needs classes >= 2 and n >= classes, got classes={classes}, n={n}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    angles = labels.float() * math.pi / classes
    freq = 3.0 + (labels % 3).float()
    phase = torch.rand(n, generator=g) * 2 * math.pi
    proj = xx[None] * torch.cos(angles)[:, None, None] + yy[None] * torch.sin(angles)[:, None, None]
    grating = torch.sin(freq[:, None, None] * math.pi * proj + phase[:, None, None])
    tints = 0.35 + 0.3 * torch.rand(classes, 3, generator=g)  # a class colour: a cue a linear model can use
    contrast = 0.15 + 0.15 * torch.rand(n, generator=g)  # the grating: a cue that needs spatial filters
    img = tints[labels][:, :, None, None] + contrast[:, None, None, None] * grating[:, None]
    img = img + noise / 100 * torch.randn(n, 3, size, size, generator=g)
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels, [f"class{c}" for c in range(classes)]


def _scan_folder(root: Path) -> tuple[list[Path], list[int], list[str], str]:
    """Image files per class sub-folder, each opened and decoded once so that a damaged file is skipped now, not
    met in the middle of training. Returns files, labels, class names and a sentence on what was skipped."""
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist or is not a directory")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    hidden_top = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"image folder {root} has no class sub-folders (expected {root}/<class>/<image files>)")
    files, labels = [], []
    bad: dict[str, list[Path]] = {"unreadable": [], "too large": [], "hidden": []}
    for c, d in enumerate(class_dirs):
        for p in sorted(d.rglob("*")):
            if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
                continue
            if any(part.startswith(".") for part in p.relative_to(d).parts):  # .ipynb_checkpoints/, .DS_Store, ._x.png
                bad["hidden"].append(p)
                continue
            problem = _check_image(p)
            if problem:
                bad[problem].append(p)
                continue
            files.append(p)
            labels.append(c)
    skipped = _skipped_sentence(root, bad, len(files), hidden_top)
    if skipped:
        warnings.warn(skipped, SkippedFilesWarning, stacklevel=3)
    if not files:
        raise DatasetError(f"image folder {root} has no readable images in its class sub-folders "
                           f"({', '.join(d.name for d in class_dirs[:5])}); supported: {', '.join(sorted(IMAGE_SUFFIXES))}"
                           + (f"; {skipped}" if skipped else ""))
    counts = np.bincount(labels, minlength=len(class_dirs))
    empty = [class_dirs[i].name for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DatasetError(f"class folder(s) without readable images in {root}: {', '.join(empty)}"
                           + (f"; {skipped}" if skipped else ""))
    return files, labels, [d.name for d in class_dirs], skipped


def _check_image(path: Path) -> str | None:
    """``None`` when the file decodes; else "too large" (over PIL's decompression-bomb limit) or "unreadable"."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.draft(im.mode, (64, 64))  # JPEG: decode at reduced scale, enough to find a damaged file
                im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "too large"
    except Exception:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... for damaged files
        return "unreadable"
    return None


def _skipped_sentence(root: Path, bad: dict[str, list[Path]], kept: int, hidden_top: Sequence[str] = ()) -> str:
    from PIL import Image

    parts = []
    if bad.get("hidden"):
        parts.append(f"{len(bad['hidden'])} in hidden files or folders, ignored (e.g. {bad['hidden'][0].relative_to(root)}: "
                     f"copies such as .ipynb_checkpoints/ would be duplicates)")
    if bad["unreadable"]:
        parts.append(f"{len(bad['unreadable'])} unreadable (e.g. {bad['unreadable'][0].relative_to(root)})")
    if bad["too large"]:
        parts.append(f"{len(bad['too large'])} over PIL's decompression limit of {Image.MAX_IMAGE_PIXELS} pixels "
                     f"(e.g. {bad['too large'][0].relative_to(root)})")
    total = kept + sum(map(len, bad.values()))
    if hidden_top:
        parts.append(f"hidden folder(s) {', '.join(hidden_top[:5])} not read as classes")
    return f"skipped {total - kept} of {total} image files in {root}: {', '.join(parts)}" if parts else ""


TORCHVISION_DATASETS = {
    # name -> (constructor kwargs for the training split, how to read its labels)
    "CIFAR10": {"train": True}, "CIFAR100": {"train": True}, "MNIST": {"train": True},
    "FashionMNIST": {"train": True}, "SVHN": {"split": "train"}, "Flowers102": {"split": "train"},
    "DTD": {"split": "train"}, "EuroSAT": {}, "STL10": {"split": "train"}, "Food101": {"split": "train"},
    "OxfordIIITPet": {"split": "trainval"}, "GTSRB": {"split": "train"},
}


def _torchvision(name: str, opts: dict[str, str]) -> tuple[Dataset, torch.Tensor, list[str]]:
    import difflib

    import torchvision.datasets as tvd

    if name not in TORCHVISION_DATASETS:
        close = difflib.get_close_matches(name, list(TORCHVISION_DATASETS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DatasetError(f"torchvision dataset {name!r} not supported{hint} (supported: {', '.join(TORCHVISION_DATASETS)})")
    root = Path(opts.get("root", "~/.cache/plasticity-lab/torchvision")).expanduser()
    download = opts.get("download", "0").lower() in ("1", "true", "yes")
    try:
        ds = getattr(tvd, name)(root=str(root), download=download, **TORCHVISION_DATASETS[name])
    except RuntimeError as e:
        raise DatasetError(f"torchvision:{name} not found under {root} ({e}); add ?download=1 when online, "
                           f"or ?root=PATH where it is stored") from None
    for attr in ("targets", "labels", "_labels", "_samples"):
        if hasattr(ds, attr):
            raw = getattr(ds, attr)
            labels = torch.tensor([s[1] for s in raw] if attr == "_samples" else list(raw))
            break
    else:
        labels = torch.tensor([ds[i][1] for i in range(len(ds))])
    classes = list(getattr(ds, "classes", [str(i) for i in range(int(labels.max()) + 1)]))
    return ds, labels, classes


# --- The device feed moved to ``plasticity_core.train.feed``; its names stay importable from here -----------------
_FEED_NAMES = {'DATA_PATHS', 'epoch_orders', 'epoch_augments', 'flip_crop_batch', 'DeviceSplit', 'DataPlan', 'plan_data_path', 'TrainBatches', 'eval_batches'}


def __getattr__(name: str) -> Any:
    if name in _FEED_NAMES:  # loaded on first use by name: data.py is below the feed and never imports it
        import importlib

        return getattr(importlib.import_module("plasticity_core.train.feed"), name)
    raise AttributeError(f"module 'plasticity_core.data' has no attribute {name!r}")
