"""The contract every registered metric keeps, parametrised over ``METRICS.names()``: adding a metric adds its cases.

Every declared parameter changes the result where it should, the result does not depend on the batch size,
nothing is NaN on finite input, CPU and CUDA agree (with TF32 off, the default), and the entry documents itself.
"""
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from plasticity_core.metrics import METRICS, diagnose

# For each declared parameter: a second value that must change the metric on ``net()`` / ``data()``.
OTHER_VALUE = {
    ("dormant", "tau"): 0.9,
    ("dead", "min_fraction"): 0.7,
    ("saturation", "eps"): 0.5,
    ("sfe_rel", "eps"): 1e6,
    ("grad_dormant", "tau"): 0.9,
}


def net() -> nn.Module:
    """conv-BN-ReLU (post-hook path), conv-GELU (pre-hook path), pooled, Linear-Tanh (2-D units), head."""
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1), nn.GELU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 3),
    )
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
        m[3].bias.sub_(1.5)  # a visible share of GELU inputs in the flat tail
        m[7].weight.mul_(4.0)  # and of tanh inputs
    return m.eval()


def data(n: int = 24) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, 10, 10, generator=g), torch.randint(0, 3, (n,), generator=g))


def reference(m: nn.Module) -> dict:
    g = torch.Generator().manual_seed(1)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in m.state_dict().items() if v.is_floating_point()}


@pytest.fixture(scope="module")
def diagnoses():
    m = net()
    ref = reference(m)
    small = diagnose(m, DataLoader(data(), batch_size=4), reference=ref)
    large = diagnose(m, DataLoader(data(), batch_size=24), reference=ref)
    return small, large


def test_every_declared_parameter_has_a_case_here():
    declared = {(m, p) for m, info in METRICS.items() for p in info.defaults}
    assert declared == set(OTHER_VALUE), "add a case to OTHER_VALUE for each new metric parameter"


@pytest.mark.parametrize("metric,param", sorted(OTHER_VALUE))
def test_every_declared_parameter_changes_the_result(metric, param):
    m = net()
    ref = reference(m) if metric == "sfe_rel" else None
    if metric == "sfe_rel":  # a layer whose reference is almost zero: the floor eps decides
        ref["9.weight"] = torch.full_like(ref["9.weight"], 1e-4)
    base = diagnose(m, data(), reference=ref, metrics=[metric])
    other = diagnose(m, data(), reference=ref, metrics=[metric], params={metric: {param: OTHER_VALUE[(metric, param)]}})
    assert other.meta["metric_params"][metric][param] == OTHER_VALUE[(metric, param)]
    a, b = base.wide()[metric], other.wide()[metric]
    assert not np.allclose(a.to_numpy(), b.to_numpy(), equal_nan=True), f"{metric}.{param} changed nothing"


