"""Temporary private copies of sfe / sfe_rel / dfi / dfi_si (DESIGN.md definitions).

Used only until ``plasticity_core.metrics`` provides them (written concurrently); then this file goes.
"""
from __future__ import annotations

import torch


def _taps(w: torch.Tensor) -> list[torch.Tensor]:
    if w.dim() == 2:
        return [w]
    flat = w.reshape(w.shape[0], w.shape[1], -1)
    return [flat[:, :, t] for t in range(flat.shape[2])]


def _tall(x: torch.Tensor) -> torch.Tensor:
    return x.T if x.shape[1] > x.shape[0] else x


def sfe(w: torch.Tensor, w0: torch.Tensor) -> float:
    return float((w.double() - w0.double()).pow(2).sum())


def sfe_rel(w: torch.Tensor, w0: torch.Tensor) -> float:
    return sfe(w, w0) / max(float(w0.double().pow(2).sum()), 1e-12)


def dfi(w: torch.Tensor) -> float:
    vals = []
    for x in _taps(w.double()):
        x = _tall(x)
        vals.append(float((x.T @ x - torch.eye(x.shape[1], dtype=x.dtype, device=x.device)).pow(2).sum()))
    return sum(vals) / len(vals)


def dfi_si(w: torch.Tensor) -> float:
    vals = []
    for x in _taps(w.double()):
        x = _tall(x)
        fro2 = float(x.pow(2).sum())
        vals.append(0.0 if fro2 == 0 else x.shape[1] * float((x.T @ x).pow(2).sum()) / fro2**2 - 1.0)
    return sum(vals) / len(vals)
