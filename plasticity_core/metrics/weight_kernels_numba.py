"""The compiled kernels of ``weight_kernels`` (needs numba: ``weight_kernels`` imports this module on first use).

Module-level functions, so that numba's on-disk cache serves every later process (functions closing over other
compiled functions are recompiled in each process: seconds)."""
import math

import numba
import numpy as np

FAST = {"reassoc", "nsz", "contract"}  # lets LLVM vectorise the dot products; NaN / inf keep their meaning


@numba.njit(fastmath=FAST, nogil=True, cache=True)
def apply(x, v, w):
    """``w = X^T X v`` for one tap ``x`` (p rows of q): one read of each row."""
    p, q = x.shape
    w[:] = 0.0
    r = 0
    while r + 4 <= p:
        r0, r1, r2, r3 = x[r], x[r + 1], x[r + 2], x[r + 3]
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for i in range(q):
            vi = v[i]
            s0 += r0[i] * vi
            s1 += r1[i] * vi
            s2 += r2[i] * vi
            s3 += r3[i] * vi
        for i in range(q):
            w[i] += s0 * r0[i] + s1 * r1[i] + s2 * r2[i] + s3 * r3[i]
        r += 4
    while r < p:
        r0 = x[r]
        s0 = np.float32(0.0)
        for i in range(q):
            s0 += r0[i] * v[i]
        for i in range(q):
            w[i] += s0 * r0[i]
        r += 1


@numba.njit(nogil=True, cache=True)
def below(d, e, k, t):
    """How many eigenvalues of the tridiagonal ``T_k`` (``d[:k]``, ``e[:k-1]``) lie below ``t`` (Sturm)."""
    n = 0
    piv = d[0] - t
    for i in range(k):
        if i:
            piv = d[i] - t - e[i - 1] * e[i - 1] / piv
        if piv == 0.0:
            piv = -1e-300
        if piv < 0.0:
            n += 1
    return n


@numba.njit(nogil=True, cache=True)
def eigenvalue(d, e, k, index, lo, hi):
    """The ``index``-th smallest eigenvalue of ``T_k`` (0-based) in ``[lo, hi]``, by bisection to float64."""
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if below(d, e, k, mid) > index:
            hi = mid
        else:
            lo = mid
    return hi


@numba.njit(nogil=True, cache=True)
def ritz(d, e, k):
    """``(theta_1, theta_2, y_k^2)``: ``T_k``'s top two eigenvalues and its top eigenvector's last entry squared
    (1.0, the bound, where the recurrence cannot be trusted)."""
    lo, hi = d[0], d[0]
    for i in range(k):  # Gershgorin
        rad = (abs(e[i - 1]) if i else 0.0) + (abs(e[i]) if i + 1 < k else 0.0)
        lo = min(lo, d[i] - rad)
        hi = max(hi, d[i] + rad)
    span = max(hi - lo, abs(hi), 1e-300)
    lo, hi = lo - 1e-9 * span, hi + 1e-9 * span
    top = eigenvalue(d, e, k, k - 1, lo, hi)
    second = eigenvalue(d, e, k, k - 2, lo, top) if k > 1 else 0.0
    # piv = chi_i / chi_{i-1}, s = chi_i' / chi_{i-1}, t = chi_i' / chi_i (1-based i), all at theta_1
    y2, t, t_before, piv_before = 1.0, 0.0, 0.0, 1.0
    for i in range(k):
        ee = e[i - 1] * e[i - 1] if i else 0.0
        s = 1.0 + (top - d[i]) * t - ee * t_before / piv_before
        if i == k - 1:
            if s > 0.0 and math.isfinite(s):
                y2 = min(1.0 / s, 1.0)
            break
        piv = top - d[i] - ee / piv_before
        if not piv > 0.0:  # theta_1 at an eigenvalue of a leading block (T nearly reduced): use the bound
            break
        t_before, t, piv_before = t, s / piv, piv
    return top, second, y2


