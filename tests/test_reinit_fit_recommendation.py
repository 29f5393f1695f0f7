"""A recommendation proposes only layers its strategy acts on (issue 19: fire targets=qk on a ViT)."""
from __future__ import annotations

import pandas as pd

import plasticity_core as pc
from plasticity_core.metrics.recommend import Recommendation
from plasticity_core.reinit.plan import plan_reinit


def _rec(layers, strategy="fire", params=None):
    return Recommendation(ranking=pd.DataFrame(), layers=list(layers), strategy=strategy, params=params or {},
                          reason="because.")


def test_fire_qk_on_a_vit_keeps_only_the_q_and_k_blocks(tiny_vit):
    names = [layer.name for layer in pc.layer_map(tiny_vit) if layer.name.startswith("blocks.0.")]
    assert any(n.endswith("qkv.v") for n in names)  # the ViT's fused qkv is split into q, k, v rows
    fitted = pc.fit_recommendation(_rec(names), tiny_vit)
    acts_on = set(plan_reinit(tiny_vit, _rec(names).to_config()).touched)  # independently: the plan's own verdict
    assert set(fitted.layers) == acts_on and 0 < len(fitted.layers) < len(names)
    assert all(n in fitted.reason for n in sorted(set(names) - acts_on)[:6])
    assert fitted.reason.startswith("because.") and "Left out" in fitted.reason
    assert fitted.to_config().layers == fitted.layers  # what travels to Re-init / Export is the fitted set


def test_a_strategy_acting_on_everything_is_unchanged(tiny_resnet):
    names = [layer.name for layer in pc.layer_map(tiny_resnet)][1:4]
    rec = _rec(names, "reset")
    assert pc.fit_recommendation(rec, tiny_resnet) is rec


def test_a_strategy_acting_on_nothing_keeps_the_layers_and_says_so(tiny_vit):
    v_only = [layer.name for layer in pc.layer_map(tiny_vit) if layer.name.endswith("qkv.v")]
    fitted = pc.fit_recommendation(_rec(v_only), tiny_vit)
    assert fitted.layers == v_only and "acts on none" in fitted.reason
