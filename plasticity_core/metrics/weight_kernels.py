"""Compiled weight-metric kernels (numba; optional): ``sigma_1`` with one read of a tap per step, and sums of squares.

``top``: ``sigma_1`` of many taps by Lanczos on ``G = X^T X``. Golub-Kahan-Lanczos on ``X`` reads a tap twice per
step (``X v``, then ``X^T u``). Lanczos on ``G`` from the same start vector spans the same Krylov space
(``T = B^T B``: the same Ritz values, step for step) and needs one read: ``G v = sum_r (x_r . v) x_r`` over the rows
``x_r`` of ``X``, four rows at a time, each used twice while it is in cache; ``G`` is never formed. The whole
iteration runs compiled, tap after tap (no interpreter cost per step, so small taps need no batching): the step,
full reorthogonalisation of the Lanczos vectors (a second pass where the first removed most of the vector), and the
stopping rule of ``weights.gkl_top`` (every ``check`` steps from ``first_check`` on: the error estimate
``r^2 / gap`` of ``sigma_1^2`` below ``tol`` of it and ``sigma_1`` moved by at most ``tol`` of itself since the
previous check). ``T``'s top two eigenvalues come from bisection (Sturm counts, float64) and the top eigenvector's
last component ``y_k`` from ``y_k^2 = chi_{k-1}(theta) / chi_k'(theta)`` (the characteristic polynomials of ``T``'s
leading blocks, by their ratio recurrences: all terms positive above the top eigenvalue). A breakdown (the Krylov
space closed) makes the Ritz value exact; a start vector with ``X v_0 = 0`` for a nonzero ``X`` leaves the tap
unconverged (the caller's exact SVD decides), as in the GKL code.

The rows are the tap's contiguous axis, so the Krylov space lies in that axis' dimension ``q``: for a transposed
weight's tap (F-contiguous in ``tall_taps``), the larger one. The path depends on the layout alone, never on the
other taps: a tap's value is the same whichever taps it is computed with.

``sums_of_squares``: ``||X||_F^2`` of each tap in one read accumulated in float64 (torch squares into a temporary,
then sums it in float32); a conv's taps from their copy in memory of their own (``WeightView.taps``).

Without numba (or ``PLASTICITY_NUMBA=0``, or a kernel that cannot be built) ``weights`` takes its BLAS / torch
paths; ``describe`` names the path for the diagnosis meta.
"""
from __future__ import annotations

import functools
import math
import threading

import numpy as np
import torch

from plasticity_core.metrics import jit

ENABLED = jit.ENABLED
SLOWER = "two reads of each tap per step (BLAS)"  # how ``describe`` starts the line of the slower CPU path


@functools.lru_cache(maxsize=1)
def _kernel():
    from plasticity_core.metrics import weight_kernels_numba as k  # needs numba (optional): imported on first use

    # compile now (or load numba's cache), so that a failure shows here
    k.top_sigma(np.ones((1, 2, 2), np.float32), np.ones(2, np.float32) / np.float32(math.sqrt(2)), 1e-6, 4, 2, 2,
                np.empty(1), np.empty(1, np.bool_), np.empty(1, np.int64), np.empty((4, 2), np.float32))
    k.sums_of_squares(np.ones((1, 2), np.float32), np.empty(1))
    return k


@functools.lru_cache(maxsize=1)
def _loaded():
    return jit.build(_kernel, "the compiled weight kernels",
                     "sigma_1 takes the BLAS Golub-Kahan-Lanczos path (same values to rounding, slower)")


def ready() -> bool:
    """Whether the compiled path is usable: numba present and enabled, the kernel built (now, on the first call)."""
    return ENABLED and _loaded()[0] is not None


def describe(device) -> str:
    """Which path ``sigma_1`` takes for taps on ``device`` (the diagnosis meta records the line; one starting with
    ``SLOWER`` is slower than it had to be, with the same values to float32 rounding)."""
    if device.type != "cpu":
        return "Golub-Kahan-Lanczos on the device, the taps of one shape in one batch"
    why = jit.why_not(ENABLED, _loaded, "the compiled weight kernels", "PLASTICITY_NUMBA=0")
    if why:
        return f"{SLOWER}: {why}"
    return "Lanczos on X^T X, one read of each tap per step (numba)"


def rows(x: np.ndarray) -> np.ndarray:
    """The taps ``x`` (``(b, m, n)``) with each tap's contiguous axis last: ``x`` itself, the transposed view of a
    transposed weight's taps, or a C-contiguous copy (conv taps)."""
    if x.flags.c_contiguous:
        return x
    xt = x.transpose(0, 2, 1)
    return xt if xt.flags.c_contiguous else np.ascontiguousarray(x)


def top(x: np.ndarray, start: np.ndarray, tol: float, max_steps: int, first_check: int,
        check: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(sigma_1, converged, steps)`` of every tap of ``x`` (``(b, p, q)`` float32, finite, rows contiguous: see
    ``rows``; ``||X||_F^2`` within ``weights.FRO2_RANGE``, where ``X^T X`` stays in float32's range),
    ``start`` the unit start vector of length ``q``. Needs ``ready()``."""
    nb, q = x.shape[0], x.shape[2]
    out, conv, steps = np.zeros(nb), np.ones(nb, dtype=bool), np.zeros(nb, dtype=np.int64)
    _kernel().top_sigma(x, start.astype(np.float32), float(tol), int(max_steps), int(first_check), int(check), out,
                        conv, steps, _scratch(min(max_steps, q) + 2, q))
    return out, conv, steps


_SCRATCH = threading.local()  # per thread: the dashboard's background weight job runs beside a foreground diagnosis


def _scratch(rows_: int, q: int) -> np.ndarray:
    """This thread's Lanczos vector scratch, at least ``rows_ x q`` float32 (grown, never shrunk; ~0.4 MB for a
    1536-wide tap)."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < rows_ * q:
        buf = _SCRATCH.buf = np.empty(max(rows_ * q, 1 << 16), np.float32)
    return buf[: rows_ * q].reshape(rows_, q)


def sums_of_squares(x: torch.Tensor) -> torch.Tensor:
    """``||X||_F^2`` of every tap of ``x`` (``(b, m, n)`` float32 on the CPU, see ``rows``; a strided one is copied),
    one read each, accumulated in float64; float64 ``(b,)``. Needs ``ready()``."""
    xr = rows(x.detach().numpy())
    out = np.empty(len(xr))
    _kernel().sums_of_squares(xr.reshape(len(xr), -1), out)
    return torch.from_numpy(out)
