"""Feature effective rank (Dohare et al. 2024): how many directions the layer's representation really uses.

The representation is what Dohare et al. rank (loss-of-plasticity ``post_run_analysis.py`` on the features their
ResNet returns): the output of the layer's activation module, mean-pooled over space / tokens, one row per
input sample, not centred. A pre-activation output would be a linear image of the layer's input, capped in
rank by its fan-in and blind to dead units. Pooled rows are kept until there are more than ``units`` of them,
then folded into the ``units x units`` Gram matrix in float64; at the end the Grams of all layers of the same
size go through one batched ``eigvalsh`` (float64). Eigenvalues at or below ``lambda_max * size * eps64`` are
zeros (float64 cannot resolve them): singular values down to ~1e-7 sigma_1 are kept, as fine as an SVD of the
float32 features resolves.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch

from plasticity_core.metrics.base import Accumulator, register_metric


def gram(x: torch.Tensor, rows: bool) -> torch.Tensor:
    """The float64 Gram of ``x``'s rows (``rows``: ``x x^T``) or of its columns (``x^T x``)."""
    x = x.double()
    return x @ x.T if rows else x.T @ x


def effective_rank(sigma: torch.Tensor) -> torch.Tensor:
    """``exp(-sum p log p)``, ``p = sigma / sum sigma`` over the last axis (0 log 0 = 0; all-zero spectrum: 0)."""
    total = sigma.sum(-1, keepdim=True)
    p = sigma / total.clamp_min(torch.finfo(sigma.dtype).tiny)
    ent = -(p * torch.log(p.clamp_min(torch.finfo(sigma.dtype).tiny))).sum(-1)
    return torch.where(total.squeeze(-1) > 0, ent.exp(), torch.zeros_like(ent))


@register_metric(
    "feature_erank", family="features", needs="activations", version=2,
    definition="exp(entropy of sigma_k / sum sigma) of the activation module's output, mean-pooled over space / "
               "tokens (N samples x units, not centred; Dohare et al.); float64 Gram, every sigma above 1e-7 sigma_1",
)
class FeatureRank(Accumulator):
    def __init__(self, layer, device) -> None:
        super().__init__(layer, device)
        self.units = layer.units
        self.rows: list[torch.Tensor] = []
        self.n_rows = 0
        self.gram: torch.Tensor | None = None

    def update(self, view) -> None:
        feats = view.pooled()
        if self.gram is not None:
            self.gram += gram(feats, rows=False)
            return
        self.rows.append(feats)
        self.n_rows += feats.shape[0]
        if self.n_rows > self.units:
            self.gram = gram(torch.cat(self.rows), rows=False)
            self.rows.clear()

    def matrix(self) -> torch.Tensor | None:
        """The float64 Gram whose eigenvalues are the squared singular values of the pooled feature matrix."""
        if self.gram is not None:
            return self.gram
        if not self.rows:
            return None
        return gram(torch.cat(self.rows), rows=True)  # N x N, N <= units: the same nonzero spectrum

    def finish(self, bad):
        return self.finish_all([self], [bad])[0]

    @classmethod
    def finish_all(cls, accs: Sequence["FeatureRank"], bad: Sequence[torch.Tensor | None]) -> list:
        out: list = [None] * len(accs)
        groups: dict[tuple, list[tuple[int, torch.Tensor]]] = defaultdict(list)
        for i, acc in enumerate(accs):
            g = acc.matrix()
            if g is not None:
                groups[(g.shape[-1], g.device)].append((i, g))
        for members in groups.values():
            g = torch.stack([m for _, m in members])
            broken = ~torch.isfinite(g).flatten(1).all(1)
            lam = torch.linalg.eigvalsh(torch.where(broken[:, None, None], torch.zeros_like(g), g))
            floor = lam[:, -1:].clamp_min(0) * g.shape[-1] * torch.finfo(torch.float64).eps
            sigma = torch.where(lam > floor, lam, torch.zeros_like(lam)).sqrt()
            erank = torch.where(broken, torch.full_like(broken, float("nan"), dtype=sigma.dtype), effective_rank(sigma))
            for k, (i, _) in enumerate(members):
                value = erank[k]
                if bad[i] is not None:  # a unit saw non-finite values: the rank is undefined, not a number
                    value = torch.where(bad[i].any(), torch.full_like(value, float("nan")), value)
                out[i] = (value, None)
        return out
