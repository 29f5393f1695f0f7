"""Non-finite values: counted per layer and reported, never a crash and never a silent number.

``nonfinite`` of a layer is the number of non-finite entries of its weight plus the number of its units whose
probe statistics (activation output or input, layer output, gradient) saw a NaN or an infinity; ``diagnose``
adds the second part, warns naming the layers, records the counts in ``meta["nonfinite"]``, and
``Diagnosis.recommend`` refuses to recommend from such a diagnosis. Metrics of an affected unit are NaN (it
has no defined score); a layer value is computed over the unaffected units, NaN when none is left.
"""
from __future__ import annotations

import torch

from plasticity_core.metrics.base import register_metric


class NonFiniteWarning(UserWarning):
    """The diagnosis saw NaN or infinite inputs, activations, gradients or weights."""


@register_metric(
    "nonfinite", family="checks", needs="weights",
    definition="count of non-finite weight entries plus units whose probe statistics (activation, output, gradient) "
               "saw NaN or inf; > 0 means the other metrics of the layer are partial or NaN",
)
def nonfinite(view) -> torch.Tensor:
    # from the per-tap sums of squares the spectral metrics need anyway (a host read: CPU only)
    if view.w.device.type == "cpu" and getattr(view, "all_finite", False):
        return torch.zeros((), dtype=torch.float32)  # a finite sum of squares: every entry is finite (no GPU sync)
    return torch.count_nonzero(view.w * 0).float()  # w * 0 is 0 where w is finite, NaN where it is not