@numba.njit(fastmath=FAST | {"nnan", "ninf"}, nogil=True, cache=True)
def largest(x):
    """``max |x|`` of one finite tap."""
    m = np.float32(0.0)
    for r in range(x.shape[0]):
        for i in range(x.shape[1]):
            m = max(m, abs(x[r, i]))
    return m


@numba.njit(fastmath=FAST, nogil=True, cache=True)
def top_sigma(x, start, tol, max_steps, first_check, check, out, conv, steps, vs):
    """For every tap ``x[b]`` (p x q, rows contiguous, finite): ``sigma_1`` into ``out[b]``, whether the rule
    was met into ``conv[b]``, the steps taken into ``steps[b]``. ``vs``: scratch for the Lanczos vectors, at least
    ``(min(max_steps, q) + 2) x q`` float32 (the caller keeps it: a fresh one per call costs page faults). The
    caller brings each tap's ``||X||_F^2`` into float32's safe range (``weights.tap_units``)."""
    nb, p, q = x.shape
    k = min(max_steps, q)
    w = vs[k + 1]
    c = np.empty(k + 1, np.float32)
    d = np.zeros(k)
    e = np.zeros(k)
    eps = np.finfo(np.float32).eps
    for b in range(nb):
        xb = x[b]
        amax = float(largest(xb))
        out[b], conv[b], steps[b] = 0.0, True, 0
        if amax == 0.0:
            continue
        scale = amax * max(p, q) * eps  # GKL's breakdown threshold (sigma units)
        vs[0] = start
        prev, dmax = 0.0, 0.0
        for j in range(k):
            v = vs[j]
            apply(xb, v, w)
            a = 0.0
            for i in range(q):
                a += w[i] * v[i]
            d[j] = a
            dmax = max(dmax, a)
            a32, back = np.float32(a), np.float32(e[j - 1] if j else 0.0)
            before = 0.0
            for i in range(q):
                w[i] -= a32 * v[i]
                if j:
                    w[i] -= back * vs[j - 1, i]
                before += w[i] * w[i]
            bsq = before
            for _ in range(2):  # reorthogonalise; once more where most of w lay in the basis ("twice is enough")
                for m in range(j + 1):
                    t = np.float32(0.0)
                    for i in range(q):
                        t += vs[m, i] * w[i]
                    c[m] = t
                for m in range(j + 1):
                    t = c[m]
                    for i in range(q):
                        w[i] -= t * vs[m, i]
                bsq = 0.0
                for i in range(q):
                    bsq += w[i] * w[i]
                if bsq >= 0.5 * before:
                    break
                before = bsq
            beta = math.sqrt(bsq)
            e[j] = beta
            steps[b] = j + 1
            # GKL closes at beta_j <= scale; here e_j = alpha_j beta_j (T = B^T B) with alpha_j <= sqrt(dmax)
            closed = beta <= scale * math.sqrt(dmax)
            last = j == k - 1
            if j == 0 and a <= scale * scale:  # |X v_0| below GKL's threshold for a nonzero X: the exact SVD decides
                conv[b] = False
                break
            if closed or last or (j + 1 >= first_check and (j + 1) % check == 0):
                top, second, y2 = ritz(d, e, j + 1)
                s = math.sqrt(max(top, 0.0))
                out[b] = s
                if closed or j + 1 == q:
                    break
                r = beta * math.sqrt(y2)
                gap = top - second
                est = min(r, r * r / gap) if gap > 0.0 else r
                if est <= tol * s * s and s - prev <= tol * s:
                    break
                if last:
                    conv[b] = False
                    break
                prev = s
            inv = np.float32(1.0 / beta)
            for i in range(q):
                vs[j + 1, i] = w[i] * inv


@numba.njit(fastmath=FAST, nogil=True, cache=True)
def sums_of_squares(x, out):
    """``out[t] = sum x[t]^2`` of each row of ``x`` (taps x entries, C-contiguous float32), accumulated in float64:
    one read, no temporary."""
    for t in range(x.shape[0]):
        s = 0.0
        for i in range(x.shape[1]):
            v = np.float64(x[t, i])
            s += v * v
        out[t] = s
