import collections
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from plasticity_core.data import DatasetError, load_dataset


def label_counts(ds):
    return collections.Counter(int(ds[i][1]) for i in range(len(ds)))


@pytest.mark.assets
def test_animal_silhouettes_real_and_stratified():
    d = load_dataset("bundled:animal-silhouettes", image_size=32, val_fraction=0.2, seed=0)
    assert d.classes[:3] == ["bear", "bird", "cat"] and d.num_classes == 10
    assert len(d.train) == 8000 and len(d.val) == 2000
    counts = label_counts(d.val)
    assert set(counts.values()) == {200}
    x, _ = d.train[0]
    raw = d.train.dataset.images
    assert x.shape == (3, 32, 32) and torch.equal(raw[0, 0], raw[0, 1])  # grayscale -> 3 identical channels
    assert raw.float().std() > 30  # real silhouettes, not a constant


@pytest.mark.assets
def test_mnist_5k_limit_and_normalisation():
    d = load_dataset("bundled:mnist-5k", image_size=28, limit=500, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert len(d.train) + len(d.val) == 500
    x = torch.stack([d.train[i][0] for i in range(50)])
    assert x.min() >= -1.0001 and x.max() <= 1.0001


def test_split_is_seeded_and_disjoint(synthetic):
    a = load_dataset("synthetic:classes=4,n=128,size=32", image_size=32, seed=1)
    b = load_dataset("synthetic:classes=4,n=128,size=32", image_size=32, seed=1)
    c = load_dataset("synthetic:classes=4,n=128,size=32", image_size=32, seed=2)
    assert a.train.indices == b.train.indices and a.train.indices != c.train.indices
    assert not set(a.train.indices) & set(a.val.indices)
    assert set(label_counts(a.val).values()) == {int(round(32 * 0.2))}


def test_synthetic_is_deterministic_and_learnable_by_a_linear_probe():
    d = load_dataset("synthetic:classes=4,n=256,size=16", image_size=16)
    # channel means as features: the class colour must be learnable, the pixel noise must not hide it
    x = torch.stack([d.train[i][0] for i in range(len(d.train))]).mean((2, 3))
    y = torch.tensor([d.train[i][1] for i in range(len(d.train))])
    xv = torch.stack([d.val[i][0] for i in range(len(d.val))]).mean((2, 3))
    yv = torch.tensor([d.val[i][1] for i in range(len(d.val))])
    w = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1)], 1), torch.nn.functional.one_hot(y).float()).solution
    acc = ((torch.cat([xv, torch.ones(len(xv), 1)], 1) @ w).argmax(1) == yv).float().mean()
    assert acc > 0.6  # chance is 0.25
    d2 = load_dataset("synthetic:classes=4,n=256,size=16", image_size=16)
    assert torch.equal(d.train[3][0], d2.train[3][0])


def test_folder_dataset_skips_unreadable_files(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="1 unreadable"):
        d = load_dataset(f"folder:{tmp_path}", image_size=24, val_fraction=0.2)
    assert d.classes == ["cats", "dogs"] and len(d.train) + len(d.val) == 10
    assert d.train[0][0].shape == (3, 24, 24)
    batch = next(iter(d.loader("train", batch_size=4)))
    assert batch[0].shape == (4, 3, 24, 24)


def test_bad_specs_give_specific_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no readable images"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(DatasetError, match="CIFAR10"):
        load_dataset("torchvision:CIFAR11")
    with pytest.raises(DatasetError, match="download=1"):
        load_dataset(f"torchvision:CIFAR10?root={tmp_path}")
    with pytest.raises(DatasetError, match="unknown dataset scheme"):
        load_dataset("hub:imagenet")
    with pytest.raises(DatasetError, match="option"):
        load_dataset("synthetic:classes=4,colour=3")


def test_augmented_loader_changes_only_train(synthetic):
    torch.manual_seed(0)
    plain = next(iter(synthetic.loader("train", batch_size=8, seed=0)))[0]
    aug = next(iter(synthetic.loader("train", batch_size=8, seed=0, augment=True)))[0]
    assert plain.shape == aug.shape and not torch.equal(plain, aug)
    v1 = next(iter(synthetic.loader("val", batch_size=8, augment=True)))[0]
    v2 = next(iter(synthetic.loader("val", batch_size=8)))[0]
    assert torch.equal(v1, v2)


def test_split_prefixes_and_probe_batches_cover_all_classes(synthetic):
    # stored class by class, a split's first items or a probe's first batch must still mix the classes
    d = load_dataset("synthetic:classes=4,n=256,size=16", image_size=16)
    first = [int(d.val[i][1]) for i in range(8)]
    assert len(set(first)) >= 3
    from plasticity_core.data import probe_batches

    ordered = torch.utils.data.Subset(d.train.dataset, sorted(d.train.indices, key=lambda i: int(d.train.dataset.labels[i])))
    x, y = next(iter(probe_batches(ordered, batch_size=16)))
    assert len(set(y.tolist())) >= 3
    again = next(iter(probe_batches(ordered, batch_size=16)))[1]
    assert torch.equal(y, again)  # seeded: the same probe every time


def test_train_per_class_is_nested_stratified_and_leaves_val_alone():
    spec = "synthetic:classes=4,n=256,size=16"
    full = load_dataset(spec, image_size=16, seed=3)
    few = {n: load_dataset(spec, image_size=16, seed=3, train_per_class=n) for n in (2, 5, 20)}
    labels = full.train.dataset.labels
    for n, d in few.items():
        assert d.val.indices == full.val.indices  # the val split does not depend on N
        assert collections.Counter(int(labels[i]) for i in d.train.indices) == {c: n for c in range(4)}
        assert set(d.train.indices) <= set(full.train.indices) and d.info["train"] == 4 * n
        assert d.info["train_counts"] == [n] * 4
    assert set(few[2].train.indices) < set(few[5].train.indices) < set(few[20].train.indices)
    other_seed = load_dataset(spec, image_size=16, seed=4, train_per_class=5)
    assert set(other_seed.train.indices) != set(few[5].train.indices)
    with pytest.raises(DatasetError, match="train_per_class=60.*fewer images"):
        load_dataset(spec, image_size=16, seed=3, train_per_class=60)  # 51 train images per class
    with pytest.raises(DatasetError, match="positive integer"):
        load_dataset(spec, image_size=16, train_per_class=0)
