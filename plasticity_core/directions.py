"""Which way is worse for each diagnostic metric, and what it means in plain words (for heatmaps and reports).

``WORSE[name]`` is "high" (more is a sign of lost plasticity), "low" (less is), or absent (neither: a
description of the weights, such as their norm or how far they moved from the pretrained ones). A leaf module:
it imports nothing, so the metric registry can adopt it without a cycle.
"""
from __future__ import annotations

WORSE: dict[str, str] = {
    "dormant": "high", "dead": "high", "saturation": "high", "grad_dormant": "high", "dfi": "high", "dfi_si": "high", "nonfinite": "high",
    "feature_erank": "low", "stable_rank": "low", "grad_norm": "low",
}

PLAIN: dict[str, str] = {
    "sfe": "how far the weights moved from the pretrained ones (0 before any training)",
    "sfe_rel": "that movement relative to the pretrained weights' size",
    "dfi": "how far the weight matrix is from an isometry (0 = orthogonal)",
    "dfi_si": "the same, ignoring scale: 0 when all singular values are equal",
    "fro_norm": "size of the weights",
    "spectral_norm": "largest stretch the layer applies to any input",
    "stable_rank": "how many directions the weights really use",
    "dormant": "share of units that are almost silent on your data",
    "dead": "share of units that (almost) never fire on your data",
    "saturation": "share of inputs landing where the activation is flat (no gradient passes)",
    "feature_erank": "how many independent features the layer's output carries on your data",
    "grad_norm": "how strongly your data's loss pulls on the weights",
    "grad_dormant": "share of units that receive almost no gradient from your data",
    "nonfinite": "NaN or infinite values found in the layer (weights, activations or gradients)",
}


def worse(metric: str) -> str | None:
    """"high", "low" or None (no better/worse direction) for a metric name."""
    return WORSE.get(metric)


def plain(metric: str) -> str:
    """The metric in plain words (empty when none is written down)."""
    return PLAIN.get(metric, "")