@pytest.mark.parametrize("name", METRICS.names())
def test_metric_is_batch_size_invariant(name, diagnoses):
    small, large = diagnoses
    a, b = small.wide(), large.wide()
    if name == "nonfinite":
        assert (a[name] == 0).all() and (b[name] == 0).all()
        return
    assert name in a.columns and a[name].notna().any(), f"{name} gave no value on the contract model"
    pd.testing.assert_series_equal(a[name], b[name], rtol=1e-4, atol=1e-6)
    if METRICS[name].unit_level:
        for layer in a.index[a[name].notna()]:
            np.testing.assert_allclose(small.units(layer, name), large.units(layer, name), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", METRICS.names())
def test_metric_is_never_nan_on_finite_input(name, diagnoses):
    small, _ = diagnoses
    values = small.table[small.table["metric"] == name]["value"]
    assert len(values) and np.isfinite(values).all()
    if METRICS[name].unit_level:
        for layer in small.table[small.table["metric"] == name]["layer"]:
            assert np.isfinite(small.units(layer, name)).all()


@pytest.mark.parametrize("name", METRICS.names())
def test_metric_documents_itself(name):
    info = METRICS[name]
    assert info.definition and info.version >= 1 and info.impl is not None and info.family
    assert "\n" not in info.definition


@pytest.mark.gpu
@pytest.mark.parametrize("name", METRICS.names())
def test_cpu_and_cuda_agree(name):
    m = net()
    ref = reference(m)
    cpu = diagnose(m, data(), reference=ref, metrics=[name])
    cuda = diagnose(m, data(), reference=ref, metrics=[name], device="cuda")
    assert cuda.meta["device"].startswith("cuda") and cuda.meta["precision"] == "exact"
    pd.testing.assert_frame_equal(cpu.wide(), cuda.wide(), rtol=1e-4, atol=1e-6)


# ---- non-finite values: counted, reported, never a crash or a silent number ----

def test_a_nan_pixel_is_counted_and_reported_never_a_silent_zero():
    ds = data()
    x = ds.tensors[0].clone()
    x[3, 1, 4, 4] = float("nan")
    with pytest.warns(UserWarning, match="non-finite") as caught:
        d = diagnose(net(), TensorDataset(x, ds.tensors[1]))
    assert "0" in str(caught[0].message)  # names the layers
    assert d.meta["nonfinite"]["inputs"] == 1 and "0" in d.meta["nonfinite"]["layers"]
    w = d.wide()
    assert (w.loc[["0", "3", "7"], "nonfinite"] > 0).all()
    x[5, 0, 1, 1], x[6, 2, 0, 0], x[7, 0, 0, 0], x[8, 0, 0, 0] = float("inf"), -float("inf"), 3e38, -0.0
    with pytest.warns(UserWarning, match="non-finite"):
        d = diagnose(net(), TensorDataset(x, ds.tensors[1]))
    assert d.meta["nonfinite"]["inputs"] == 3  # NaN, inf, -inf; a huge finite value and -0.0 are not counted
    # one NaN sample reaches every unit: the activation metrics have no defined value, and say so (NaN)
    assert w.loc[["0", "3", "7"], ["dormant", "dead", "saturation", "feature_erank"]].isna().all().all()
    assert np.isnan(d.units("0", "dormant")).all()
    assert np.isfinite(w.loc["0", "dfi"])  # the weights are fine
    r = d.recommend()
    assert r.layers == [] and r.reason.startswith("Refused") and "non-finite" in r.reason


def test_a_nan_weight_gives_nan_weight_metrics_and_no_crash():
    m = net()
    with torch.no_grad():
        m[3].weight[0, 0, 1, 1] = float("inf")
    with pytest.warns(UserWarning, match="non-finite"):
        d = diagnose(m, data(8))
    w = d.wide()
    assert w.loc["3", "nonfinite"] >= 1
    assert w.loc["3", ["dfi", "spectral_norm", "stable_rank", "dfi_si"]].isna().all()
    assert np.isfinite(w.loc["0", ["dfi", "spectral_norm", "dormant"]]).all()  # upstream of the broken weight
    assert d.recommend().layers == []
    with pytest.warns(UserWarning, match="non-finite"):  # again, the weight metrics from the cache: still NaN
        again = diagnose(m, data(8)).wide()
    pd.testing.assert_frame_equal(again, w)


def test_units_partly_fed_nan_are_excluded_and_the_rest_still_scored():
    m = nn.Sequential(nn.Conv2d(6, 6, 1, groups=6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
    with torch.no_grad():  # depthwise: unit c reads input channel c only
        m[0].weight.fill_(1.0)
        m[0].weight[3] = 0.001
        m[0].bias.copy_(torch.tensor([0.0, 5.0, 5.0, 0.0, -100.0, 5.0]))
    x = torch.randn(4, 6, 5, 5, generator=torch.Generator().manual_seed(0))
    x[2, 0, 1, 1] = float("nan")  # reaches unit 0 only
    with pytest.warns(UserWarning, match="non-finite"):
        d = diagnose(m, [(x, torch.zeros(4, dtype=torch.long))], metrics=["dormant", "dead", "nonfinite"],
                     params={"dormant": {"tau": 0.1}})
    for metric in ("dormant", "dead"):
        u = d.units("0", metric)
        assert np.isnan(u[0]) and np.isfinite(u[1:]).all()
    assert d.wide().at["0", "nonfinite"] == 1
    assert d.wide().at["0", "dead"] == pytest.approx(1 / 5)  # unit 4, of the five finite ones
    assert d.wide().at["0", "dormant"] == pytest.approx(2 / 5)  # units 3 (weak) and 4 (silent)


# ---- precision policy ----

def test_tf32_is_off_inside_and_restored_after_also_on_errors():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                         torch.get_float32_matmul_precision()))
            return x

    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), Spy(), nn.Linear(4, 2))
    x = [(torch.randn(2, 4), torch.zeros(2, dtype=torch.long))]
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        d = diagnose(m, x, metrics=["dormant"])
        assert seen[-1] == (False, False, "highest") and d.meta["precision"] == "exact"
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        fast = diagnose(m, x, metrics=["dormant"], precision="fast")
        assert seen[-1][:2] == (True, True) and fast.meta["precision"] == "fast"
        with pytest.raises(RuntimeError):
            diagnose(m, [(torch.randn(2, 5), None)], metrics=["dormant"])  # wrong width: the forward raises
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with pytest.raises(ValueError, match="precision"):
            diagnose(m, x, precision="bf16")
    finally:
        torch.set_float32_matmul_precision(saved[2])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[0], saved[1]


