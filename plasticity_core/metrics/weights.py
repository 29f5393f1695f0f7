"""Weight metrics: distance from the pretrained weights (SFE), deviation from isometry (DfI), norms, spectrum.

A 2-D weight ``(d_out, d_in)`` is one matrix; a conv weight ``(C_out, C_in, kh, kw)`` is treated per spatial
tap ``w[:, :, i, j]`` (FIRE orthogonalises each tap separately) and per-tap values are averaged. Each matrix is
taken in tall orientation ``X`` (``m x n``, ``m >= n``).

Each metric costs what it must: ``dfi`` / ``dfi_si`` read the Gram matrix ``G = X^T X`` (fp32, TF32 off; for wide
taps only its upper triangle, see ``gram_norms``), formed only when one of them is asked for. ``spectral_norm``
and ``stable_rank`` never form it: ``sigma_1`` comes from Golub-Kahan-Lanczos bidiagonalisation on ``X`` itself
(two matrix-vector products per step, full reorthogonalisation of the right vectors, a fixed-seed start vector),
stopped per tap as soon as the Ritz value's error estimate ``r^2 / gap`` is below ``GKL_TOL`` of ``sigma_1^2`` and
the value stopped moving; a tap not converged within ``GKL_MAX_STEPS`` falls back to an exact SVD and is counted
(``SpectraBatch.fallback``, the diagnosis meta). On the CPU with numba, the compiled kernel of ``weight_kernels``
runs instead: Lanczos on ``G`` applied through ``X`` (the same Krylov space and stopping rule, one read of the tap
per step; the diagnosis meta's ``spectral_path`` says which path ran). Without it, on the CPU, taps of up to
``BATCH_BYTES`` step together, all taps of one shape in one batch (there the Python cost of a step outweighs its
products); larger taps run one by one, each staying in cache (batched products over large taps stream from memory).
On a GPU the taps of one shape run together in one batch. Taps with ``n <= SMALL_N`` columns (stems, depthwise
kernels, 1-column taps) take one batched exact ``svdvals``. The Ritz value never exceeds ``sigma_1`` (up to
rounding); the tests check it against ``torch.linalg`` to 1e-5.
Frobenius norms accumulate in float64 (exact to float32 rounding at any size). A tap whose ``||X||_F^2`` lies
outside ``FRO2_RANGE`` (its Gram, the Gram's squares or Lanczos' ``G v`` would leave float32's range; on a tap of
a million entries: an RMS entry below 1e-7 or above 10) is read as ``X / 2^k``, ``2^k`` the power of two nearest its RMS entry (exact;
see ``tap_units``), and the metrics scale back in float64: the values are those of the definitions at any scale a
float32 weight can take. No function here returns NaN for a finite weight.
"""
from __future__ import annotations

import functools
import math
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from scipy.linalg import blas, lapack
from threadpoolctl import ThreadpoolController

from plasticity_core.metrics import weight_kernels
from plasticity_core.metrics.base import METRICS, register_metric

SFE_EPS = 1e-12
GKL_TOL = 1e-6  # stop when the estimated error of sigma_1^2 is below this fraction of it (sigma_1: half)
GKL_MAX_STEPS = 64  # a tap not converged by then gets an exact SVD (counted in the diagnosis meta)
GKL_CHECK = 4  # steps between convergence checks (each decomposes the small bidiagonal matrix)
GKL_FIRST_CHECK = 16
SMALL_N = 32  # at most this many columns: one batched exact svdvals (cheaper than any iteration)
BATCH_BYTES = 1 << 18  # CPU: taps of one shape up to this size step together; larger ones run one by one in cache
FRO2_RANGE = (1e-8, 1e8)  # ||X||_F^2 of a tap outside this: its metrics read X / 2^k (see ``tap_units``)


def tall_taps(w: torch.Tensor, dtype: torch.dtype = torch.float32, contiguous: bool = False) -> torch.Tensor:
    """The weight as a batch of tall matrices ``(taps, m, n)``, ``m >= n``: one per conv tap, one for a 2-D weight.
    ``contiguous``: a conv's taps are copied once into memory of their own (else a strided view of the weight)."""
    w = w.detach().to(dtype)
    if w.dim() == 2:
        x = w.unsqueeze(0)
    elif w.dim() in (3, 4):  # conv1d (C_out, C_in, k) / conv2d (C_out, C_in, kh, kw)
        x = w.flatten(2).permute(2, 0, 1)
        x = x.contiguous() if contiguous else x
    else:
        raise ValueError(f"expected a 2-D weight or a conv kernel (3-D/4-D), got shape {tuple(w.shape)}")
    return x.transpose(1, 2) if x.shape[2] > x.shape[1] else x


