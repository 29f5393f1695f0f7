"""Setup's data view: per-class counts of both splits and a seeded sample of images per class."""
import numpy as np

import plasticity_core as pc
from plasticity_core import samples


def test_class_counts_add_up_to_the_splits_and_match_the_labels():
    data = pc.load_dataset("synthetic:classes=4,n=160,size=32", image_size=32, val_fraction=0.25, seed=0)
    counts = samples.class_counts(data)
    assert list(counts["class"]) == data.classes
    assert counts["train"].sum() == len(data.train) and counts["val"].sum() == len(data.val)
    by_item = np.bincount([int(data.val[i][1]) for i in range(len(data.val))], minlength=4)
    assert counts["val"].tolist() == by_item.tolist()  # the label lists read through the Subset are the items' labels


def test_sample_images_per_class_are_seeded_and_undo_the_normalisation():
    data = pc.load_dataset("synthetic:classes=3,n=60,size=16", image_size=16, seed=0)
    grid = samples.sample_images(data, per_class=2, seed=1)
    assert list(grid) == data.classes and all(len(v) == 2 for v in grid.values())
    img = grid[data.classes[0]][0]
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8 and img.max() > img.min()
    again = samples.sample_images(data, per_class=2, seed=1)
    assert all(np.array_equal(a, b) for c in grid for a, b in zip(grid[c], again[c]))
    # an image of the sample is one of the class's raw images (the mean/std undone exactly up to rounding)
    labels = samples.split_labels(data.train)
    mean = np.asarray(data.mean)[:, None, None]
    std = np.asarray(data.std)[:, None, None]
    raw = [np.round(np.clip(data.train[i][0].numpy() * std + mean, 0, 1) * 255).transpose(1, 2, 0)
           for i in np.flatnonzero(labels == 0)]
    assert any(np.abs(r - img).max() <= 1 for r in raw)