def test_meta_records_device_precision_versions_and_nonfinite():
    d = diagnose(net(), data(8), metrics=["dormant", "spectral_norm"])
    assert d.meta["device"] == "cpu" and d.meta["precision"] == "exact"
    assert d.meta["metric_versions"] == {"dormant": METRICS["dormant"].version, "spectral_norm": METRICS["spectral_norm"].version}
    assert d.meta["nonfinite"]["inputs"] == 0 and d.meta["nonfinite"]["layers"] == []
    assert "nonfinite" not in d.metrics  # shown when asked for, or whenever something was non-finite


# ---- no host synchronisation inside the batch loop ----

SYNCING = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


def count_syncing_calls(monkeypatch, fn) -> int:
    calls = [0]
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *a, _original=original, **k):
            calls[0] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    try:
        fn()
    finally:
        monkeypatch.undo()
    return calls[0]


def test_the_batch_loop_never_reads_a_value_back_to_the_host(monkeypatch):
    m = net()
    ref = reference(m)
    one = DataLoader(data(8), batch_size=8)
    four = DataLoader(data(32), batch_size=8)
    diagnose(m, one, reference=ref)  # warm the layer map and the weight cache
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        n1 = count_syncing_calls(monkeypatch, lambda: diagnose(m, one, reference=ref))
        n4 = count_syncing_calls(monkeypatch, lambda: diagnose(m, four, reference=ref))
    assert n4 == n1  # extra batches add no host reads (the end of the diagnosis has a fixed number)


@pytest.mark.gpu
def test_no_cuda_synchronisation_per_batch():
    m = net().cuda()
    x = [(torch.randn(8, 3, 10, 10, device="cuda"), torch.randint(0, 3, (8,), device="cuda")) for _ in range(4)]
    diagnose(m, x[:1])
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as one:
            warnings.simplefilter("always")
            diagnose(m, x[:1])
        with warnings.catch_warnings(record=True) as four:
            warnings.simplefilter("always")
            diagnose(m, x)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(four) == len(one)


# ---- the weight cache ----

def test_weight_metrics_of_unchanged_weights_are_not_recomputed(monkeypatch):
    import plasticity_core.metrics.weights as weights

    m = net()
    calls = []
    original = weights.gram_norms
    monkeypatch.setattr(weights, "gram_norms", lambda x: calls.append(1) or original(x))
    a = diagnose(m, data(4), metrics=["dfi", "spectral_norm"])
    first = len(calls)
    b = diagnose(m, data(4), metrics=["dfi", "spectral_norm"])
    assert first > 0 and len(calls) == first  # all from the cache
    pd.testing.assert_frame_equal(a.wide(), b.wide())
    with torch.no_grad():
        m[3].weight.mul_(2.0)  # an in-place update bumps the version counter
    c = diagnose(m, data(4), metrics=["dfi", "spectral_norm"])
    assert len(calls) == first + 1  # only the changed layer
    assert c.wide().at["3", "spectral_norm"] == pytest.approx(2 * a.wide().at["3", "spectral_norm"], rel=1e-5)
    assert c.wide().at["0", "dfi"] == a.wide().at["0", "dfi"]
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(data(4).tensors[0]).sum().backward()
    opt.step()
    d = diagnose(m, data(4), metrics=["spectral_norm"])
    assert d.wide().at["0", "spectral_norm"] != c.wide().at["0", "spectral_norm"]
    assert math.isfinite(d.wide().at["0", "spectral_norm"])
