"""Activation metrics against hand computations on small networks with known dead / saturated units."""
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from plasticity_core.metrics import FLAT_REGION, diagnose

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
    z = seen[0]  # (B, tokens, 4D)
    expected = (z < -3.02).double().mean(dim=(0, 1))
    np.testing.assert_allclose(d.units("blocks.0.mlp.fc1", "saturation"), expected.numpy(), rtol=1e-12)
    assert expected.mean() > 0.05
    assert set(d.table["layer"]) == {f"blocks.{i}.mlp.fc1" for i in range(len(vit.blocks))}  # only GELU-fed layers


def test_feature_erank_of_rank_one_outputs_and_by_hand():
    net = nn.Sequential(nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 3))
    with torch.no_grad():
        u, v = torch.randn(12, 1, generator=GEN), torch.randn(1, 64, generator=GEN)
        net[0].weight.copy_(u @ v)
        net[0].bias.zero_()
    data = batches(2, (64,), bs=8)
    d = diagnose(net, data, metrics=["feature_erank"])
    assert d.wide().at["0", "feature_erank"] == pytest.approx(1.0, abs=1e-6)


def test_feature_erank_with_fewer_samples_than_units_by_hand():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 3))
    data = batches(1, (64,), bs=8)  # 8 samples <= 12 units: rows are kept, spectrum from the 8 x 8 Gram
    d = diagnose(net, data, metrics=["feature_erank"])
    with torch.no_grad():
        s = torch.linalg.svdvals(net[0](data[0][0]).double())
    p = s / s.sum()
    assert d.wide().at["0", "feature_erank"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-5)


def test_feature_erank_streams_into_a_gram_when_samples_exceed_units():
    net = nn.Sequential(nn.Linear(64, 4), nn.ReLU(), nn.Linear(4, 3))
    data = batches(3, (64,), bs=8)  # 24 samples > 4 units: the Gram path
    d = diagnose(net, data, metrics=["feature_erank"])
    with torch.no_grad():
        s = torch.linalg.svdvals(torch.cat([net[0](x) for x, _ in data]).double())
    p = s / s.sum()
    assert d.wide().at["0", "feature_erank"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-5)
