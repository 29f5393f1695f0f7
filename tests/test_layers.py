import pytest
import timm
import torch
import torchvision
from torch import nn

from plasticity_core.hooks import hook_count
from plasticity_core.layers import layer_map, layer_table, select_layers


def test_resnet_layer_map_follows_dataflow(tiny_resnet):
    layers = {l.name: l for l in layer_map(tiny_resnet)}
    # conv2 of a block reaches act2 through bn2 and the in-place residual add
    assert layers["layer1.0.conv2"].act == "layer1.0.act2"
    assert layers["layer1.0.conv2"].norm == "layer1.0.bn2"
    assert layers["layer1.0.conv1"].act_type == "relu"
    # the downsample conv is registered after conv2 but feeds no activation of its own
    ds = layers["layer2.0.downsample.1"]
    assert ds.act is None and ds.norm == "layer2.0.downsample.2"
    assert layers["fc"].head and not layers["conv1.0"].head
    assert [l.order for l in layer_map(tiny_resnet)] == list(range(len(layers)))
    assert hook_count(tiny_resnet) == 0


def test_vit_qkv_is_split_into_row_blocks(tiny_vit):
    layers = {l.name: l for l in layer_map(tiny_vit)}
    d = tiny_vit.embed_dim
    q, k, v = (layers[f"blocks.0.attn.qkv.{p}"] for p in "qkv")
    assert (q.rows, k.rows, v.rows) == ((0, d), (d, 2 * d), (2 * d, 3 * d))
    assert q.kind == "attn_q" and v.shape == (d, d)
    w = tiny_vit.blocks[0].attn.qkv.weight
    assert torch.equal(k.weight(tiny_vit), w[d:2 * d])
    assert k.weight(tiny_vit).data_ptr() == w[d:].data_ptr()  # a view: strategies edit the model in place
    assert layers["blocks.0.mlp.fc1"].act_type == "gelu"
    assert layers["patch_embed.proj"].patch_embed and layers["head"].head


def test_mobilenet_relu6_and_depthwise():
    m = timm.create_model("mobilenetv2_100")
    layers = {l.name: l for l in layer_map(m)}
    assert layers["conv_stem"].act == "bn1.act" and layers["conv_stem"].act_type == "relu6"
    assert layers["blocks.1.0.conv_dw"].depthwise
    assert layers["blocks.1.0.conv_pwl"].act is None  # linear bottleneck
    assert layers["classifier"].head


def test_torchvision_shared_relu_calls_are_told_apart():
    m = torchvision.models.resnet18()
    layers = {l.name: l for l in layer_map(m)}
    assert layers["layer1.0.conv1"].act == layers["layer1.0.conv2"].act == "layer1.0.relu"
    assert (layers["layer1.0.conv1"].act_call, layers["layer1.0.conv2"].act_call) == (0, 1)
    assert layers["fc"].head


@pytest.mark.parametrize("name", ["resnet50", "tf_efficientnet_lite0", "convnext_tiny", "vit_small_patch16_224"])
def test_layer_table_covers_every_weight_layer(name):
    m = timm.create_model(name)
    df = layer_table(m)
    n_weight = sum(isinstance(x, (nn.Conv2d, nn.Linear)) for x in m.modules())
    n_qkv = sum(1 for n, _ in m.named_modules() if n.endswith("attn.qkv"))
    assert len(df) == n_weight + 2 * n_qkv
    assert df["head"].sum() == 1
    assert df["params"].sum() >= sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight") and p.dim() > 1)


def test_select_layers_lists_every_skip_with_a_reason(tiny_resnet):
    sel = select_layers(tiny_resnet, include=["layer*"], exclude=["*.downsample.*"])
    assert sel.names and all(n.startswith("layer") for n in sel.names)
    assert not any("downsample" in n for n in sel.names)
    skipped = dict(sel.skipped)
    assert set(sel.names) | set(skipped) == {l.name for l in layer_map(tiny_resnet)}
    assert "excluded" in skipped["layer2.0.downsample.1"]
    assert "include" in skipped["conv1.0"]
    assert "head" in skipped["fc"] or "include" in skipped["fc"]
    assert "head" in dict(select_layers(tiny_resnet).skipped)["fc"]
    assert "fc" in select_layers(tiny_resnet, allow_head=True).names


def test_select_layers_by_module_name_picks_qkv_blocks(tiny_vit):
    sel = select_layers(tiny_vit, include=["blocks.0.attn.qkv"])
    assert sel.names == ["blocks.0.attn.qkv.q", "blocks.0.attn.qkv.k", "blocks.0.attn.qkv.v"]
    skipped = dict(select_layers(tiny_vit).skipped)
    assert "patch" in skipped["patch_embed.proj"]


