"""redo: recycles exactly the dormant units of a network built to have them; explicit unit pairs only."""
import copy

import numpy as np
import pytest

import timm
import torch
from torch import nn
from torch.utils.data import TensorDataset

import plasticity_core as pc
from plasticity_core.reinit.fresh import consumer

DEAD = [2, 5, 7]


def dormant_net():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        m[0].bias[DEAD] = -100.0  # never active on N(0, 1) inputs
    return m


def data():
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(64, 8, generator=g), torch.zeros(64, dtype=torch.long))


def test_redo_zeroes_outgoing_weights_of_exactly_the_dormant_units():
    m = dormant_net()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = data().tensors[0]
    y0 = m(x).detach()
    r = pc.apply_reinit(m, pc.ReinitConfig(strategy="redo", layers=["0"]), data=data())
    assert r.table.set_index("layer").loc["0", "units_touched"] == len(DEAD)
    alive = [i for i in range(16) if i not in DEAD]
    assert (m[2].weight[:, DEAD] == 0).all()
    assert torch.equal(m[2].weight[:, alive], before["2.weight"][:, alive])
    assert torch.equal(m[0].weight[alive], before["0.weight"][alive])
    assert not torch.equal(m[0].weight[DEAD], before["0.weight"][DEAD])
    assert (m[0].bias[DEAD] == 0).all()
    # fresh rows are rescaled to the surviving rows' mean norm (default scale="match")
    target = before["0.weight"][alive].norm(dim=1).mean()
    torch.testing.assert_close(m[0].weight[DEAD].norm(dim=1), target.expand(len(DEAD)), rtol=1e-5, atol=0)
    torch.testing.assert_close(m(x), y0, rtol=0, atol=1e-5)  # recycling preserves the function
    assert "dormant" in r.metric_versions


def test_redo_needs_data():
    try:
        pc.apply_reinit(dormant_net(), pc.ReinitConfig(strategy="redo"))
    except ValueError as e:
        assert "data" in str(e)
    else:
        raise AssertionError("redo without data must fail")


def test_unit_pairs_follow_blocks_not_the_residual_stream():
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    by_name = {layer.name: layer for layer in pc.layer_map(m)}

    def out(name):
        c = consumer(m, by_name[name])
        return None if c is None else c.name

    assert out("layer1.0.conv1") == "layer1.0.conv2"  # BasicBlock
    assert out("layer3.0.conv1") == "layer3.0.conv2" and out("layer3.0.conv2") == "layer3.0.conv3"  # Bottleneck
    for name in ("layer1.0.conv2", "layer3.0.conv3", "layer2.0.downsample.1", "fc"):
        assert out(name) is None, name
    v = timm.create_model("test_vit", pretrained=False, num_classes=4)
    vl = {layer.name: layer for layer in pc.layer_map(v)}
    assert consumer(v, vl["blocks.0.mlp.fc1"]).name == "blocks.0.mlp.fc2"
    for name in ("blocks.0.attn.qkv.q", "blocks.0.attn.proj", "blocks.0.mlp.fc2"):
        assert consumer(v, vl[name]) is None


def test_redo_on_resnet_skips_unpaired_layers_with_reason_and_recalibrates_bn():
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    with torch.no_grad():
        m.layer1[0].bn1.bias[:4] = -50.0  # 4 channels of layer1.0.conv1 dead after bn1 + act1
    ds = TensorDataset(torch.randn(16, 3, 32, 32), torch.zeros(16, dtype=torch.long))
    r = pc.apply_reinit(m, pc.ReinitConfig(strategy="redo", layers=["layer1.*"], bn_batches=2), data=ds)
    t = r.table.set_index("layer")
    assert t.loc["layer1.0.conv1", "units_touched"] >= 4
    assert (m.layer1[0].conv2.weight[:, :4] == 0).all()
    assert (m.layer1[0].bn1.bias[:4] == 0).all()  # the BN entry of a recycled unit is reset
    assert "residual" in r.skipped.set_index("layer").loc["layer1.0.conv2", "reason"]
    assert any("recalibrated" in n for n in r.notes)


