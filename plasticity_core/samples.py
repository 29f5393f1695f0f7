"""What a target dataset looks like: per-class image counts of each split and a seeded sample of images per class,
as the model sees them (resized; the normalisation undone for display)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Subset

from plasticity_core.data import DataBundle


def split_labels(ds: Dataset) -> np.ndarray:
    """The label of every item of a split, read from the dataset's label list (``labels`` / ``targets``) through any
    ``Subset`` layers; a dataset without one is read item by item."""
    if isinstance(ds, Subset):
        inner = split_labels(ds.dataset)
        return inner[np.asarray(ds.indices, dtype=np.int64)] if len(ds.indices) else inner[:0]
    for source in (ds, getattr(ds, "base", None)):
        for attr in ("labels", "targets"):
            labels = getattr(source, attr, None)
            if labels is not None and not callable(labels) and len(labels) == len(ds):  # type: ignore[arg-type]
                return np.asarray(labels.tolist() if isinstance(labels, torch.Tensor) else list(labels), dtype=np.int64)
    return np.asarray([int(ds[i][1]) for i in range(len(ds))], dtype=np.int64)  # type: ignore[arg-type]


def class_counts(data: DataBundle) -> pd.DataFrame:
    """One row per class: class, train, val (images of that class in each split), in class order."""
    out = pd.DataFrame({"class": list(data.classes)})
    for split in ("train", "val"):
        labels = split_labels(getattr(data, split))
        out[split] = np.bincount(labels, minlength=len(data.classes))[:len(data.classes)] if len(labels) else 0
    return out


def sample_images(data: DataBundle, per_class: int = 6, split: str = "train", seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Up to ``per_class`` images of each class (class name -> HxWx3 uint8 arrays), drawn in a seeded random order."""
    ds: Any = getattr(data, split)
    labels = split_labels(ds)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).numpy()
    mean = torch.tensor(data.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(data.std, dtype=torch.float32).view(-1, 1, 1)
    out: dict[str, list[np.ndarray]] = {c: [] for c in data.classes}
    for i in order:
        name = data.classes[int(labels[i])]
        if len(out[name]) < per_class:
            x, _ = ds[int(i)]
            img = (x.float() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
            out[name].append(img.permute(1, 2, 0).numpy())
            if all(len(v) >= per_class for v in out.values()):
                break
    return out
