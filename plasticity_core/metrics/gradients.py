"""Gradient metrics on the target data with the model's current head: weight-gradient norm and gradient dormancy.

The loss is the cross-entropy summed over samples, so a sample's gradient does not depend on the batch it
sits in (the model is in eval mode). ``grad_norm`` is the Frobenius norm of the gradient of the *mean* loss
over all probe samples (summed gradients divided by the sample count at the end), so it is the same for any
batch size. ``grad_dormant`` applies the ReDo score to ``|dL/dh|`` where ``h`` is the layer's own output
(every layer has one, also q/k/v and layers without activation): a unit whose output receives almost no
gradient barely changes its incoming weights, which is the "insignificant gradients" of 2603.20860.
"""
from __future__ import annotations

import torch

from plasticity_core.metrics.activations import DORMANT_TAU, reduce_dims, redo_scores
from plasticity_core.metrics.base import register_metric

register_metric(
    name="grad_norm", family="gradients", needs="gradients",
    definition="||dL/dW||_F of the mean cross-entropy over the probe samples, current head (q/k/v: row block)",
)
register_metric(
    name="grad_dormant", family="gradients", needs="gradients", unit_level=True, defaults={"tau": DORMANT_TAU},
    definition="fraction of units with ReDo score of |dL/dh| <= tau, h = the layer's output, L = per-sample "
               "cross-entropy (conv: E over batch and space); units() gives the scores",
)


class GradStats:
    """Per-unit streaming sum of |dL/dh| for one layer (fp32 on the device)."""

    def __init__(self, units: int, device: torch.device) -> None:
        self.abs_sum = torch.zeros(units, dtype=torch.float32, device=device)
        self.n = 0

    def count(self, out: torch.Tensor, unit_dim: int) -> None:
        """Count the inputs per unit at the forward, so a layer no gradient reaches scores 0, not nothing."""
        self.n += out.numel() // out.shape[unit_dim]

    def add(self, g: torch.Tensor, unit_dim: int) -> None:
        self.abs_sum += torch.linalg.vector_norm(g.detach().float(), ord=1, dim=reduce_dims(g, unit_dim))

    def finish(self, tau: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.n:
            return None
        score = redo_scores(self.abs_sum / self.n)
        return (score <= tau).float().mean(), score
