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

from plasticity_core.metrics.activations import DORMANT_TAU, dormant_mask, reduce_dims, redo_scores
from plasticity_core.metrics.base import Accumulator, masked_fraction, register_metric


@register_metric(
    "grad_norm", family="gradients", needs="gradients", version=2,
    definition="||dL/dW||_F of the mean cross-entropy over the probe samples, current head (q/k/v: row block); "
               "fp32 gradient sums, the norm in float64",
)
class GradNorm(Accumulator):
    reads = ("wgrad",)

    def __init__(self, layer, device) -> None:
        super().__init__(layer, device)
        self.sum: torch.Tensor | None = None
        self.samples = 0

    @classmethod
    def applies(cls, layer) -> bool:
        return True

    def update_wgrad(self, grad: torch.Tensor | None, samples: int) -> None:
        self.samples += samples
        if grad is None:  # no gradient reaches this layer: it stays 0, not absent
            return
        self.sum = grad.float().clone() if self.sum is None else self.sum.add_(grad.float())

    def finish(self, bad):
        if not self.samples:
            return None
        if self.sum is None:
            return torch.zeros((), device=self.device), None
        # float64: a float32 norm is off by ~2e-4 at 1e7 entries and overflows above ~1e19 (as fro_norm was)
        return torch.linalg.vector_norm(self.sum / self.samples, dtype=torch.float64), None


@register_metric(
    "grad_dormant", family="gradients", needs="gradients", unit_level=True, defaults={"tau": DORMANT_TAU}, version=2,
    definition="fraction of units with ReDo score of |dL/dh| <= tau, h = the layer's output, L = per-sample "
               "cross-entropy (conv: E over batch and space); units() gives the scores",
)
class GradDormant(Accumulator):
    reads = ("out", "grad")

    def __init__(self, layer, device, *, tau: float) -> None:
        super().__init__(layer, device)
        self.tau = tau
        self.abs_sum = torch.zeros(layer.units, dtype=torch.float32, device=device)
        self.n = 0

    @classmethod
    def applies(cls, layer) -> bool:
        return True

    def update_out(self, out: torch.Tensor) -> None:
        """Count the inputs per unit at the forward, so a layer no gradient reaches scores 0, not nothing."""
        self.n += out.numel() // out.shape[self.layer.unit_dim]

    def update_grad(self, grad: torch.Tensor) -> None:
        self.abs_sum += torch.linalg.vector_norm(grad.detach().float(), ord=1, dim=reduce_dims(grad, self.layer.unit_dim))

    def finish(self, bad):
        if not self.n:
            return None
        own = ~torch.isfinite(self.abs_sum)
        bad = own if bad is None else bad | own
        score = redo_scores(self.abs_sum / self.n, bad)
        return masked_fraction(dormant_mask(score, self.tau), bad), score
