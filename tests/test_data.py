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


def _rgb_folder(root, classes, per_class: int, hw: tuple[int, int], seed: int) -> None:
    """An ImageFolder of random RGB PNGs: root/<class>/<i>.png."""
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir()
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")


def test_folder_dataset_skips_unreadable_files(tmp_path):
    _rgb_folder(tmp_path, ("cats", "dogs"), per_class=5, hw=(20, 30), seed=0)
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


# ------------------------------------------------------------------ decoding with the real range (hand-made files)
def _decoded(path) -> np.ndarray:
    from plasticity_core.data import decode_image

    x = decode_image(path)
    assert x.dtype == torch.float32 and x.shape[0] == 3 and float(x.min()) >= 0 and float(x.max()) <= 1
    return x.permute(1, 2, 0).numpy()


def test_16bit_png_keeps_its_range(tmp_path):
    ramp = np.linspace(0, 65535, 24 * 32).astype(np.uint16).reshape(24, 32)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # really a 16-bit file
    x = _decoded(tmp_path / "g16.png")
    np.testing.assert_allclose(x[:, :, 0], ramp / 65535.0, atol=1e-6)
    assert np.array_equal(x[:, :, 0], x[:, :, 2])
    assert (x >= 0.999).mean() < 0.01  # was 96-99 % white when converted through 8-bit RGB


def test_float_and_32bit_tiffs_keep_their_range(tmp_path):
    rng = np.random.default_rng(0)
    unit = rng.random((20, 24), dtype=np.float32)
    Image.fromarray(unit, mode="F").save(tmp_path / "f.tif")
    np.testing.assert_allclose(_decoded(tmp_path / "f.tif")[:, :, 1], unit, atol=1e-6)
    wide = (unit * 1000 - 200).astype(np.float32)  # a float image with no fixed white: min-max scaled
    Image.fromarray(wide, mode="F").save(tmp_path / "wide.tif")
    np.testing.assert_allclose(_decoded(tmp_path / "wide.tif")[:, :, 0], (wide - wide.min()) / (wide.max() - wide.min()),
                               atol=1e-5)
    ints = (unit * 65535).astype(np.int32)
    Image.fromarray(ints, mode="I").save(tmp_path / "i32.tif")
    np.testing.assert_allclose(_decoded(tmp_path / "i32.tif")[:, :, 0], ints / 65535.0, atol=1e-6)


def test_palette_cmyk_and_exif_orientation(tmp_path):
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 4, (10, 12), dtype=np.uint8)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [250, 200, 10]], dtype=np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette(palette.flatten().tolist() + [0] * (768 - 12))
    im.save(tmp_path / "p.png")
    np.testing.assert_allclose(_decoded(tmp_path / "p.png"), palette[idx] / 255.0, atol=1e-6)

    cmyk = rng.integers(0, 128, (8, 9, 4), dtype=np.uint8)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "c.tif")
    want = (1 - cmyk[:, :, :3] / 255.0) * (1 - cmyk[:, :, 3:] / 255.0)  # R = (1 - C)(1 - K), no colour profile
    np.testing.assert_allclose(_decoded(tmp_path / "c.tif"), want, atol=1.5 / 255)

    arr = rng.integers(0, 255, (6, 10, 3), dtype=np.uint8)  # 6 rows x 10 columns as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(arr).save(tmp_path / "o.png", exif=exif)
    x = _decoded(tmp_path / "o.png")
    assert x.shape == (10, 6, 3)
    np.testing.assert_allclose(x, np.rot90(arr, k=-1) / 255.0, atol=1e-6)


def test_folder_of_16bit_images_loads_unclipped(tmp_path):
    rng = np.random.default_rng(2)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 65535, (16, 16), dtype=np.uint16)).save(tmp_path / c / f"{i}.png")
    d = load_dataset(f"folder:{tmp_path}", image_size=16, mean=(0, 0, 0), std=(1, 1, 1))
    x, _ = d.train[0]
    assert 0.3 < float(x.mean()) < 0.7 and float((x >= 0.999).float().mean()) < 0.05


def test_oversized_images_are_skipped_and_counted(tmp_path, monkeypatch):
    from plasticity_core.data import SkippedFilesWarning

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / c / f"{i}.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a" / "big.png")  # 1600 px
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "b" / "biggish.png")  # 900 px: between 1x and 2x
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)  # the limit PIL applies, lowered to keep the files small
    with pytest.warns(SkippedFilesWarning, match="skipped 2 of 8 image files") as rec:
        d = load_dataset(f"folder:{tmp_path}", image_size=8)
    assert "2 over PIL's decompression limit of 700 pixels" in str(rec[0].message)
    assert len(d.train) + len(d.val) == 6 and "skipped 2 of 8" in d.info["skipped"]


