import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from plasticity_core.assets import asset_path
from plasticity_core.models import BackboneError, load_backbone

pytestmark = []


@pytest.mark.assets
def test_bundled_mobilenet_is_torchvisions_imagenet_model():
    bb = load_backbone("bundled:mobilenetv2_100")
    ref = torchvision.models.mobilenet_v2()
    ref.load_state_dict(torch.load(asset_path("mobilenet_v2"), weights_only=True))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(bb.model.eval()(x), ref.eval()(x), atol=1e-5)
    assert bb.num_classes == 1000 and bb.source == "bundled"


@pytest.mark.assets
def test_bundled_weights_classify_a_real_photo_region():
    # the real ImageNet weights are confident on real data: their top-1 logit is far above chance, random ones are not
    bb = load_backbone("bundled:tf_efficientnet_lite0")
    assert bb.data_config["mean"] == (0.5, 0.5, 0.5)
    rnd = timm.create_model("tf_efficientnet_lite0")
    w, w0 = bb.model.conv_stem.weight, rnd.conv_stem.weight
    assert not torch.allclose(w, w0)


@pytest.mark.assets
def test_fresh_head_and_read_only_reference():
    bb = load_backbone("bundled:mobilenetv2_100", num_classes=10)
    assert bb.model.classifier.out_features == 10 and bb.num_classes == 10
    with pytest.raises(TypeError):
        bb.reference["classifier.weight"] = torch.zeros(1)  # type: ignore[index]
    with torch.no_grad():
        bb.model.conv_stem.weight.add_(1.0)
    assert not torch.equal(bb.model.conv_stem.weight, bb.reference["conv_stem.weight"])
    assert torch.equal(bb.fresh_copy().conv_stem.weight, bb.reference["conv_stem.weight"])


def test_unknown_names_suggest_close_matches():
    with pytest.raises(BackboneError, match="resnet18"):
        load_backbone("timm:resnet181", pretrained=False)
    with pytest.raises(BackboneError, match="mobilenet_v2"):
        load_backbone("torchvision:mobilenetv2", pretrained=False)
    with pytest.raises(BackboneError, match="scheme"):
        load_backbone("resnet18")


def test_torchvision_head_is_replaced():
    bb = load_backbone("torchvision:resnet18", pretrained=False, num_classes=5)
    assert bb.model.fc.out_features == 5 and bb.num_classes == 5
    assert bb.data_config["input_size"] == (3, 224, 224)


def test_checkpoint_round_trip_safetensors_and_pt(tmp_path):
    src = timm.create_model("test_resnet", num_classes=3)
    save_file(src.state_dict(), tmp_path / "m.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "m.pt")
    x = torch.randn(1, 3, 32, 32)
    for name in ("m.safetensors", "m.pt"):
        bb = load_backbone(f"file:{tmp_path / name}", arch="timm:test_resnet")
        assert bb.num_classes == 3
        with torch.no_grad():
            assert torch.allclose(bb.model.eval()(x), src.eval()(x))
    bb = load_backbone(f"file:{tmp_path / 'm.safetensors'}", arch="timm:test_resnet", num_classes=6)
    assert bb.num_classes == 6


def test_checkpoint_that_does_not_fit_lists_keys_and_shapes(tmp_path):
    other = timm.create_model("resnet18", num_classes=3)
    save_file(other.state_dict(), tmp_path / "r18.safetensors")
    with pytest.raises(BackboneError) as e:
        load_backbone(f"file:{tmp_path / 'r18.safetensors'}", arch="timm:test_resnet")
    msg = str(e.value)
    assert "shape mismatches" in msg and "conv1" in msg
    with pytest.raises(BackboneError, match="arch"):
        load_backbone(f"file:{tmp_path / 'r18.safetensors'}")


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"weight": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(BackboneError, match="weights_only"):
        load_backbone(f"file:{tmp_path / 'evil.pt'}", arch="timm:test_resnet")


def test_module_is_wrapped_with_its_reference():
    m = timm.create_model("test_vit", num_classes=2)
    bb = load_backbone(m)
    assert bb.model is m and bb.source == "module"
    assert set(bb.reference) == set(m.state_dict())


def test_offline_timm_weights_load_from_the_hub_cache_without_retries(tmp_path):
    """Offline with the weights in the Hugging Face cache: loaded from there at once (no minute of hub retries)."""
    import subprocess
    import sys
    import textwrap

    from plasticity_core.models import host_reachable

    if host_reachable("https://huggingface.co"):
        pytest.skip("huggingface.co is reachable: the offline path cannot be exercised")
    script = textwrap.dedent(f"""
        import time, timm, torch
        from safetensors.torch import save_file
        from timm.models import get_pretrained_cfg
        hub_id = get_pretrained_cfg("test_resnet").hf_hub_id
        snap = "{tmp_path}/hub/models--" + hub_id.replace("/", "--")
        import os
        os.makedirs(snap + "/refs"); os.makedirs(snap + "/snapshots/abc")
        open(snap + "/refs/main", "w").write("abc")
        torch.manual_seed(123)
        want = timm.create_model("test_resnet").state_dict()
        save_file({{k: v.contiguous() for k, v in want.items()}}, snap + "/snapshots/abc/model.safetensors")
        import plasticity_core as pc
        t0 = time.time()
        bb = pc.load_backbone("timm:test_resnet", pretrained=True)
        assert time.time() - t0 < 30, time.time() - t0
        got = bb.model.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), "not the cached weights"
        print("ok")
    """)
    env = {**__import__("os").environ, "HF_HUB_CACHE": str(tmp_path / "hub")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