def test_redo_that_can_touch_nothing_says_so(tiny_resnet, synthetic):
    cfg = pc.ReinitConfig(strategy="redo", layers=["layer1.0.conv2", "layer2.0.conv2"])  # both feed the residual stream
    report = pc.apply_reinit(tiny_resnet, cfg, data=synthetic.train)
    assert report.table.empty
    assert any("no layer was touched" in n and "redo skipped all" in n for n in report.notes)


def test_inverted_residual_pairs_go_through_the_depthwise_conv():
    m = timm.create_model("mobilenetv2_100", num_classes=4)
    layers = {layer.name: layer for layer in pc.layer_map(m)}
    assert consumer(m, layers["blocks.2.1.conv_pw"]).name == "blocks.2.1.conv_pwl"
    for name in ("conv_stem", "blocks.2.1.conv_pwl", "conv_head", "blocks.0.0.conv_pw"):
        assert consumer(m, layers[name]) is None, name  # stem feeds another block; pwl feeds the residual


def test_redo_through_a_depthwise_conv_only_silences_the_recycled_channels():
    # through conv_dw + bn2 a dormant expansion unit still emits a constant (bn2's shift), so recycling it is not
    # exactly function-preserving; what must hold: the result equals the original with just those projection
    # columns zeroed (the new incoming weights and the reset bn1 entries reach nothing else)
    torch.manual_seed(0)
    m = timm.create_model("mobilenetv2_100", num_classes=4).eval()
    with torch.no_grad():  # make 10 expansion units of one block dormant: ReLU6 of a very negative BN shift
        m.blocks[2][1].bn1.bias[:10] = -100.0
    reference = copy.deepcopy(m)
    x = torch.randn(16, 3, 64, 64)
    data = TensorDataset(x, torch.zeros(16, dtype=torch.long))
    cfg = pc.ReinitConfig(strategy="redo", layers=["blocks.2.1.conv_pw"], recalibrate_bn=False)
    report = pc.apply_reinit(m, cfg, data=data)
    touched = int(report.table["units_touched"].iloc[0])  # random weights have dormant units of their own too
    pwl = m.blocks[2][1].conv_pwl.weight
    zero_cols = (pwl.flatten(1).abs().sum(0) == 0).nonzero().flatten()
    assert touched >= 10 and set(range(10)) <= set(zero_cols.tolist()) and len(zero_cols) == touched
    assert not torch.equal(m.blocks[2][1].conv_pw.weight[:10], reference.blocks[2][1].conv_pw.weight[:10])
    with torch.no_grad():
        reference.blocks[2][1].conv_pwl.weight[:, zero_cols] = 0
        assert torch.allclose(m(x), reference(x), atol=1e-5)


@pytest.mark.parametrize("tau", [0.0, 0.025, 0.3])
def test_metric_and_strategy_agree_on_which_units_are_dormant(tau):
    """One rule, score <= tau (tau = 0: exactly silent), in the 'dormant' metric and in redo."""
    m = dormant_net()
    with torch.no_grad():
        m[0].weight[9] *= 1e-12  # almost silent but not silent: dormant for tau > 0 only,
        m[0].bias[9] = 0.0  # and "close to 0" for an isclose rule (which tau = 0 must not use)
        m[0].weight[11] *= 0.05  # weak: dormant for the largest tau only
    d = pc.diagnose(m, data(), metrics=["dormant"], params={"dormant": {"tau": tau}}, max_batches=8)
    scores = d.units("0", "dormant")
    by_metric = set(np.flatnonzero(scores <= tau).tolist())
    assert d.wide().at["0", "dormant"] == pytest.approx(len(by_metric) / 16)
    before = m[0].weight.detach().clone()
    pc.apply_reinit(m, pc.ReinitConfig(strategy="redo", layers=["0"], params={"tau": tau}), data=data())
    by_strategy = set((m[0].weight != before).any(1).nonzero().flatten().tolist())
    assert by_strategy == by_metric
    assert set(DEAD) <= by_metric and (9 in by_metric) == (tau > 0)