def gram(w: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gram matrices ``X^T X`` of the tall taps, shape ``(taps, n, n)``."""
    x = tall_taps(w, dtype)
    return x.transpose(1, 2) @ x


GRAM_SPLIT_N = 192  # from this many columns on, only the Gram's upper triangle is formed (CPU) or its upper blocks


def gram_norms(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tap of ``x`` (``(taps, m, n)`` tall): ``||X^T X - I||_F^2`` and ``||X^T X||_F^2``, fp32.

    For ``n >= GRAM_SPLIT_N`` only what the norms need is formed: on the CPU the upper triangle of each tap's Gram
    (BLAS ``syrk``, half the flops; its strictly upper part, squared, counts twice), elsewhere the blocks
    ``X1^T X1``, ``X2^T X2`` and ``X1^T X2`` of the column halves ``[X1 X2]`` (3/4 of the flops, the lower block
    being the transpose of the upper one). The identity is subtracted on the diagonal before squaring (no
    cancellation near an isometry).
    """
    n = x.shape[-1]
    if n < GRAM_SPLIT_N:
        g = x.transpose(1, 2) @ x
        fro = g.square().sum((1, 2))
        g.diagonal(dim1=1, dim2=2).sub_(1)
        return g.square().sum((1, 2)), fro
    if x.device.type == "cpu":
        return _gram_norms_syrk(x.detach().numpy())
    return _gram_norms_blocks(x)


def _gram_norms_blocks(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``gram_norms`` from the blocks of the column halves (any device)."""
    x = x.contiguous()
    h = x.shape[-1] // 2
    x1, x2 = x[:, :, :h], x[:, :, h:]
    fro = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    dev = torch.zeros_like(fro)
    for xi in (x1, x2):
        g = xi.transpose(1, 2) @ xi
        fro = fro + g.square().sum((1, 2))
        g.diagonal(dim1=1, dim2=2).sub_(1)
        dev = dev + g.square().sum((1, 2))
    off = 2 * (x1.transpose(1, 2) @ x2).square().sum((1, 2))
    return dev + off, fro + off


def _gram_norms_syrk(x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``gram_norms`` on the CPU: per tap, the upper triangle of ``X^T X`` by ``syrk`` (the lower one stays zero);
    the squared strictly upper part counts twice, the diagonal ``d`` once (as ``d`` and as ``d - 1``)."""
    out = np.empty((2, len(x)))
    with one_blas_thread():
        syrk = blas.get_blas_funcs("syrk", (x,))
        for i, t in enumerate(x):
            # column-major for BLAS: X^T X from X itself (F-order) or from X^T (C-order X; a conv tap is copied once)
            g = syrk(1.0, t, trans=1) if t.flags.f_contiguous else syrk(1.0, np.ascontiguousarray(t).T)
            d = np.diagonal(g).astype(np.float64)
            np.fill_diagonal(g, 0.0)
            off = float(np.square(g, out=g).sum(dtype=g.dtype))  # pairwise sums, like the GPU path's
            out[:, i] = 2.0 * off + float(np.square(d - 1.0).sum()), 2.0 * off + float(np.square(d).sum())
    dev, fro = torch.from_numpy(out.astype(x.dtype))
    return dev, fro


def tap_fro2(w: torch.Tensor, taps: torch.Tensor | None = None) -> torch.Tensor:
    """``||X||_F^2`` of each tap of the weight ``w`` (in ``tall_taps`` order), accumulated in float64 (float64: no
    float32 weight overflows or underflows it): on the CPU with the compiled kernels one read of each tap (``taps``:
    ``tall_taps(w)``, if the caller has it), else torch's float64 norm."""
    if w.device.type == "cpu" and weight_kernels.ready():
        return taps_fro2(tall_taps(w, contiguous=True) if taps is None else taps)
    w = w.detach()  # torch's norm reads a conv's taps in place (no copy)
    if w.dim() == 2:
        return torch.linalg.vector_norm(w, dtype=torch.float64).square().reshape(1)
    return torch.linalg.vector_norm(w, dim=(0, 1), dtype=torch.float64).square().flatten()


def taps_fro2(x: torch.Tensor) -> torch.Tensor:
    """``||X||_F^2`` of each tap of ``x`` (``(b, m, n)``), accumulated in float64: one compiled read per tap on the
    CPU (float32, where the kernels are ready), else torch's float64 norm."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and weight_kernels.ready():
        return weight_kernels.sums_of_squares(x)
    return torch.linalg.vector_norm(x, dim=(1, 2), dtype=torch.float64).square()


def sum_of_squares(t: torch.Tensor) -> torch.Tensor:
    """``sum t^2`` over the whole tensor, accumulated in float64 (0-d float64)."""
    return taps_fro2(t.reshape(1, 1, -1))[0]


def tap_units(fro2: torch.Tensor, entries: int) -> torch.Tensor | None:
    """Per tap (``fro2``: float64 ``||X||_F^2`` of taps of ``entries`` entries): ``2^k``, the power of two nearest
    the RMS entry, where ``fro2`` lies outside ``FRO2_RANGE``, else 1 (float64). ``X / 2^k`` is exact and in range:
    Grams and Lanczos run on it and the metrics scale back in float64. None on the CPU when no tap needs it (no
    copy); on a device always a tensor (no host read)."""
    if fro2.device.type == "cpu":  # numpy: a few microseconds per layer
        f = fro2.numpy()
        if f.size == 0 or FRO2_RANGE[0] <= f.min() <= f.max() <= FRO2_RANGE[1] or not _extreme(f).any():
            return None
    return powers_of_two(fro2, entries)


def _extreme(fro2):
    """Where ``fro2`` (tensor or array) is finite, nonzero and outside ``FRO2_RANGE``."""
    lo, hi = FRO2_RANGE
    return (fro2 > 0) & ((fro2 < lo) | (fro2 > hi)) & (fro2 < math.inf)


def powers_of_two(fro2: torch.Tensor, entries: int) -> torch.Tensor:
    """``tap_units`` as a tensor on any device, 1 for the taps in range (the device path: no host read)."""
    extreme = _extreme(fro2)
    k = torch.round(torch.log2(torch.where(extreme, fro2, torch.ones_like(fro2)) / entries) / 2)
    return torch.where(extreme, torch.pow(2.0, k), torch.ones_like(fro2))


def unit_taps(x: torch.Tensor, unit: torch.Tensor | None) -> torch.Tensor:
    """The taps ``x`` divided by their ``tap_units`` (``x`` itself for None)."""
    return x if unit is None else x / unit.to(x.dtype)[:, None, None]


@functools.lru_cache(maxsize=64)
def start_vector(n: int) -> torch.Tensor:
    """The fixed-seed unit start vector of length ``n`` (float64, CPU): the same on every device and run (one
    shared tensor per ``n``: callers copy it, never write to it)."""
    v = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return v / v.norm()


def _ritz(alpha: np.ndarray, beta: np.ndarray, beta_next: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per tap (rows): the top singular value of the upper bidiagonal ``B`` (diagonal ``alpha``, superdiagonal
    ``beta[:, :-1]``) and the estimated error of its square as an eigenvalue of ``G = X^T X``. ``T = B^T B`` is the
    Lanczos matrix of ``G`` and ``G V = V T + beta_next alpha_k v_{k+1} e_k^T``, so the Ritz pair
    ``(theta^2, y)`` has the residual ``r = beta_next alpha_k |y_k|``; the estimate is ``r^2 / gap``
    (``gap = theta_1^2 - theta_2^2``), or ``r`` itself (a bound with no gap assumption) when that is smaller."""
    t, k = alpha.shape
    b = np.zeros((t, k, k))
    i = np.arange(k)
    b[:, i, i] = alpha
    b[:, i[:-1], i[1:]] = beta[:, : k - 1]
    lam, y = np.linalg.eigh(np.matmul(b.transpose(0, 2, 1), b))
    top = np.maximum(lam[:, -1], 0.0)
    r = beta_next * alpha[:, -1] * np.abs(y[:, -1, -1])
    return np.sqrt(top), _error_estimate(r, top - (lam[:, -2] if k > 1 else 0.0))


def _error_estimate(r, gap):
    """The error estimate of a Ritz value ``theta^2`` with residual ``r`` and ``gap`` to the next one (floats or
    arrays): ``r^2 / gap``, or ``r`` itself (a bound with no gap assumption) when that is smaller or there is no gap."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap > 0, np.minimum(r, r * r / np.where(gap > 0, gap, 1.0)), r)


@functools.cache
def _blas_pools() -> ThreadpoolController:
    return ThreadpoolController()


def one_blas_thread():
    """Context manager: inside it the BLAS libraries of numpy and SciPy run on one thread, as they were set before
    outside it. The CPU kernels here issue many small BLAS calls (matrix-vector products, one ``syrk`` per tap): a
    thread pool's hand-offs cost more than they share (resnet50's weight set took 3x the wall time on two
    threads), and its spinning threads slow a forward running beside it (the dashboard's background weight job).
    Process-wide while it lasts, like every BLAS thread setting."""
    return _blas_pools().limit(limits=1, user_api="blas")


def _tridiagonal(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal and off-diagonal of ``T = B^T B`` for one tap's bidiagonal ``B`` (``alpha``, ``beta[:-1]``)."""
    d = alpha * alpha
    d[1:] += beta[:-1] * beta[:-1]
    return d, alpha[:-1] * beta[:-1]


def _ritz_top(alpha: np.ndarray, beta: np.ndarray) -> float:
    """The top singular value of one tap's bidiagonal ``B``: the top eigenvalue of ``T = B^T B`` alone, by
    bisection (LAPACK ``stebz``; a third of the cost of ``_ritz_one``, which also needs the eigenvector)."""
    d, e = _tridiagonal(alpha, beta)
    k = d.size
    top = d[0] if k == 1 else lapack.dstebz(d, e, 2, 0.0, 0.0, k, k, 0.0, "E")[1][0]
    return math.sqrt(max(float(top), 0.0))


def _ritz_one(alpha: np.ndarray, beta: np.ndarray, beta_next: float) -> tuple[float, float]:
    """``_ritz`` for one tap: the top two eigenvalues of ``T`` by bisection, the top eigenvector by inverse
    iteration (LAPACK ``stebz`` + ``stein``, a third of the cost of a dense ``eigh``)."""
    d, e = _tridiagonal(alpha, beta)
    k = d.size
    if k == 1:
        top, second, y_k = max(float(d[0]), 0.0), 0.0, 1.0
    else:
        m, lam, block, split, _ = lapack.dstebz(d, e, 2, 0.0, 0.0, k - 1, k, 0.0, "E")
        block[0] = block[m - 1]
        y_k = float(lapack.dstein(d, e, lam[m - 1:m], block, split)[0][-1, 0])
        top, second = max(float(lam[m - 1]), 0.0), float(lam[m - 2]) if m > 1 else 0.0
    return math.sqrt(top), float(_error_estimate(beta_next * float(alpha[-1]) * abs(y_k), top - second))


def steps_together(m: int, n: int, itemsize: int) -> bool:
    """CPU: taps of this size step together in one batch (``BATCH_BYTES``); larger ones run one by one in cache."""
    return m * n * itemsize <= BATCH_BYTES


def _converged(est, s, prev, tol: float):
    """The stopping rule (per tap; floats or arrays): the error estimate of ``sigma_1^2`` is below ``tol`` of it AND
    the Ritz value moved by at most ``tol`` of itself since the previous check (the estimate alone can pass while
    the top eigenvalue has not entered the Krylov space yet)."""
    return (est <= tol * s * s) & (s - prev <= tol * s)


def gkl_top(x: np.ndarray, tol: float | None = None, max_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(sigma_1, converged)`` of every tap of ``x`` (``(b, m, n)``, finite, tall, float32, ``||X||_F^2`` within
    ``FRO2_RANGE``: see ``top_singular``) by Golub-Kahan-Lanczos
    bidiagonalisation (see ``_gkl_batch``), or, where ``weight_kernels.ready()``, by its compiled Lanczos on ``X^T X``.

    Without the compiled kernel, taps of up to ``BATCH_BYTES`` step together (``_gkl_batch``, whatever their number,
    one included), larger ones run one by one (``_gkl_tap``): the code path depends on the tap's size alone, so a
    tap's value is the same whichever taps it is computed with (a layer recomputed alone, all layers at once, any
    entry point).
    """
    tol = GKL_TOL if tol is None else tol
    if weight_kernels.ready():  # the same Krylov space, one read of the tap per step, compiled (``weight_kernels``)
        xr = weight_kernels.rows(x)
        top, ok, _ = weight_kernels.top(xr, start_vector(xr.shape[2]).numpy(), tol,
                                        GKL_MAX_STEPS if max_steps is None else max_steps, GKL_FIRST_CHECK, GKL_CHECK)
        return top, ok
    with one_blas_thread():
        if steps_together(x.shape[1], x.shape[2], x.itemsize):
            return _gkl_batch(np.ascontiguousarray(x), tol, max_steps)
        res = [_gkl_tap(t if t.flags.c_contiguous or t.flags.f_contiguous else np.ascontiguousarray(t), tol,
                        max_steps) for t in x]
    return np.array([r[0] for r in res]), np.array([r[1] for r in res], dtype=bool)


def _gkl_batch(x: np.ndarray, tol: float, max_steps: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(sigma_1, converged)`` of every tap of ``x``, the taps stepping together (one matrix-vector product per
    step for the whole batch; a tap's arithmetic does not depend on the others).

    Full reorthogonalisation of the right vectors (a second pass where the first removed most of the vector);
    each tap is checked every ``GKL_CHECK`` steps from ``GKL_FIRST_CHECK`` on (and at a breakdown or the last step)
    against ``tol`` and leaves the batch when it passes. Exact (up to rounding) when the Krylov space closes
    (``min(max_steps, n)`` steps or an invariant subspace). ``converged`` is False where ``max_steps`` ran out first.
    """
    nb, m, n = x.shape
    k = min(GKL_MAX_STEPS if max_steps is None else max_steps, n)
    s1, conv = np.zeros(nb), np.ones(nb, dtype=bool)
    scale = np.abs(x).max((1, 2)) * (max(m, n) * np.finfo(x.dtype).eps)  # per-tap breakdown threshold
    idx = np.flatnonzero(scale > 0)  # an all-zero tap: sigma_1 = 0
    if idx.size == 0:
        return s1, conv
    if idx.size < nb:
        x = x[idx]
    sc = scale[idx]
    t = idx.size
    v = np.broadcast_to(start_vector(n).numpy().astype(x.dtype), (t, n)).copy()
    vs, us = np.zeros((t, k + 1, n), x.dtype), np.zeros((t, k, m), x.dtype)
    alpha, beta, prev = np.zeros((t, k)), np.zeros((t, k)), np.zeros(t)

    def leave(done: np.ndarray, value: np.ndarray, ok: np.ndarray | bool = True) -> bool:
        """Record the taps in ``done`` and drop them from the batch; True when none is left."""
        nonlocal x, v, vs, us, alpha, beta, prev, sc, idx
        s1[idx[done]], conv[idx[done]] = value[done], ok if np.isscalar(ok) else ok[done]
        keep = ~done
        x, v, vs, us, alpha, beta, prev, sc, idx = (a[keep] for a in (x, v, vs, us, alpha, beta, prev, sc, idx))
        return idx.size == 0

    for j in range(k):
        vs[:, j] = v
        u = np.matmul(x, v[:, :, None])[:, :, 0]
        if j:  # one-sided reorthogonalisation (of the right vectors, below) keeps sigma_1 accurate
            u -= beta[:, j - 1, None] * us[:, j - 1]
        a = np.sqrt(np.einsum("ij,ij->i", u, u))
        dead = a <= sc
        if dead.any():  # X v = 0 on the rest: the Krylov space is invariant, the Ritz value so far is exact
            # X V_{j+1} = U_j [B_j | beta_{j-1} e_j]: the last beta belongs to the bidiagonal (alpha_j = 0 here)
            # (at the first step the start vector lies in the null space of a nonzero X: the exact SVD decides)
            value = _ritz(alpha[:, : j + 1], beta[:, : j + 1], np.zeros(len(a)))[0] if j else np.zeros(len(a))
            if leave(dead, value, j > 0):
                break
            u, a = u[~dead], a[~dead]
        alpha[:, j] = a
        u /= a[:, None].astype(x.dtype)
        us[:, j] = u
        w = np.matmul(u[:, None, :], x)[:, 0] - alpha[:, j, None].astype(x.dtype) * v
        basis = vs[:, : j + 1]
        before = np.einsum("ij,ij->i", w, w)
        w -= np.matmul(np.matmul(basis, w[:, :, None]).transpose(0, 2, 1), basis)[:, 0]
        bsq = np.einsum("ij,ij->i", w, w)
        again = bsq < 0.5 * before  # most of w lay in the basis: once more (Kahan's "twice is enough"), on those
        if again.any():  # taps only, so that a tap's arithmetic never depends on the others in the batch
            wa, ba = w[again], basis[again]
            w[again] = wa - np.matmul(np.matmul(ba, wa[:, :, None]).transpose(0, 2, 1), ba)[:, 0]
            bsq[again] = np.einsum("ij,ij->i", w[again], w[again])
        b = np.sqrt(bsq)
        beta[:, j] = b
        closed = b <= sc
        last = j == k - 1
        regular = last or (j + 1 >= GKL_FIRST_CHECK and (j + 1) % GKL_CHECK == 0)
        if regular or closed.any():
            s, est = _ritz(alpha[:, : j + 1], beta[:, : j + 1], np.where(closed, 0.0, b))
            # between regular checks only the closed taps (exact) leave
            good = closed | (j + 1 == n) | _converged(est, s, prev, tol) if regular else closed
            if last:
                leave(np.ones(len(s), dtype=bool), s, good)
                break
            if good.any() and leave(good, s):
                break
            if regular:
                prev = s[~good]
            w, b = w[~good], b[~good]
        v = w / b[:, None].astype(x.dtype)
    return s1, conv


def _gkl_tap(x: np.ndarray, tol: float, max_steps: int | None) -> tuple[float, bool]:
    """``gkl_top`` for one 2-D tap (C- or F-contiguous): the same steps and stopping rule on vectors, each step a
    handful of BLAS calls that fuse the vector updates into the products (``gemv`` with ``beta``), so the Python
    cost of a step stays well below its two passes over ``x`` (the large taps run one by one in cache).

    ``u`` is kept unnormalised: ``alpha_{j+1} u_{j+1} = X v_{j+1} - (beta_j / alpha_j) u_j`` and
    ``beta_j v_{j+1} = X^T u_j / alpha_j - alpha_j v_j``, the right vectors then reorthogonalised as in
    ``_gkl_batch``."""
    m, n = x.shape
    k = min(GKL_MAX_STEPS if max_steps is None else max_steps, n)
    scale = float(max(x.max(), -x.min())) * max(m, n) * np.finfo(x.dtype).eps
    if scale == 0.0:
        return 0.0, True
    gemv, nrm2, dot = blas.get_blas_funcs(("gemv", "nrm2", "dot"), (x,))
    a, t = (x, 0) if x.flags.f_contiguous else (x.T, 1)  # column-major for BLAS (no copy): X v = op_t(a) v
    vs = np.empty((k + 1, n), x.dtype)
    vs[0] = start_vector(n).numpy()
    u, w = np.zeros(m, x.dtype), np.empty(n, x.dtype)
    alpha, beta = np.zeros(k), np.zeros(k)
    back, prev = 0.0, 0.0
    for j in range(k):
        v = vs[j]
        u = gemv(1.0, a, v, beta=-back, y=u, overwrite_y=1, trans=t)  # alpha_j u_j
        al = float(nrm2(u))
        if al <= scale:  # the Krylov space closed (see _gkl_batch); at the first step the exact SVD decides
            return (_ritz_one(alpha[: j + 1], beta[: j + 1], 0.0)[0] if j else 0.0), j > 0
        alpha[j] = al
        w[:] = v
        w = gemv(1.0 / al, a, u, beta=-al, y=w, overwrite_y=1, trans=1 - t)  # X^T u_j - alpha_j v_j
        basis = vs[: j + 1].T
        c = gemv(1.0, basis, w, trans=1)
        w = gemv(-1.0, basis, c, beta=1.0, y=w, overwrite_y=1)
        bsq = float(dot(w, w))
        if bsq < float(dot(c, c)):  # the first pass removed most of w: once more
            w = gemv(-1.0, basis, gemv(1.0, basis, w, trans=1), beta=1.0, y=w, overwrite_y=1)
            bsq = float(dot(w, w))
        b = math.sqrt(bsq)
        beta[j] = b
        closed = b <= scale
        last = j == k - 1
        if last or closed or (j + 1 >= GKL_FIRST_CHECK and (j + 1) % GKL_CHECK == 0):
            settled = last or closed or j + 1 == n
            if not settled:  # the Ritz value alone (no vectors) first: has it stopped moving?
                top = _ritz_top(alpha[: j + 1], beta[: j + 1])
                settled = top - prev <= tol * top
                prev = prev if settled else top
            if settled:
                s, est = _ritz_one(alpha[: j + 1], beta[: j + 1], 0.0 if closed else b)
                if closed or j + 1 == n or _converged(est, s, prev, tol):
                    return s, True
                if last:
                    return s, False
                prev = s
        np.multiply(w, 1.0 / b, out=vs[j + 1])
        back = b / al
    return 0.0, False


def gkl_top_batched(x: torch.Tensor, steps: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma_1, est)`` of every tap of ``x`` (``(b, m, n)``, finite) by ``min(steps, n)`` batched GKL steps.

    The device path (one batch per shape on a GPU): the same recurrence as ``gkl_top`` with a fixed step count;
    ``est`` is the error estimate of ``sigma_1^2`` (``r^2 / gap``, or ``r``), so the caller can check ``tol``.
    """
    b, m, n = x.shape
    k = min(steps, n)
    v = start_vector(n).to(device=x.device, dtype=x.dtype).expand(b, n).contiguous()
    vs, us = x.new_zeros(b, k + 1, n), x.new_zeros(b, k, m)
    alpha, beta = x.new_zeros(b, k), x.new_zeros(b, k)
    scale = x.abs().amax((1, 2)).unsqueeze(1) * (max(m, n) * torch.finfo(x.dtype).eps)
    for j in range(k):
        vs[:, j] = v
        u = torch.bmm(x, v.unsqueeze(2)).squeeze(2)
        if j:
            u = u - beta[:, j - 1:j] * us[:, j - 1]
            uj = us[:, :j]
            u = u - torch.bmm(torch.bmm(uj, u.unsqueeze(2)).transpose(1, 2), uj).squeeze(1)
        a = u.norm(dim=1, keepdim=True)
        live = a > scale
        alpha[:, j] = torch.where(live, a, torch.zeros_like(a)).squeeze(1)
        u = torch.where(live, u / a.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(u))
        us[:, j] = u
        w = torch.bmm(u.unsqueeze(1), x).squeeze(1) - alpha[:, j:j + 1] * v
        vj = vs[:, : j + 1]
        for _ in range(2):
            w = w - torch.bmm(torch.bmm(vj, w.unsqueeze(2)).transpose(1, 2), vj).squeeze(1)
        nb = w.norm(dim=1, keepdim=True)
        ok = live & (nb > scale)  # below: invariant subspace, continue with zeros (exact)
        beta[:, j] = torch.where(ok, nb, torch.zeros_like(nb)).squeeze(1)
        v = torch.where(ok, w / nb.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(w))
    bd = (torch.diag_embed(alpha) + torch.diag_embed(beta[:, :-1], 1)).double()
    u_, s, _ = torch.linalg.svd(bd)
    s1 = s[:, 0]
    r = beta[:, -1].double() * s1 * u_[:, -1, 0].abs()
    gap = s1.square() - (s[:, 1].square() if k > 1 else torch.zeros_like(s1))
    est = torch.where(gap > 0, torch.minimum(r, r.square() / gap.clamp_min(1e-300)), r)
    est = torch.where((alpha[:, 0] == 0) & (scale[:, 0] > 0), float("inf"), est)  # X v0 = 0 for a nonzero X
    return s1.to(x.dtype), est.to(x.dtype)


def top_singular(x: torch.Tensor, batched: bool | None = None,
                 fro2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``sigma_1`` of every tap of ``x`` (``(b, m, n)`` tall, fp32) and a per-tap mask of the exact fallbacks.

    ``fro2``: the per-tap float64 ``||X||_F^2`` (``taps_fro2``), computed here when not given. Non-finite taps
    (a non-finite sum) give NaN; a tap outside ``FRO2_RANGE`` is iterated on ``X / 2^k`` (``tap_units``).
    ``batched`` (default: on a GPU) runs the taps together (``gkl_top_batched``), else one by one on the CPU
    (``gkl_top``); both fall back to an exact ``svdvals`` for a tap whose error estimate is above ``GKL_TOL`` after
    ``GKL_MAX_STEPS`` steps.
    """
    b, m, n = x.shape
    if fro2 is None:
        fro2 = taps_fro2(x)
    finite = torch.isfinite(fro2).cpu()
    unit = tap_units(fro2, m * n)
    if bool(finite.all()):  # the usual case: no index bookkeeping
        s1, slow = _top_finite(unit_taps(x, unit), batched)
        return s1 if unit is None else (s1.double() * unit).to(x.dtype), slow
    out = torch.full((b,), float("nan"), dtype=x.dtype, device=x.device)
    slow = torch.zeros(b, dtype=torch.bool)
    idx = finite.nonzero().flatten()
    if idx.numel():
        i = idx.to(x.device)
        u = None if unit is None else unit[i]
        s1, slow[idx] = _top_finite(unit_taps(x[i], u), batched)
        out[i] = s1 if u is None else (s1.double() * u).to(x.dtype)
    return out, slow


def _top_finite(x: torch.Tensor, batched: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``top_singular`` of finite taps."""
    n = x.shape[2]
    if n <= SMALL_N:
        return torch.linalg.svdvals(x)[:, 0], torch.zeros(x.shape[0], dtype=torch.bool)
    if batched is None:
        batched = x.device.type != "cpu"
    if batched:
        s1, est = gkl_top_batched(x, min(GKL_MAX_STEPS, n))
        bad = (~(est <= GKL_TOL * s1.square()) & ((n > GKL_MAX_STEPS) | torch.isinf(est))).cpu()
    else:
        top, ok = gkl_top(x.detach().cpu().numpy())
        s1 = torch.from_numpy(top).to(device=x.device, dtype=x.dtype)
        bad = torch.from_numpy(~ok)
    if bad.any():
        s1[bad.to(s1.device)] = torch.linalg.svdvals(x[bad.to(x.device)])[:, 0].to(s1.device)
    return s1, bad


class WeightView:
    """One layer's weight (and reference) for the weight metrics, with the shared pieces computed once."""

    def __init__(self, w: torch.Tensor, w0: torch.Tensor | None, spectra: "SpectraBatch | None" = None) -> None:
        self.w = w.detach()
        self.w0 = None if w0 is None else w0.detach().to(self.w.device)
        self._gram: torch.Tensor | None = None
        self._gram_norms: tuple[torch.Tensor, torch.Tensor] | None = None
        self._taps: torch.Tensor | None = None
        self._fro2: torch.Tensor | None = None
        self._unit: tuple[torch.Tensor | None] | None = None
        self._scaled: torch.Tensor | None = None
        self._all_finite: bool | None = None
        self._sfe: torch.Tensor | None = None
        self.compiled = self.w.device.type == "cpu" and weight_kernels.ready()  # tap by tap, compiled (CPU)
        self.spectra = spectra if spectra is not None else SpectraBatch()
        self.spectra.add(self)

    @property
    def gram(self) -> torch.Tensor:
        """``X^T X`` per tap (formed on first use: only ``dfi`` / ``dfi_si`` read it)."""
        if self._gram is None:
            self._gram = gram(self.w)
        return self._gram

    @property
    def gram_norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(||X^T X - I||_F^2, ||X^T X||_F^2)`` per tap of the ``scaled`` taps (computed on first use: only
        ``dfi`` / ``dfi_si`` read them)."""
        if self._gram_norms is None:
            self._gram_norms = gram_norms(self.scaled)
        return self._gram_norms

    @property
    def taps(self) -> torch.Tensor:
        if self._taps is None:  # conv taps copied once where the compiled kernels read them (Gram and Lanczos share it)
            self._taps = tall_taps(self.w, contiguous=self.compiled)
        return self._taps

    @property
    def fro2(self) -> torch.Tensor:
        """``||X||_F^2`` per tap (float64)."""
        if self._fro2 is None:
            self._fro2 = tap_fro2(self.w, self.taps if self.compiled else None)
        return self._fro2

    @property
    def unit(self) -> torch.Tensor | None:
        """Per tap, the power of two the taps are divided by in ``scaled`` (``tap_units``; None: none is)."""
        if self._unit is None:
            self._unit = (tap_units(self.fro2, self.taps.shape[1] * self.taps.shape[2]),)
        return self._unit[0]

    @property
    def scaled(self) -> torch.Tensor:
        """The taps divided by ``unit``: what the Grams and the Lanczos read (the taps themselves where in range)."""
        if self._scaled is None:
            self._scaled = unit_taps(self.taps, self.unit)
        return self._scaled

    @property
    def fro2_scaled(self) -> torch.Tensor:
        """``||X / unit||_F^2`` per tap (float64, exact: the units are powers of two)."""
        return self.fro2 if self.unit is None else self.fro2 / self.unit.square()

    @property
    def all_finite(self) -> bool:
        """Every entry is finite (a finite sum of squares per tap says so; one host read, computed once)."""
        if self._all_finite is None:
            self._all_finite = bool(torch.isfinite(self.fro2).all())
        return self._all_finite

    @property
    def sfe(self) -> torch.Tensor | None:
        """``||W - W0||_F^2`` (fp32), once for ``sfe`` and ``sfe_rel``; None without a reference of this shape."""
        if self._sfe is None and self.w0 is not None and self.w0.shape == self.w.shape:
            self._sfe = sfe_t(self.w, self.w0)
        return self._sfe

    def release(self) -> None:
        """Drop the per-tap copies and the Gram (the values computed from them stay)."""
        self._taps = self._scaled = self._gram = None

    def sigma1_scaled(self) -> torch.Tensor:
        """``sigma_1`` per tap of the ``scaled`` taps, shape ``(taps,)`` (batched with every other layer of the same
        diagnosis)."""
        return self.spectra.top(self)

    def sigma1(self) -> torch.Tensor:
        """``sigma_1`` per tap (float64 where a tap was scaled)."""
        s1 = self.sigma1_scaled()
        return s1 if self.unit is None else s1.double() * self.unit


class SpectraBatch:
    """Top singular values of many layers' taps, computed together on first use: grouped by tap shape and
    device (one batched run per group on a GPU, tap by tap in cache on the CPU). ``fallback`` counts, per
    view, the taps that needed an exact SVD (not converged within ``GKL_MAX_STEPS``)."""

    def __init__(self) -> None:
        self.views: list[WeightView] = []
        self.done: dict[int, torch.Tensor] = {}
        self.fallback: dict[int, int] = {}

    def add(self, view: WeightView) -> None:
        self.views.append(view)

    def top(self, view: WeightView) -> torch.Tensor:
        if id(view) not in self.done:
            if view.compiled:  # tap by tap in compiled code: nothing to batch, no other layer's taps held
                self.done[id(view)], slow = top_singular(view.scaled, fro2=view.fro2_scaled)
                self.fallback[id(view)] = int(slow.sum())
            else:
                self._run()
        return self.done[id(view)]

    def _run(self) -> None:
        groups: dict[tuple, list[WeightView]] = defaultdict(list)
        for v in self.views:
            if id(v) not in self.done and not v.compiled:
                groups[(tuple(v.taps.shape[1:]), v.taps.device)].append(v)
        for (_, dev), vs in groups.items():
            m, n = vs[0].taps.shape[1:]
            if dev.type == "cpu" and (len(vs) == 1 or not steps_together(m, n, vs[0].taps.element_size())):
                parts = [top_singular(v.scaled, fro2=v.fro2_scaled) for v in vs]
            else:
                sizes = [v.taps.shape[0] for v in vs]
                top, slow = top_singular(torch.cat([v.scaled for v in vs]),
                                         fro2=torch.cat([v.fro2_scaled for v in vs]))
                parts = list(zip(top.split(sizes), slow.split(sizes)))
            for v, (t, slow) in zip(vs, parts):
                self.done[id(v)] = t
                self.fallback[id(v)] = int(slow.sum())


def _dfi_g(g: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
    return (g - eye).square().sum((1, 2)).mean()


def _dfi_si_g(g: torch.Tensor) -> torch.Tensor:
    n = g.shape[-1]
    sq = g.diagonal(dim1=1, dim2=2).sum(1).square()  # ||X||_F^4
    ratio = n * g.square().sum((1, 2)) / sq.clamp_min(torch.finfo(g.dtype).tiny)
    return torch.where(sq > 0, (ratio - 1).clamp_min(0), torch.zeros_like(ratio)).mean()


def _stable_rank(fro2: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
    lam = s1.to(fro2.dtype).square()
    return torch.where(lam > 0, fro2 / lam.clamp_min(torch.finfo(lam.dtype).tiny), torch.zeros_like(lam)).mean()


def _check_pair(w: torch.Tensor, w0: torch.Tensor) -> None:
    if w.shape != w0.shape:
        raise ValueError(f"weight and reference shapes differ: {tuple(w.shape)} vs {tuple(w0.shape)}")


def sfe_t(w: torch.Tensor, w0: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``||w - w0||_F^2``: the difference in ``dtype``, its squares summed in float64 (0-d float64)."""
    _check_pair(w, w0)
    return sum_of_squares(torch.sub(w.detach().to(dtype), w0.detach().to(device=w.device, dtype=dtype)))


def sfe_rel_t(w: torch.Tensor, w0: torch.Tensor, dtype: torch.dtype = torch.float32, eps: float = SFE_EPS) -> torch.Tensor:
    ref = sum_of_squares(w0.detach().to(device=w.device, dtype=dtype))
    return sfe_t(w, w0, dtype) / ref.clamp_min(eps)


# ---- the registered metrics (0-d tensors on the weight's device, float64 where a value can leave float32's
# range, no host sync) ----

@register_metric("sfe", family="weights", definition="||W - W0||_F^2 against the pretrained reference W0 (whole tensor)")
def _sfe(v: WeightView) -> torch.Tensor | None:
    return v.sfe


@register_metric("sfe_rel", family="weights", defaults={"eps": SFE_EPS}, version=2,
                 definition="sfe / max(||W0||_F^2, eps), eps = 1e-12 by default (whole tensor)")
def _sfe_rel(v: WeightView, eps: float) -> torch.Tensor | None:
    sfe = v.sfe
    return None if sfe is None else sfe / sum_of_squares(v.w0.float()).clamp_min(eps)


@register_metric("dfi", family="weights",
                 definition="||X^T X - I_n||_F^2 of the tall matrix X (conv: mean over spatial taps)")
def _dfi(v: WeightView) -> torch.Tensor:
    dev = v.gram_norms[0]
    if v.unit is None:
        return dev.mean()
    # a scaled tap: ||u^2 G_s - I||^2 = u^4 ||G_s||^2 - 2 ||X||_F^2 + n (no cancellation: u^2 G_s is far from I)
    n, u2 = v.taps.shape[-1], v.unit.square()
    far = u2.square() * v.gram_norms[1].double() - 2.0 * v.fro2 + n
    return torch.where(v.unit == 1, dev.double(), far).mean()


@register_metric("dfi_si", family="weights",
                 definition="n ||X^T X||_F^2 / ||X||_F^4 - 1, 0 iff all singular values are equal (conv: mean over taps)")
def _dfi_si(v: WeightView) -> torch.Tensor:
    n = v.taps.shape[-1]
    if n == 1:  # one singular value per tap: exactly 0 (the ratio below would give rounding noise, ~1e-7)
        return torch.zeros((), dtype=v.fro2.dtype, device=v.fro2.device)
    sq = v.fro2_scaled.square()  # ||X||_F^4 per tap (of the scaled taps, as the Gram's norm)
    ratio = n * v.gram_norms[1] / sq.clamp_min(torch.finfo(sq.dtype).tiny)
    return torch.where(sq > 0, (ratio - 1).clamp_min(0), torch.zeros_like(ratio)).mean()


@register_metric("fro_norm", family="weights", definition="||W||_F over the whole tensor (float64 accumulation)")
def _fro(v: WeightView) -> torch.Tensor:
    # per-tap pairwise (cascade) fp32 sums, added in float64: Tensor.norm() loses ~3e-4 at 1e7 entries on the CPU
    if v.w.dim() in (2, 3, 4):
        return v.fro2.sum().sqrt()
    return sum_of_squares(v.w.float()).sqrt()


@register_metric("spectral_norm", family="weights", version=2,
                 definition="largest singular value sigma_1 (conv: mean over taps), Lanczos (on X^T X through X, or "
                            "Golub-Kahan on X: the same Krylov space) in fp32 "
                            "to an estimated 1e-6 of sigma_1^2 (exact SVD where not converged in 64 steps)")
def _spectral(v: WeightView) -> torch.Tensor:
    return v.sigma1().mean()


@register_metric("stable_rank", family="weights", version=2,
                 definition="||X||_F^2 / sigma_1^2, the classical stable rank (conv: mean over taps; 0 for a zero matrix)")
def _srank(v: WeightView) -> torch.Tensor:
    return _stable_rank(v.fro2_scaled, v.sigma1_scaled())


# ---- the pure functions of the public API (float64, host floats) ----

def sfe(w: torch.Tensor, w0: torch.Tensor) -> float:
    """Squared Frobenius error ``||w - w0||_F^2`` over the whole tensor (FIRE's stability measure)."""
    return float(sfe_t(w, w0, torch.float64))


def sfe_rel(w: torch.Tensor, w0: torch.Tensor, eps: float = SFE_EPS) -> float:
    """``sfe / max(||w0||_F^2, eps)``: SFE comparable across layers of different scale."""
    return float(sfe_rel_t(w, w0, torch.float64, eps))


def dfi(w: torch.Tensor) -> float:
    """Deviation from isometry ``||X^T X - I_n||_F^2`` (tall orientation; conv: mean over taps)."""
    return float(_dfi_g(gram(w, torch.float64)))


def dfi_si(w: torch.Tensor) -> float:
    """Scale-invariant DfI ``n ||X^T X||_F^2 / ||X||_F^4 - 1`` (0 iff a flat spectrum; zero matrix: 0)."""
    return float(_dfi_si_g(gram(w, torch.float64)))


def fro_norm(w: torch.Tensor) -> float:
    """``||w||_F`` over the whole tensor."""
    return float(w.detach().double().norm())


def spectral_norm(w: torch.Tensor) -> float:
    """Largest singular value (conv: mean over taps), float64, exact (``torch.linalg.svdvals``)."""
    return float(torch.linalg.svdvals(tall_taps(w, torch.float64))[:, 0].mean())


def stable_rank(w: torch.Tensor) -> float:
    """Classical stable rank ``||X||_F^2 / sigma_1^2`` (conv: mean over taps), float64, exact ``sigma_1``."""
    x = tall_taps(w, torch.float64)
    return float(_stable_rank(x.square().sum((1, 2)), torch.linalg.svdvals(x)[:, 0]))


def weight_metrics(w: torch.Tensor, w0: torch.Tensor | None, names: set[str],
                   params: dict[str, dict[str, Any]] | None = None) -> dict[str, torch.Tensor]:
    """The requested registered weight metrics of one layer as 0-d fp32 tensors on the weight's device."""
    view = WeightView(w, w0)
    out = {}
    for name in names:
        info = METRICS.get(name)
        if info.needs != "weights" or info.family != "weights":
            continue
        kw = {**info.defaults, **(params or {}).get(name, {})}
        value = info.impl(view, **kw)
        if value is not None:
            out[name] = value
    return out
