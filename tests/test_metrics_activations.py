"""Activation metrics against hand computations on small networks with known dead / saturated units."""
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from plasticity_core.metrics import FLAT_REGION, diagnose, onepass

NEEDS_NUMBA = pytest.mark.skipif(not onepass.AVAILABLE, reason="numba not installed (the [fast] extra)")

GEN = torch.Generator().manual_seed(0)


def batches(n_batches: int, shape: tuple[int, ...], bs: int = 16, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, *shape, generator=g), torch.randint(0, classes, (bs,), generator=g)) for _ in range(n_batches)]


def mlp(n: int = 10, act: nn.Module | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, n), act or nn.ReLU(), nn.Linear(n, 3))


@pytest.mark.parametrize("k", [0, 3, 7])
def test_biases_that_kill_k_of_n_units_give_dead_and_dormant_k_over_n(k):
    net = mlp(10)
    with torch.no_grad():
        net[0].bias[:k] = -1e4  # these units never fire
        net[0].bias[k:] = 10.0  # these always fire, strongly
    d = diagnose(net, batches(3, (64,)), metrics=["dead", "dormant"])
    w = d.wide()
    assert w.at["0", "dead"] == pytest.approx(k / 10)
    assert w.at["0", "dormant"] == pytest.approx(k / 10)
    assert np.all(d.units("0", "dead")[:k] == 0) and np.all(d.units("0", "dead")[k:] == 1)
    assert "2" not in w.index or np.isnan(w.at["2", "dead"])  # the head has no activation: no row


def conv_net() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


def test_dormant_matches_redo_definition_by_hand():
    net = conv_net()
    with torch.no_grad():
        net[3].bias[:2] = -1.0  # some units weak but not all zero
    data = batches(3, (3, 12, 12), bs=5)
    d = diagnose(net, data, metrics=["dormant", "dead"], params={"dormant": {"tau": 0.3}})
    net.eval()
    with torch.no_grad():
        h = torch.cat([net[:5](x) for x, _ in data]).double()  # output of the second ReLU, (N, 6, 10, 10)
    mean_abs = h.abs().mean(dim=(0, 2, 3))  # E over batch and space
    s = mean_abs / mean_abs.mean()
    np.testing.assert_allclose(d.units("3", "dormant"), s.numpy(), rtol=1e-5)
    assert d.wide().at["3", "dormant"] == pytest.approx(float((s <= 0.3).double().mean()))
    nonzero = (h != 0).double().mean(dim=(0, 2, 3))
    np.testing.assert_allclose(d.units("3", "dead"), nonzero.numpy(), rtol=1e-12)


def test_tanh_saturation_huge_vs_tiny_preactivations():
    big, small = mlp(8, nn.Tanh()), mlp(8, nn.Tanh())
    with torch.no_grad():
        big[0].weight.mul_(1e3)
        small[0].weight.mul_(1e-4)
        small[0].bias.zero_()
    data = batches(2, (64,))
    assert diagnose(big, data, metrics=["saturation"]).wide().at["0", "saturation"] > 0.99
    assert diagnose(small, data, metrics=["saturation"]).wide().at["0", "saturation"] == 0.0


def test_relu6_above_six_counts_as_saturated():
    net = mlp(5, nn.ReLU6())
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([10.0, 7.0, 3.0, 1.0, -2.0]))  # >= 6, >= 6, in range, in range, <= 0
    d = diagnose(net, batches(2, (64,)), metrics=["saturation"])
    np.testing.assert_array_equal(d.units("0", "saturation"), [1, 1, 0, 0, 1])
    assert d.wide().at["0", "saturation"] == pytest.approx(3 / 5)