def test_layer_map_is_rebuilt_when_the_head_changes(tiny_resnet):
    before = layer_map(tiny_resnet)[-1]
    tiny_resnet.reset_classifier(7)
    after = layer_map(tiny_resnet)[-1]
    assert before.shape[0] == 4 and after.shape[0] == 7


def test_training_mode_is_restored():
    m = timm.create_model("test_resnet").train()
    layer_map(m)
    assert m.training and all(x.training for x in m.modules())


def test_mlps_are_traced_with_feature_vectors():
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    layers = layer_map(m)
    assert [l.name for l in layers] == ["0", "2", "4"]
    assert (layers[0].act, layers[1].act_type, layers[2].head) == ("1", "tanh", True)


def test_container_outputs_keep_their_innermost_producer(tiny_resnet):
    # test_resnet's deep stem is a Sequential whose last conv feeds the model's bn1 -> act1
    stem_out = {l.name: l for l in layer_map(tiny_resnet)}["conv1.6"]
    assert (stem_out.act, stem_out.norm) == ("act1", "bn1")


def test_group_labels_name_stages_in_forward_order():
    groups = {l.name: l.group for l in layer_map(timm.create_model("mobilenetv2_100"))}
    assert groups["conv_stem"] == "stem" and groups["blocks.2.1.conv_pw"] == "blocks.2.1"
    assert groups["conv_head"] == "conv_head" and groups["classifier"] == "head"
    tv = {l.name: l.group for l in layer_map(torchvision.models.resnet18())}
    assert (tv["conv1"], tv["layer3.1.conv2"], tv["fc"]) == ("stem", "layer3.1", "head")


class Gaps(nn.Module):
    """A Conv3d, an nn.MultiheadAttention and a tied pair of Linear layers around covered ones."""

    def __init__(self):
        super().__init__()
        self.conv3 = nn.Conv3d(3, 4, 1)
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.enc = nn.Linear(8, 8)
        self.dec = nn.Linear(8, 8)
        self.dec.weight = self.enc.weight  # tied
        self.act = nn.ReLU()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = self.conv3(x.unsqueeze(2)).squeeze(2)
        h = self.act(self.conv(h)).flatten(2).transpose(1, 2)
        h, _ = self.attn(h, h, h)
        h = self.act(self.dec(self.act(self.enc(h))))
        return self.fc(h.mean(1))


def test_layer_map_names_what_it_leaves_out_and_lists_tied_weights_once():
    from plasticity_core.layers import layer_map, layer_table, select_layers

    torch.manual_seed(0)
    model = Gaps()
    names = [l.name for l in layer_map(model, input_size=(3, 8, 8))]
    assert names == ["conv", "enc", "fc"]  # dec is enc under a second name
    enc = next(l for l in layer_map(model) if l.name == "enc")
    assert enc.aliases == ("dec",)
    assert select_layers(model, ["dec"]).names == ["enc"]  # either name selects the one layer
    df = layer_table(model)
    assert df.set_index("name").at["enc", "aliases"] == "dec"
    gaps = dict(df.attrs["uncovered"])
    assert "Conv3d" in gaps["conv3"] and "not in the layer map" in gaps["conv3"]
    assert "in_proj_weight" in gaps["attn"] and "MultiheadAttention" in gaps["attn"]
    assert "attn.out_proj" not in gaps and "dec" not in gaps and "enc" not in gaps


def test_tied_weights_are_shrunk_once():
    from plasticity_core.config import ReinitConfig
    from plasticity_core.reinit import apply_reinit

    torch.manual_seed(0)
    model = Gaps()
    layer_map(model, input_size=(3, 8, 8))
    before = model.enc.weight.detach().clone()
    apply_reinit(model, ReinitConfig(strategy="shrink_perturb", layers=["enc", "dec"],
                                     params={"lam": 0.6, "sigma": 0.0}, recalibrate_bn=False))
    assert model.dec.weight is model.enc.weight
    assert torch.allclose(model.enc.weight, 0.6 * before)  # once, not 0.36


def test_a_model_without_conv_or_linear_is_one_clear_message():
    from plasticity_core.errors import user_message
    from plasticity_core.layers import LayerMapError

    model = nn.Sequential(nn.Conv3d(3, 4, 1), nn.ReLU())
    with pytest.raises(LayerMapError) as e:
        layer_map(model)
    msg = user_message(e.value)
    assert "Sequential has no Conv1d, Conv2d or Linear layer" in msg and "0 (Conv3d)" in msg
    assert layer_table(nn.Sequential(nn.Linear(3, 3))).attrs["uncovered"] == []
