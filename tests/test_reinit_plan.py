"""plan_reinit says, before anything runs, what apply_reinit will do to each selected layer: checked against the
real preview on the bundled ImageNet MobileNetV2 (depthwise convs, projections without an activation) and a ViT."""
import pytest

import plasticity_core as pc
from plasticity_core import assets
from plasticity_core.reinit import plan_reinit, strategies_for

CASES = [("fire", {}), ("reset", {}), ("shrink_perturb", {}), ("redo", {}), ("cbp", {}),
         ("targeted", {"criterion": "dormant"}), ("targeted", {"criterion": "saturation"}),
         ("targeted", {"outgoing": "zero"}), ("targeted", {"criterion": "magnitude"})]


@pytest.fixture(scope="module")
def mobilenet():
    if not all(a["cached"] for a in assets.status()):
        pytest.skip("offline assets missing: run `plasticity assets fetch`")
    bb = pc.load_backbone("bundled:mobilenetv2_100", pretrained=True, num_classes=10)
    data = pc.load_dataset("bundled:animal-silhouettes", image_size=32, limit=120, data_config=bb.data_config)
    return bb.model, data.loader("train", batch_size=32)


@pytest.mark.parametrize("strategy,params", CASES)
def test_plan_agrees_with_the_real_preview(mobilenet, strategy, params):
    model, loader = mobilenet
    cfg = pc.ReinitConfig(strategy=strategy, layers=["conv_stem", "blocks.1.*", "blocks.5.0.*", "classifier"],
                          params={**params, **({"max_batches": 1} if strategy in ("redo", "targeted") else {})},
                          bn_batches=1)
    plan = plan_reinit(model, cfg)
    report = pc.preview_reinit(model, cfg, data=loader)
    assert plan.touched == report.resolved_layers
    assert plan.skipped == dict(zip(report.skipped["layer"], report.skipped["reason"]))
    # only what the patterns matched is listed: never the ~40 layers nobody selected
    assert set(plan.table["layer"]) == set(report.resolved_layers) | set(report.skipped["layer"])
    assert "classifier" in plan.skipped and "head" in plan.skipped["classifier"]
    assert all(plan.table.loc[plan.table.action == "skip", "proposal"].str.len() > 0)


def test_a_depthwise_conv_gets_a_proposal_and_a_no_op_selection_says_so(mobilenet):
    model, _ = mobilenet
    plan = plan_reinit(model, pc.ReinitConfig(strategy="redo", layers=["blocks.1.0.conv_dw", "blocks.1.0.conv_pwl"]))
    assert plan.touched == []
    rows = plan.table.set_index("layer")
    assert "depthwise" in rows.loc["blocks.1.0.conv_dw", "reason"]
    assert "no explicit (in, out) unit pair" in rows.loc["blocks.1.0.conv_pwl", "reason"]
    # fire and reset act on a projection conv; redo's nearest unselected candidate is the block's expansion conv
    assert "fire" in rows.loc["blocks.1.0.conv_pwl", "proposal"] and "redo" not in rows.loc["blocks.1.0.conv_pwl", "proposal"].split(" can")[0]
    assert "blocks.1.0.conv_pw" in rows.loc["blocks.1.0.conv_dw", "proposal"]
    assert any("can act on none" in p for p in plan.problems())
    counts = strategies_for(model, ["blocks.1.0.conv_dw", "blocks.1.0.conv_pwl"])
    assert counts["redo"] == 0 and counts["fire"] == 1 and list(counts)[0] in ("fire", "reset", "shrink_perturb")


def test_unmatched_patterns_are_named(tiny_resnet):
    plan = plan_reinit(tiny_resnet, pc.ReinitConfig(strategy="fire", layers=["layer9.*"]))
    assert plan.table.empty and plan.unmatched_patterns == ["layer9.*"]
    assert plan.problems() == ["pattern 'layer9.*' matches no layer of this model",
                               "no layer selected: this re-init changes nothing"]


def test_vit_fire_qk_skips_everything_but_q_and_k(tiny_vit):
    plan = plan_reinit(tiny_vit, pc.ReinitConfig(strategy="fire", layers=["blocks.0.*"]))
    report = pc.preview_reinit(tiny_vit, pc.ReinitConfig(strategy="fire", layers=["blocks.0.*"]))
    assert plan.touched == report.resolved_layers == ["blocks.0.attn.qkv.q", "blocks.0.attn.qkv.k"]
    assert "q/k" in plan.skipped["blocks.0.mlp.fc1"]


def test_noop_reason_for_arms_that_would_equal_the_baseline(tiny_resnet):
    from plasticity_core.reinit import noop_reason

    assert noop_reason(tiny_resnet, None) is None  # the baseline itself
    assert "matches no layer" in noop_reason(tiny_resnet, pc.ReinitConfig(strategy="fire", layers=["nothing*"]))
    assert "maturity 1000 >= the run's 100 steps" in noop_reason(tiny_resnet, pc.ReinitConfig(strategy="cbp", layers=["layer1.*"]), 100)
    assert noop_reason(tiny_resnet, pc.ReinitConfig(strategy="cbp", layers=["layer1.*"], params={"maturity": 10}), 100) is None
    assert "replacement_rate 0" in noop_reason(tiny_resnet, pc.ReinitConfig(strategy="cbp", layers=["layer1.*"],
                                                                            params={"replacement_rate": 0.0}), 100)
    assert noop_reason(tiny_resnet, pc.ReinitConfig(strategy="fire", layers=["layer1.*"]), 100) is None
