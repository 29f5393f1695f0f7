"""Per-layer diagnostics: the ``METRICS`` registry, the pure weight functions and the ``diagnose`` engine.

Importing this package registers every metric (one module per family: weights, activations, features,
gradients, checks); each module's decorated functions and classes are the implementations ``diagnose`` runs.
"""
from plasticity_core.metrics.base import METRICS, Accumulator, MetricInfo, register_metric
from plasticity_core.metrics.weights import dfi, dfi_si, fro_norm, sfe, sfe_rel, spectral_norm, stable_rank
from plasticity_core.metrics.activations import FLAT_REGION, dormant_mask, flat_region, redo_scores
from plasticity_core.metrics.features import effective_rank
from plasticity_core.metrics import gradients as _gradients  # noqa: F401  (registers grad_norm, grad_dormant)
from plasticity_core.metrics.checks import NonFiniteWarning
from plasticity_core.metrics.diagnosis import Diagnosis
from plasticity_core.metrics.diagnose import diagnose, precision_policy, precompute_weight_metrics
from plasticity_core.metrics.recommend import Recommendation, rank_layers, recommend

__all__ = [
    "METRICS", "MetricInfo", "Accumulator", "register_metric", "diagnose", "precision_policy", "precompute_weight_metrics",
    "Diagnosis",
    "Recommendation", "recommend", "rank_layers", "sfe", "sfe_rel", "dfi", "dfi_si", "fro_norm", "spectral_norm",
    "stable_rank", "FLAT_REGION", "flat_region", "dormant_mask", "effective_rank", "redo_scores", "NonFiniteWarning",
]