def test_fewer_than_two_classes_and_empty_path_are_refused(tmp_path):
    (tmp_path / "only").mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(tmp_path / "only" / f"{i}.png")
    with pytest.raises(DatasetError, match=r"1 class \(only\): classification needs at least 2 classes"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(DatasetError, match="folder: needs the path"):
        load_dataset("folder:")
    with pytest.raises(DatasetError, match="folder: needs the path"):
        load_dataset("folder:  ")


# --- the device-resident data path -----------------------------------------------------------------------------
from plasticity_core.data import (DeviceSplit, TrainBatches, augment_pad, eval_batches, flip_crop,  # noqa: E402
                                  plan_data_path)

CPU = torch.device("cpu")


@pytest.mark.parametrize("n,batch", [(100, 16), (40, 64)])  # drop_last, and one short batch per epoch
def test_device_path_gives_the_dataloader_batches_for_a_seed(n, batch):
    d = load_dataset(f"synthetic:classes=4,n={n},size=16", image_size=16)
    plan = plan_data_path(d)
    assert plan.path == "device" and "budget" in plan.reason
    drop_last = len(d.train) >= batch
    ref = d.loader("train", batch_size=batch, shuffle=True, seed=3, drop_last=drop_last)  # today's per-item loader
    dev = TrainBatches(d.train, plan.train, batch, 3, False, CPU)
    via_loader = TrainBatches(d.train, None, batch, 3, False, CPU)
    for _ in range(3):  # three epochs: the order continues across epoch boundaries as the loader's does
        for x, y in ref:
            xd, yd = next(dev)
            xl, yl = next(via_loader)
            assert torch.equal(y, yd) and torch.equal(y, yl)
            assert torch.allclose(x, xd, atol=1e-6, rtol=0) and torch.equal(x, xl)
    other = TrainBatches(d.train, plan.train, batch, 4, False, CPU)
    assert not torch.equal(next(other)[1], next(TrainBatches(d.train, plan.train, batch, 3, False, CPU))[1])


def test_device_normalisation_and_augmentation_match_the_cpu_transform():
    d = load_dataset("synthetic:classes=4,n=64,size=24", image_size=24, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    store = plan_data_path(d).train
    pad = augment_pad(24)
    index = torch.tensor([5, 0, 7, 7, 12, 30])
    flips = torch.tensor([True, False, True, False, True, False])
    offsets = torch.tensor([[0, 0], [2 * pad, 2 * pad], [1, 2 * pad], [pad, 0], [2, 1], [pad, pad]])
    x, y = store.batch(index, flips, offsets)
    plain, _ = store.batch(index)
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(3, 1, 1)
    for b, i in enumerate(index.tolist()):
        item, label = d.train[i]  # the per-item CPU transform: /255, normalise
        assert y[b] == label and torch.allclose(plain[b], item, atol=1e-6, rtol=0)
        raw = d.train.dataset.images[d.train.indices[i]].float() / 255
        expected = (flip_crop(raw, bool(flips[b]), int(offsets[b, 0]), int(offsets[b, 1]), pad) - mean) / std
        assert torch.allclose(x[b], expected, atol=1e-6, rtol=0)
    assert torch.equal(x[5], plain[5])  # offset (pad, pad) without a flip is the identity


def test_augmented_batches_are_the_same_on_both_paths_and_vary_per_epoch():
    d = load_dataset("synthetic:classes=4,n=64,size=16", image_size=16)
    plan = plan_data_path(d)
    dev = TrainBatches(d.train, plan.train, 8, 1, True, CPU)
    via_loader = TrainBatches(d.train, None, 8, 1, True, CPU)
    plain = TrainBatches(d.train, plan.train, 8, 1, False, CPU)
    changed = 0
    for _ in range(2 * dev.per_epoch):
        (xa, ya), (xb, yb), (xp, _) = next(dev), next(via_loader), next(plain)
        assert torch.equal(ya, yb) and torch.allclose(xa, xb, atol=1e-6, rtol=0)
        changed += not torch.equal(xa, xp)
    assert changed == 2 * dev.per_epoch  # every batch has some flipped or shifted image


def test_batches_resume_at_any_position():
    d = load_dataset("synthetic:classes=4,n=50,size=16", image_size=16)
    plan = plan_data_path(d)
    full = TrainBatches(d.train, plan.train, 8, 2, True, CPU)  # 5 batches per epoch
    expected = [next(full) for _ in range(18)]
    for store in (plan.train, None):
        resumed = TrainBatches(d.train, store, 8, 2, True, CPU, start=11)  # inside epoch 2
        for xa, ya in expected[11:]:
            xb, yb = next(resumed)
            assert torch.equal(ya, yb) and torch.allclose(xa, xb, atol=1e-6, rtol=0)


def test_folder_images_are_decoded_once_to_the_same_pixels(tmp_path):
    _rgb_folder(tmp_path, ("a", "b"), per_class=6, hw=(30, 20), seed=1)
    d = load_dataset(f"folder:{tmp_path}", image_size=16, val_fraction=0.25)
    plan = plan_data_path(d)
    assert plan.path == "device"
    x, y = plan.train.batch(torch.arange(len(d.train)))
    expected = torch.stack([d.train[i][0] for i in range(len(d.train))])
    assert torch.allclose(x, expected, atol=1e-6, rtol=0) and y.tolist() == [d.train[i][1] for i in range(len(d.train))]
    xs, ys = zip(*eval_batches(d.val, plan.val, 2, CPU))
    assert torch.allclose(torch.cat(xs), torch.stack([d.val[i][0] for i in range(len(d.val))]), atol=1e-6, rtol=0)


def test_over_budget_falls_back_to_the_loader_and_forced_paths():
    d = load_dataset("synthetic:classes=4,n=64,size=16", image_size=16)
    plan = plan_data_path(d, budget_mb=0.01)  # 64 x 3 x 16 x 16 bytes = 0.047 MB
    assert plan.path == "loader" and plan.over_budget and "exceed" in plan.reason and "0.01 MB" in plan.reason
    assert plan_data_path(d, "device", budget_mb=0.01).path == "device"  # forced: the user's call
    assert plan_data_path(d, "loader").path == "loader"
    from torch.utils.data import TensorDataset

    class Custom:  # a bundle whose splits can only be read per item
        name = "custom"
        train = val = TensorDataset(torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))

    assert plan_data_path(Custom()).path == "loader" and "per item" in plan_data_path(Custom()).reason
    with pytest.raises(DatasetError, match="data_path='device' is not possible"):
        plan_data_path(Custom(), "device")
    with pytest.raises(DatasetError, match="data_path must be"):
        plan_data_path(d, "gpu")


def test_device_split_moves_without_changing_batches():
    d = load_dataset("synthetic:classes=4,n=32,size=16", image_size=16)
    store = plan_data_path(d).val
    moved = store.to("cpu")
    assert isinstance(moved, DeviceSplit) and moved.nbytes == len(d.val) * 3 * 16 * 16
    assert torch.equal(moved.batch(torch.tensor([1, 0]))[0], store.batch(torch.tensor([1, 0]))[0])


@pytest.mark.gpu
def test_cuda_device_path_gives_the_cpu_batches():
    d = load_dataset("synthetic:classes=4,n=64,size=16", image_size=16)
    plan = plan_data_path(d)
    cpu = TrainBatches(d.train, plan.train, 8, 1, True, CPU)
    cuda = TrainBatches(d.train, plan.train.to("cuda"), 8, 1, True, torch.device("cuda"))
    via_loader = TrainBatches(d.train, None, 8, 1, True, torch.device("cuda"))
    for _ in range(2 * cpu.per_epoch):
        (xa, ya), (xb, yb), (xc, yc) = next(cpu), next(cuda), next(via_loader)
        assert xb.is_cuda and torch.equal(ya, yb.cpu()) and torch.equal(ya, yc.cpu())
        assert torch.allclose(xa, xb.cpu(), atol=1e-6, rtol=0) and torch.allclose(xa, xc.cpu(), atol=1e-6, rtol=0)


def test_hidden_folders_inside_class_folders_are_ignored_and_said(tmp_path):
    """Jupyter's .ipynb_checkpoints/ copies inside a class folder are not images of that class (duplicates that could
    land in val); they are left out and the skipped sentence says so, as for a hidden folder beside the classes."""
    import warnings

    from PIL import Image

    from plasticity_core.data import load_dataset

    for c in ("a", "b"):
        for i in range(4):
            (tmp_path / "imgs" / c).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), (40 * i, 100 if c == "a" else 200, 30)).save(tmp_path / "imgs" / c / f"{i}.png")
    (tmp_path / "imgs" / "a" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "imgs" / "a" / ".ipynb_checkpoints" / "0-checkpoint.png")
    Image.new("RGB", (16, 16)).save(tmp_path / "imgs" / "b" / "._1.png")
    (tmp_path / "imgs" / ".cache").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle = load_dataset(f"folder:{tmp_path}/imgs", image_size=16, val_fraction=0.25)
    assert len(bundle.train) + len(bundle.val) == 8 and bundle.classes == ["a", "b"]
    said = bundle.info["skipped"]
    assert "2 in hidden files or folders, ignored" in said and ".ipynb_checkpoints" in said
    assert "hidden folder(s) .cache not read as classes" in said
    assert any(".ipynb_checkpoints" in str(w.message) for w in caught)
