"""reset: only the selected layers change, fresh draws follow the model's init, deterministic per seed."""
import math

import pytest
import timm
import torch

import plasticity_core as pc


def resnet():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=4)


def changed(before, model):
    after = model.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_reset_changes_only_the_selected_layers():
    m = resnet()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    r = pc.apply_reinit(m, pc.ReinitConfig(strategy="reset", layers=["layer4.*"], exclude=["*downsample*"]))
    assert sorted(r.resolved_layers) == ["layer4.0.conv1", "layer4.0.conv2"]
    assert changed(before, m) == {"layer4.0.conv1.weight", "layer4.0.conv2.weight"}
    assert any("no data" in n for n in r.notes)  # BN statistics were left as they were, and the report says so
    assert (r.table.units_touched == [96, 96]).all()


def test_head_is_left_alone_unless_asked():
    m = resnet()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    r = pc.apply_reinit(m, pc.ReinitConfig(strategy="reset", layers=["fc"]))
    assert r.table.empty and changed(before, m) == set()
    assert "classifier head" in r.skipped.set_index("layer").loc["fc", "reason"]
    pc.apply_reinit(m, pc.ReinitConfig(strategy="reset", layers=["fc"], include_head=True))
    assert changed(before, m) == {"fc.weight", "fc.bias"}


def test_reset_is_deterministic_per_seed():
    outs = []
    for seed in (0, 0, 1):
        m = resnet()
        pc.apply_reinit(m, pc.ReinitConfig(strategy="reset", layers=["layer1.*"], seed=seed))
        outs.append(m.layer1[0].conv1.weight.detach().clone())
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_model_init_uses_timm_resnet_kaiming_fan_out():
    torch.manual_seed(0)
    m = timm.create_model("resnet18", pretrained=False, num_classes=4)
    with torch.no_grad():
        m.layer4[1].conv2.weight.mul_(5)
    pc.apply_reinit(m, pc.ReinitConfig(strategy="reset", layers=["layer4.1.conv2"]))
    w = m.layer4[1].conv2.weight.detach()
    assert w.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.03)


def test_default_init_on_vit_qkv_block_uses_trunc_normal_and_zero_bias():
    torch.manual_seed(0)
    m = timm.create_model("test_vit", pretrained=False, num_classes=4)
    with torch.no_grad():
        m.blocks[0].attn.qkv.bias.fill_(1.0)
    pc.apply_reinit(m, pc.ReinitConfig(strategy="reset", layers=["blocks.0.attn.qkv.v"]))
    d = m.embed_dim
    w, b = m.blocks[0].attn.qkv.weight.detach(), m.blocks[0].attn.qkv.bias.detach()
    assert w[2 * d:].std().item() == pytest.approx(0.02, rel=0.1)
    assert (b[2 * d:] == 0).all() and (b[:2 * d] == 1).all()
