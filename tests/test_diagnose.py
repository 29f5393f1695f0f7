"""The engine end to end: batch-size invariance, hook hygiene, inputs, Diagnosis I/O and recommendations."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import plasticity_core as pc
from plasticity_core.hooks import hook_count
from plasticity_core.metrics import METRICS, Diagnosis, diagnose


def dataset(n=32, size=32, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    with torch.no_grad():  # undo zero_init_last so every branch gets gradients
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.1)
    return m


def test_batch_size_8_vs_32_gives_the_same_diagnosis(resnet):
    ds = dataset()
    ref = {k: v + 0.01 for k, v in resnet.state_dict().items() if v.is_floating_point()}
    a = diagnose(resnet, DataLoader(ds, batch_size=8), reference=ref)
    b = diagnose(resnet, DataLoader(ds, batch_size=32), reference=ref)
    assert a.meta["samples"] == b.meta["samples"] == 32 and a.meta["batches"] == 4 and b.meta["batches"] == 1
    pd.testing.assert_frame_equal(a.wide(), b.wide(), rtol=1e-4, atol=1e-6)
    assert set(a.unit_keys()) == set(b.unit_keys()) and a.unit_keys()
    for key in a.unit_keys():
        np.testing.assert_allclose(a.units(*key), b.units(*key), rtol=1e-4, atol=1e-6, err_msg=str(key))


def test_every_registered_metric_appears_and_nothing_is_nan(resnet):
    d = diagnose(resnet, dataset(8), reference=resnet.state_dict())
    assert set(d.metrics) == set(METRICS.names())
    assert np.isfinite(d.table["value"]).all()
    assert list(d.wide().index) == [l.name for l in pc.layer_map(resnet)]  # network order
    assert d.wide().at["fc", "sfe"] == 0.0
    assert set(d.meta["metric_versions"]) == set(METRICS.names())
    for key in ("model", "batches", "samples", "device", "seconds", "layers"):
        assert key in d.meta


def test_hooks_are_removed_and_mode_restored_when_the_forward_raises(resnet):
    class Boom(Exception):
        pass

    def bad_batches():
        yield torch.randn(2, 3, 32, 32), torch.zeros(2, dtype=torch.long)
        yield torch.randn(2, 5, 32, 32), torch.zeros(2, dtype=torch.long)  # wrong channel count
        raise Boom

    resnet.train()
    flags = [p.requires_grad for p in resnet.parameters()]
    before = hook_count(resnet)
    with pytest.raises(RuntimeError):
        diagnose(resnet, bad_batches())
    assert hook_count(resnet) == before
    assert resnet.training and [p.requires_grad for p in resnet.parameters()] == flags


def test_dataset_is_batched_in_order_and_progress_is_reported(resnet):
    calls = []
    d = diagnose(resnet, dataset(40), metrics=["dormant"], progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]
    assert (d.meta["batches"], d.meta["samples"]) == (2, 40)
    assert set(d.metrics) == {"dormant"}
    loader = DataLoader(dataset(40), batch_size=32)
    e = diagnose(resnet, loader, metrics=["dormant"])
    pd.testing.assert_frame_equal(d.table, e.table)


def test_max_batches_limits_the_probe(resnet):
    d = diagnose(resnet, DataLoader(dataset(40), batch_size=8), metrics=["dead"], max_batches=2)
    assert (d.meta["batches"], d.meta["samples"]) == (2, 16)


def test_backbone_reference_is_used_by_default(resnet):
    ref = {k: v.clone() for k, v in resnet.state_dict().items()}
    ref["layer1.0.conv1.weight"] = ref["layer1.0.conv1.weight"] + 0.5
    bb = SimpleNamespace(model=resnet, reference=ref)
    d = diagnose(bb, dataset(4), metrics=["sfe", "sfe_rel"])
    expected = 0.25 * resnet.layer1[0].conv1.weight.numel()
    assert d.wide().at["layer1.0.conv1", "sfe"] == pytest.approx(expected, rel=1e-5)
    assert d.wide().at["layer2.0.conv1", "sfe"] == 0.0
    plain = diagnose(resnet, dataset(4), metrics=["sfe", "sfe_rel", "dfi"])  # no reference: sfe absent
    assert set(plain.metrics) == {"dfi"}


def test_only_weight_metrics_never_touch_the_data(resnet):
    def no_data():
        raise AssertionError("data was iterated")
        yield

    d = diagnose(resnet, no_data(), metrics=["dfi", "spectral_norm"])
    assert d.meta["batches"] == 0 and set(d.metrics) == {"dfi", "spectral_norm"}


def test_bad_arguments_are_refused_clearly(resnet):
    with pytest.raises(KeyError, match="did you mean"):
        diagnose(resnet, dataset(4), metrics=["dormnt"])
    with pytest.raises(ValueError, match="no parameter"):
        diagnose(resnet, dataset(4), metrics=["dormant"], params={"dormant": {"threshold": 0.1}})
    with pytest.raises(TypeError, match="nn.Module or a Backbone"):
        diagnose("resnet", dataset(4))
    with pytest.raises(ValueError, match="no batches"):
        diagnose(resnet, [], metrics=["dead"])


def test_save_load_round_trip_is_lossless(resnet, tmp_path):
    d = diagnose(resnet, dataset(8), reference=resnet.state_dict())
    d.save(tmp_path / "d.parquet")
    e = Diagnosis.load(tmp_path / "d.parquet")
    pd.testing.assert_frame_equal(d.table, e.table, check_exact=True)
    assert e.meta == d.meta and sorted(e.unit_keys()) == sorted(d.unit_keys())
    for key in d.unit_keys():
        np.testing.assert_array_equal(d.units(*key), e.units(*key))
    pd.testing.assert_frame_equal(d.wide(), e.wide(), check_exact=True)


def test_units_lookup_explains_what_is_missing(resnet):
    d = diagnose(resnet, dataset(4), metrics=["dormant", "dfi"])
    assert d.units("layer1.0.conv1", "dormant").shape == (resnet.layer1[0].conv1.out_channels,)
    with pytest.raises(KeyError, match="layer-level"):
        d.units("layer1.0.conv1", "dfi")
    with pytest.raises(KeyError, match="unknown layer"):
        d.units("nope", "dormant")
    with pytest.raises(KeyError, match="no activation"):
        d.units("layer2.0.downsample.1", "dormant")


def test_vit_q_k_v_blocks_get_their_own_rows():
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False, num_classes=3)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(2, 3, 160, 160, generator=g), torch.tensor([0, 2]))]
    d = diagnose(vit, data, metrics=["grad_norm", "grad_dormant", "feature_erank", "dfi"])
    w = d.wide()
    assert {"blocks.0.attn.qkv.q", "blocks.0.attn.qkv.k", "blocks.0.attn.qkv.v"} <= set(w.index)
    d_model = vit.embed_dim
    assert d.units("blocks.0.attn.qkv.v", "grad_dormant").shape == (d_model,)
    full = diagnose(vit, data, metrics=["grad_norm"])
    parts = [full.wide().at[f"blocks.1.attn.qkv.{p}", "grad_norm"] for p in "qkv"]
    assert all(p > 0 for p in parts) and len(set(parts)) == 3


def dead_net(k: int) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    with torch.no_grad():
        net[2].bias[:k] = -1e4
    return net


def test_recommend_targets_the_layer_with_dead_units():
    d = diagnose(dead_net(5), dataset(16, size=8), metrics=["dormant", "dead", "saturation", "grad_dormant", "grad_norm", "fro_norm"])
    r = d.recommend(budget=0.6)
    assert r.ranking.iloc[0]["layer"] == "2"
    assert r.ranking.iloc[0]["score"] == pytest.approx(5 / 16)
    assert r.layers[0] == "2" and "6" not in r.layers  # never the head
    assert r.strategy == "targeted" and r.params == {"criterion": "dormant", "fraction": 0.32}
    assert "dormant" in r.reason
    cfg = r.to_config(seed=3)
    assert cfg.strategy == "targeted" and cfg.layers == r.layers and cfg.seed == 3
    sel = pc.select_layers(dead_net(5), include=r.layers)
    assert sel.names == r.layers
    # the proposal is applicable: every recommended layer is touched, and the dead units are the ones recycled
    net = dead_net(5)
    report = pc.apply_reinit(net, cfg, data=dataset(16, size=8))
    assert list(report.table["layer"]) == r.layers and not set(report.skipped["layer"]) & set(r.layers)
    changed = (net[2].weight != dead_net(5)[2].weight).flatten(1).any(1)
    assert changed.nonzero().flatten().tolist() == [0, 1, 2, 3, 4]


def test_recommend_on_a_mostly_dead_layer_and_budget_checks():
    d = diagnose(dead_net(15), dataset(16, size=8), metrics=["dormant", "dead"])
    r = d.recommend(budget=1)
    assert r.layers == ["2"] and r.strategy == "reset"
    with pytest.raises(ValueError, match="budget"):
        d.recommend(budget=0)
    empty = diagnose(dead_net(0), dataset(8, size=8), metrics=["dfi"]).recommend()
    assert empty.layers == [] and "No unit-level metrics" in empty.reason


def test_metric_registry_lists_every_family():
    families = {info.family for info in METRICS.values()}
    assert families == {"weights", "activations", "features", "gradients", "checks"}
    assert {m for m, info in METRICS.items() if info.unit_level} == {"dormant", "dead", "saturation", "grad_dormant"}
    assert pc.METRICS is METRICS and pc.diagnose is diagnose


def test_diagnose_gives_every_submodule_its_mode_back():
    """A frozen BatchNorm kept in eval inside a model in train mode stays in eval after diagnose (and after the layer
    map's trace): a training loop that diagnoses mid-run must not start updating frozen statistics."""
    import timm

    from plasticity_core.layers import layer_map
    from plasticity_core.metrics import diagnose

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    model.train()
    frozen = model.bn1
    frozen.eval()
    frozen.requires_grad_(False)
    before = {name: m.training for name, m in model.named_modules()}
    stats = frozen.running_mean.clone()
    data = [(torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,)))]
    diagnose(model, data, metrics=["dormant", "grad_norm"], max_batches=1)
    assert {name: m.training for name, m in model.named_modules()} == before
    layer_map(model)
    assert {name: m.training for name, m in model.named_modules()} == before
    model(torch.randn(4, 3, 32, 32))  # a training step's forward: the frozen BN does not move
    assert torch.equal(frozen.running_mean, stats)
    assert not frozen.weight.requires_grad


def test_a_data_bundle_is_refused_in_one_line_that_names_its_splits():
    from plasticity_core.data import DataBundle

    ds = dataset(8)
    bundle = DataBundle("tiny", ds, ds, ["a", "b", "c", "d"], 32, (0.5,) * 3, (0.5,) * 3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
    with pytest.raises(TypeError, match=r"got DataBundle: pass its \.val .* or \.train") as err:
        diagnose(model, bundle, metrics=["dormant"])
    assert "\n" not in str(err.value)
    assert diagnose(model, bundle.val, metrics=["dormant"], max_batches=1).meta["batches"] == 1