@pytest.mark.parametrize("name", sorted(FLAT_REGION))
def test_flat_region_thresholds_match_the_derivative(name):
    """Re-derive each region: |phi'(z)| < 1 % of its max, left/right tails only, up to 0.02 from the threshold."""
    fns = {"relu": F.relu, "relu6": F.relu6, "gelu": F.gelu, "silu": F.silu, "mish": F.mish, "tanh": torch.tanh,
           "quick_gelu": lambda z: z * torch.sigmoid(1.702 * z), "sigmoid": torch.sigmoid, "hardswish": F.hardswish,
           "hardsigmoid": F.hardsigmoid, "softplus": F.softplus, "elu": F.elu, "celu": F.celu, "selu": F.selu}
    z = torch.linspace(-10, 10, 200001, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(fns[name](z).sum(), z)
    g, z = g.abs(), z.detach()
    flat = g < 0.01 * g.max()
    # interior notches (GELU / SiLU / Mish / hard-swish derivative zeros) are deliberately not counted
    tails = flat & ((z < z[~flat].min() + 0.02) | (z > z[~flat].max() - 0.02))
    ours = FLAT_REGION[name](z)
    far = (z - z[~flat].min()).abs().gt(0.02) & (z - z[~flat].max()).abs().gt(0.02)
    assert torch.equal(ours[far], tails[far])


def test_shared_activation_module_is_split_by_call():
    """torchvision's ResNet reuses one ReLU per block: each call belongs to a different conv."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
            self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
            self.relu = nn.ReLU(inplace=True)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.relu(self.bn2(self.conv2(x)))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    net = Block()
    with torch.no_grad():
        net.bn2.bias[:4] = -1e4  # kills 4 of conv2's 6 units, none of conv1's
    d = diagnose(net, batches(2, (3, 8, 8), bs=4), metrics=["dead", "saturation"])
    w = d.wide()
    assert w.at["conv1", "dead"] == 0.0 and w.at["conv2", "dead"] == pytest.approx(4 / 6)
    np.testing.assert_array_equal(d.units("conv2", "saturation")[:4], 1.0)


def test_vit_fc1_saturation_is_read_off_the_real_gelu_input():
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False, num_classes=3)
    with torch.no_grad():
        vit.blocks[0].mlp.fc1.bias.sub_(3.0)  # push a visible share of pre-activations into GELU's flat tail
    data = batches(1, (3, 160, 160), bs=2)
    d = diagnose(vit, data, metrics=["saturation", "dormant"])
    seen = []
    h = vit.blocks[0].mlp.act.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    vit.eval()
    with torch.no_grad():
        vit(data[0][0])
    h.remove()
    z = seen[0].double().requires_grad_(True)  # (B, tokens, 4D)
    (g,) = torch.autograd.grad(F.gelu(z).sum(), z)
    # GELU' peaks at 1.1289 (z = 1.414); the flat left tail, not the notch near z = -0.75
    expected = ((g.abs() < 0.01 * 1.12880) & (z < -1)).double().mean(dim=(0, 1)).detach()
    np.testing.assert_allclose(d.units("blocks.0.mlp.fc1", "saturation"), expected.numpy(), rtol=1e-12)
    assert expected.mean() > 0.05
    assert set(d.table["layer"]) == {f"blocks.{i}.mlp.fc1" for i in range(len(vit.blocks))}  # only GELU-fed layers


def lop_effective_rank(features: np.ndarray) -> float:
    """Dohare et al.'s compute_effective_rank (loss-of-plasticity), transcribed: singular values of the feature
    matrix (here numpy float64), p = sigma / sum |sigma|, entropy over p > 0, e ** entropy."""
    sv = np.linalg.svd(features.astype(np.float64), compute_uv=False)
    norm_sv = sv / np.sum(np.abs(sv))
    entropy = 0.0
    for p in norm_sv:
        if p > 0.0:
            entropy -= p * np.log(p)
    return float(np.e ** entropy)


def pooled_post_activation(net: nn.Module, act: nn.Module, data) -> np.ndarray:
    """The features the authors rank: the activation's output, mean-pooled over space, one row per sample."""
    feats = []
    h = act.register_forward_hook(lambda m, a, out: feats.append(out.detach().clone()))
    net.eval()
    with torch.no_grad():
        for x, _ in data:
            net(x)
    h.remove()
    f = torch.cat(feats)
    return (f.mean(dim=tuple(range(2, f.dim()))) if f.dim() > 2 else f).numpy()


@pytest.mark.parametrize("bs,n_batches", [(4, 2), (8, 3)])  # 8 samples <= 16 units (rows), 24 > 16 (Gram)
def test_feature_erank_is_the_authors_formula_on_pooled_post_activation_features(bs, n_batches):
    net = dead_conv_net(0)
    data = batches(n_batches, (3, 12, 12), bs=bs, seed=4)
    d = diagnose(net, data, metrics=["feature_erank"])
    expected = lop_effective_rank(pooled_post_activation(net, net[3], data))
    assert d.wide().at["2", "feature_erank"] == pytest.approx(expected, rel=1e-6)


def dead_conv_net(k: int) -> nn.Sequential:
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        net[2].bias[:k] = -1e4
    return net


def test_dead_units_lower_feature_erank_because_it_ranks_the_activation_output():
    data = batches(4, (3, 12, 12), bs=8)
    ranks = [diagnose(dead_conv_net(k), data, metrics=["feature_erank"]).wide().at["2", "feature_erank"] for k in (0, 8, 15)]
    assert ranks[0] > ranks[1] > ranks[2]
    assert ranks[1] <= 8 + 1e-9 and ranks[2] == pytest.approx(1.0, abs=1e-9)  # one live unit: rank one
    for k, r in zip((0, 8, 15), ranks):
        net = dead_conv_net(k)
        assert r == pytest.approx(lop_effective_rank(pooled_post_activation(net, net[3], data)), rel=1e-6)


def test_feature_erank_keeps_small_singular_values_the_old_cut_dropped():
    """Pooled features with singular values spread over 1 .. 1e-3: all count (the authors keep every one)."""
    net = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64))
    with torch.no_grad():
        net[0].weight.copy_((q * torch.logspace(0, -3, 32, dtype=torch.float64)) @ q.T)
        net[0].bias.fill_(5.0)  # every unit on: the activation is the identity here
    data = [(torch.randn(64, 32, generator=g), torch.zeros(64, dtype=torch.long)) for _ in range(4)]
    d = diagnose(net, data, metrics=["feature_erank"])
    assert d.wide().at["0", "feature_erank"] == pytest.approx(lop_effective_rank(pooled_post_activation(net, net[1], data)), rel=1e-6)


def dopamine_neuron_score(activation: np.ndarray) -> np.ndarray:
    """google/dopamine labs/redo weight_recyclers.estimate_neuron_score, transcribed (channels last, numpy float64)."""
    reduce_axes = tuple(range(activation.ndim - 1))  # jnp accepts a list, numpy wants a tuple
    score = np.mean(np.abs(activation), axis=reduce_axes)
    score /= np.mean(score) + 1e-9
    return score


def lop_dead_fraction(features: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """loss-of-plasticity compute_dormant_units_proportion, per unit: mean over (batch, space) of 1[h != 0]."""
    axes = (0, 2, 3) if features.ndim == 4 else (0,)
    return (features != 0).astype(np.float64).mean(axis=axes)


@pytest.mark.parametrize("tau,min_fraction", [(0.025, 0.01), (0.4, 0.3)])
def test_dormant_and_dead_are_the_authors_formulas(tau, min_fraction):
    net = dead_conv_net(3)
    with torch.no_grad():
        net[2].bias[3:6] = -2.0  # rarely active: low scores, a few nonzeros
    data = batches(3, (3, 12, 12), bs=6, seed=2)
    d = diagnose(net, data, metrics=["dormant", "dead"], params={"dormant": {"tau": tau}, "dead": {"min_fraction": min_fraction}})
    feats = []
    h = net[3].register_forward_hook(lambda m, a, out: feats.append(out.detach().clone()))
    with torch.no_grad():
        for x, _ in data:
            net(x)
    h.remove()
    f = torch.cat(feats).double().numpy()
    score = dopamine_neuron_score(np.moveaxis(f, 1, -1))
    np.testing.assert_allclose(d.units("2", "dormant"), score, rtol=1e-5)
    assert d.wide().at["2", "dormant"] == pytest.approx(np.mean(score <= tau))
    alive = lop_dead_fraction(f)
    np.testing.assert_array_equal(d.units("2", "dead"), alive)
    assert d.wide().at["2", "dead"] == pytest.approx(np.mean(alive < min_fraction))


@pytest.mark.parametrize("one_pass", [pytest.param(True, marks=NEEDS_NUMBA), False], ids=["onepass", "torch"])
@pytest.mark.parametrize("shape,unit_dim", [((6, 5, 2, 2), 1), ((6, 5, 4, 4), 1), ((6, 5, 9, 7), 1),
                                            ((6, 5, 8, 8), 1), ((6, 5, 16, 16), 1), ((6, 7, 5), -1), ((6, 5), -1)])
def test_view_sums_and_counts_equal_float64_and_boolean_counts_on_every_reduction_path(shape, unit_dim, one_pass,
                                                                                      monkeypatch):
    """Few positions (a matrix-vector product), many (a reduction), tokens and plain features, with numba's one-pass
    kernel and with torch's passes, all give the float64 sums and the boolean counts; the views of one pass share
    one scratch buffer and none reads another's result."""
    from plasticity_core.metrics import onepass
    from plasticity_core.metrics.activations import ActivationView, Scratch, flat_region

    monkeypatch.setattr(onepass, "ENABLED", one_pass)

    g = torch.Generator().manual_seed(sum(shape))
    scratch = Scratch()
    big = torch.randn(8, 5, 32, 32, generator=g)  # a larger tensor through the same scratch first
    ActivationView(big, 1, "gelu", scratch).at_most(-1.0)
    z = torch.randn(*shape, generator=g) * 4
    t = F.relu6(z)
    t[0].view(-1)[:3] = 6.0  # exact 6s and exact 0s both present
    views = {"relu6": ActivationView(t, unit_dim, "relu6", scratch), "gelu": ActivationView(z, unit_dim, "gelu", scratch)}
    u = unit_dim % len(shape)
    other = tuple(d for d in range(len(shape)) if d != u)
    for act, x in (("relu6", t), ("gelu", z)):
        v = views[act]
        x64 = x.double()
        per_sample = x64.sum(tuple(d for d in other if d != 0)) if len(other) > 1 else x64
        positions = x.numel() // (shape[0] * shape[u])
        scale = (x64.abs().sum(tuple(d for d in other if d != 0)) if len(other) > 1 else x64.abs()) / positions
        err = (v.pooled().double() - (per_sample / positions).reshape(shape[0], -1)).abs()
        assert (err <= 1e-6 * scale.reshape(shape[0], -1) + 1e-12).all()  # fp32 sums: to rounding of sum |x|
        np.testing.assert_allclose(v.abs_sum().double(), x64.abs().sum(other), rtol=1e-6)
        assert torch.equal(v.nonzero().double(), (x != 0).double().sum(other))
        assert torch.equal(v.at_most(-0.5).double(), (x <= -0.5).double().sum(other))
        assert torch.equal(v.at_least(6.0).double(), (x >= 6.0).double().sum(other))
        assert torch.equal(v.outside(0.0, 6.0).double(), ((x <= 0.0) | (x >= 6.0)).double().sum(other))
        lo, hi = flat_region(act)  # the bounds the one-pass kernel counts
        assert torch.equal(v.outside(lo, hi).double(), ((x <= lo) | (x >= hi)).double().sum(other))
        assert v.onepass == (one_pass and len(shape) > 2 and unit_dim == 1)
    assert views["relu6"].at_least(6.0).sum() >= 3


@NEEDS_NUMBA
def test_onepass_diagnosis_equals_torch_passes_and_splits_rows_over_threads(monkeypatch):
    """A real timm model diagnosed with the one-pass kernel and with torch's passes: the same counts (dead,
    saturation) exactly, sums-based values to float32 rounding; the meta names the path; rows split over two
    threads give the one-thread numbers bit for bit."""
    from plasticity_core.metrics.activations import ActivationView

    model = timm.create_model("test_resnet", num_classes=5).eval()
    data = batches(2, (3, 32, 32), bs=4, seed=3)
    metrics = ["dormant", "dead", "saturation", "feature_erank"]
    fast = diagnose(model, data, metrics=metrics)
    assert fast.meta["activation_pass"].startswith("one pass (numba)")
    monkeypatch.setattr(onepass, "ENABLED", False)
    slow = diagnose(model, data, metrics=metrics)
    assert "disabled" in slow.meta["activation_pass"]
    assert fast.slow_path_note() is None and "PLASTICITY_ONEPASS=0" in slow.slow_path_note()
    a, b = fast.wide(), slow.wide()
    assert list(a.index) == list(b.index) and a.notna().values.sum() > 10
    np.testing.assert_array_equal(a["dead"], b["dead"])
    np.testing.assert_array_equal(a["saturation"], b["saturation"])
    np.testing.assert_allclose(a[["dormant", "feature_erank"]], b[["dormant", "feature_erank"]], rtol=1e-5)
    for layer in a.index:
        np.testing.assert_array_equal(fast.units(layer, "dead"), slow.units(layer, "dead"))
        np.testing.assert_allclose(fast.units(layer, "dormant"), slow.units(layer, "dormant"), rtol=1e-5)
    monkeypatch.setattr(onepass, "ENABLED", True)
    t = F.relu6(torch.randn(8, 40, 24, 24, generator=torch.Generator().manual_seed(1)) * 4)  # >= PARALLEL_MIN entries
    assert t.numel() >= onepass.PARALLEL_MIN
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = onepass.stats(t, 0.0, 6.0)
        torch.set_num_threads(2)
        two = onepass.stats(t, 0.0, 6.0)
    finally:
        torch.set_num_threads(threads)
    relu = onepass.stats(t, 0.0, 6.0, relu=True)  # the ReLU loop derives |x| and the zeros
    for a, b in ((one, two), (one, relu)):
        assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
    totals = dict(zip(onepass.TOTALS, one[1]))
    assert torch.equal(totals["at_least"], (t >= 6).double().sum((0, 2, 3)))
    assert torch.equal(totals["outside"], ((t <= 0) | (t >= 6)).double().sum((0, 2, 3)))
    assert ActivationView(t, 1, "relu6").onepass


@NEEDS_NUMBA
@pytest.mark.parametrize("positions", [(2, 2), (2, 4)])
def test_short_rows_take_the_column_kernel_with_the_row_kernels_counts_on_any_thread_count(positions):
    """2 x 2 maps (the last stages of a CNN at 64 px) are summed and counted per block of units, not per row: the
    counts equal the boolean counts, the sums and |x| totals float64 sums to float32 rounding, NaN counts as
    nonzero and in neither tail and makes its unit's sums NaN, and 1, 2 and 3 threads give the same bits."""
    from plasticity_core.metrics import onepass_numba

    assert positions[0] * positions[1] in onepass.SHORT_ROWS
    g = torch.Generator().manual_seed(5)
    units = 3 * onepass_numba.BLOCK + 17  # whole blocks and a partial one
    z = torch.randn(48, units, *positions, generator=g) * 3
    z[3, 7, 0, 1] = float("nan")
    assert z.numel() >= onepass.PARALLEL_MIN
    t = F.relu6(z)
    threads = torch.get_num_threads()
    outs = {}
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs[n] = [onepass.stats(z, -1.0, 2.0), onepass.stats(t, 0.0, 6.0, relu=True), onepass.stats(t, 0.0, 6.0)]
    finally:
        torch.set_num_threads(threads)
    def same(a, b):  # bit for bit, NaN where NaN
        return torch.equal(a[0].nan_to_num(7.5), b[0].nan_to_num(7.5)) and all(
            torch.equal(x.nan_to_num(7.5), y.nan_to_num(7.5)) for x, y in zip(a[1], b[1]))

    assert all(same(a, b) for n in (2, 3) for a, b in zip(outs[1], outs[n]))
    (zs, zt), (rs, rt), (ns, nt) = outs[1]
    assert same((rs, rt), (ns, nt))  # the ReLU loop = the general loop
    for x, (sums, totals), (lo, hi) in ((z, (zs, zt), (-1.0, 2.0)), (t, (rs, rt), (0.0, 6.0))):
        totals = dict(zip(onepass.TOTALS, totals))
        x64 = x.double()
        assert torch.equal(totals["nonzero"], (x != 0).double().sum((0, 2, 3)))
        assert torch.equal(totals["at_most"], (x <= lo).double().sum((0, 2, 3)))
        assert torch.equal(totals["at_least"], (x >= hi).double().sum((0, 2, 3)))
        assert torch.equal(totals["outside"], ((x <= lo) | (x >= hi)).double().sum((0, 2, 3)))
        want = x64.sum((2, 3))
        assert torch.equal(sums.isnan(), want.isnan()) and sums.isnan().sum() == 1
        ok = ~want.isnan()
        assert ((sums.double() - want).abs()[ok] <= 1e-6 * x64.abs().sum((2, 3))[ok] + 1e-12).all()
        np.testing.assert_allclose(totals["abs_sum"], x64.abs().sum((0, 2, 3)), rtol=1e-6)  # NaN where NaN
        assert totals["abs_sum"].isnan().sum() == 1


@pytest.mark.parametrize("one_pass", [pytest.param(True, marks=NEEDS_NUMBA), False], ids=["onepass", "torch"])
def test_layers_finished_together_get_the_values_each_gets_alone_and_the_formulas(one_pass, monkeypatch):
    """dormant / dead / saturation finish all layers of a diagnosis at once (rows of one padded tensor): a layer's
    value and unit scores are those it gets finished alone, and the float64 formulas; a unit fed NaN is NaN and left
    out, a layer that saw no data has no value."""
    from plasticity_core.layers import layer_map
    from plasticity_core.metrics.activations import ActivationView, Dead, Dormant, Saturation

    monkeypatch.setattr(onepass, "ENABLED", one_pass)
    model = timm.create_model("test_resnet", num_classes=5)
    layers = [l for l in layer_map(model) if l.act is not None and l.unit_dim == 1][:4]
    assert len({l.units for l in layers}) > 1  # rows of different lengths: padding is exercised
    g = torch.Generator().manual_seed(9)
    acts = {}
    for l in layers[:3]:  # the fourth layer sees no data
        h = F.relu(torch.randn(6, l.units, 3, 3, generator=g) + torch.linspace(-3, 1, l.units)[:, None, None])
        acts[l.name] = h
    acts[layers[1].name][2, 1, 0, 0] = float("nan")  # unit 1 of the second layer is broken
    bad = [(~torch.isfinite(acts[l.name])).any(-1).any(-1).any(0) if l.name in acts else None for l in layers]
    for cls, kw in ((Dormant, {"tau": 0.3}), (Dead, {"min_fraction": 0.2}), (Saturation, {"eps": 0.01})):
        accs = [cls(l, torch.device("cpu"), **kw) for l in layers]
        for acc, l in zip(accs, layers):
            if l.name in acts:
                acc.update(ActivationView(acts[l.name], 1, l.act_type))
        together = cls.finish_all(accs, bad)
        assert together[3] is None
        for acc, b, (value, units) in zip(accs[:3], bad, together[:3]):
            alone_value, alone_units = cls.finish_all([acc], [b])[0]
            torch.testing.assert_close(value, alone_value, rtol=1e-12, atol=0, equal_nan=True)
            torch.testing.assert_close(units, alone_units, rtol=1e-12, atol=0, equal_nan=True)
        for l, b, (value, units) in zip(layers, bad, together[:3]):
            h = acts[l.name].double()
            ok = ~b
            if cls is Dormant:
                mean_abs = h.abs().mean((0, 2, 3))
                want = mean_abs / (mean_abs[ok].mean() + 1e-9)
                flag = want <= 0.3
            elif cls is Dead:
                want = (h != 0).double().mean((0, 2, 3))
                flag = want < 0.2
            else:
                want = (h <= 0).double().mean((0, 2, 3))
                flag = want
            assert units.shape == (l.units,) and torch.equal(units.isnan(), b)
            np.testing.assert_allclose(units[ok], want[ok], rtol=1e-6)
            np.testing.assert_allclose(float(value), float(flag[ok].double().mean()), rtol=1e-6)
        assert bad[1].sum() == 1


def test_onepass_kernel_that_cannot_be_built_falls_back_to_torch_passes_and_says_so(monkeypatch):
    """numba installed but unusable (an incompatible numpy, a compiler error): the diagnosis still runs, on torch's
    passes with the same values, a warning says why, and the meta names the path."""
    def broken():
        raise ImportError("numba needs NumPy version <= 2.0")

    model = timm.create_model("test_resnet", num_classes=5).eval()
    data = batches(1, (3, 32, 32), bs=4, seed=4)
    monkeypatch.setattr(onepass, "ENABLED", False)
    reference = diagnose(model, data, metrics=["dead", "saturation"]).wide()
    monkeypatch.setattr(onepass, "ENABLED", True)
    monkeypatch.setattr(onepass, "_kernel", broken)
    onepass._loaded.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not be built .*numba needs NumPy"):
            d = diagnose(model, data, metrics=["dead", "saturation"])
        assert "could not be built (ImportError: numba needs NumPy" in d.meta["activation_pass"]
        assert "could not be built" in d.slow_path_note()  # the line the CLI prints and the Diagnose page shows
        np.testing.assert_array_equal(d.wide().values, reference.values)
    finally:
        onepass._loaded.cache_clear()


@NEEDS_NUMBA
def test_precomputing_weight_metrics_builds_the_onepass_kernel_for_a_cpu_model():
    """The dashboard's background job on model load also builds the kernel, so the first Diagnose click does not."""
    from plasticity_core.metrics import precompute_weight_metrics

    onepass._loaded.cache_clear()
    assert onepass._loaded.cache_info().currsize == 0
    precompute_weight_metrics(timm.create_model("test_resnet", num_classes=5), metrics=["fro_norm"])
    assert onepass._loaded.cache_info().currsize == 1 and onepass._loaded()[0] is not None


def test_activation_pass_in_the_meta_names_what_this_diagnosis_did():
    """A ViT's token activations never take the kernel, and that is not a slow path; a weights-only diagnosis has no
    activation pass to name."""
    vit = timm.create_model("test_vit", num_classes=5, img_size=32).eval()
    d = diagnose(vit, batches(1, (3, 32, 32), bs=2, seed=5), metrics=["dormant", "dead"])
    assert d.meta["activation_pass"].startswith("torch passes (no NCHW") and d.slow_path_note() is None
    w = diagnose(timm.create_model("test_resnet", num_classes=5), batches(1, (3, 32, 32), bs=2, seed=5),
                 metrics=["fro_norm"])
    assert w.meta["activation_pass"] is None and w.slow_path_note() is None
