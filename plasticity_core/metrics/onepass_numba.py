"""The compiled kernels of ``onepass`` (needs numba: ``onepass`` imports this module on first use).

Module-level functions, so that numba's on-disk cache serves every later process. ``x`` is an NCHW activation
viewed as (samples, units, positions), C-contiguous float32; both kernels fill ``sums`` (samples, units) and
``totals`` (``onepass.TOTALS``, units) for the units ``[u0, u1)``, so threads can take disjoint blocks of units.
"""
import numba
import numpy as np

FAST = {"reassoc", "nsz", "contract"}  # lets LLVM vectorise the sums; NaN and inf keep their meaning
BLOCK = 128  # units per block of ``columns``: its threads split the units at multiples of this


@numba.njit(fastmath=FAST, nogil=True, cache=True)
def rows(x, lo, hi, sums, totals, u0, u1, relu):
    """Row by row in memory order (sample after sample: the unit-major order jumped across the samples and lost
    the prefetcher), each (sample, unit) row summed and counted in one loop over its positions (vectorised along
    the row; short rows leave most of each vector empty, see ``columns``), the per-unit totals added over the
    samples in order. ``relu``: ``x >= 0`` (or NaN) and ``lo == 0``, so ``|x|`` is ``x`` and the entries ``<= lo``
    are the zeros (a shorter loop, ~20 % faster)."""
    units = u1 - u0
    ta = np.zeros(units)  # per-unit totals over the samples, float64, added in sample order
    tn = np.zeros(units)
    tl = np.zeros(units)
    tg = np.zeros(units)
    for b in range(x.shape[0]):  # in memory order: each sample's units are one contiguous run
        for i in range(units):
            row = x[b, u0 + i]
            s = np.float32(0.0)
            a = np.float32(0.0)
            n = np.int32(0)  # integer counts: a 1-cycle add, not a float conversion and a float add per entry
            le = np.int32(0)
            ge = np.int32(0)
            if relu:
                for p in range(row.shape[0]):
                    v = row[p]
                    s += v
                    n += np.int32(v != 0)
                    ge += np.int32(v >= hi)
                a = s
                le = row.shape[0] - n
            else:
                for p in range(row.shape[0]):
                    v = row[p]
                    s += v
                    a += abs(v)
                    n += np.int32(v != 0)
                    le += np.int32(v <= lo)
                    ge += np.int32(v >= hi)
            sums[b, u0 + i] = s
            ta[i] += a
            tn[i] += n
            tl[i] += le
            tg[i] += ge
    for i in range(units):
        totals[0, u0 + i] = ta[i]
        totals[1, u0 + i] = tn[i]
        totals[2, u0 + i] = tl[i]
        totals[3, u0 + i] = tg[i]
        totals[4, u0 + i] = tl[i] + tg[i]


@numba.njit(fastmath=FAST, nogil=True, cache=True)
def _segment_sums(src, p, units, out, tmp):
    """``out[i] = sum(src[i*p:(i+1)*p])`` for ``i < units``: while ``p`` is a multiple of 4, groups of four
    neighbours are added (independent outputs: vectorised across them), then the rest of each segment in order.
    The order of the additions depends on ``p`` and on where the block starts only (``columns`` fixes both)."""
    n = units * p
    level = 0
    while p % 4 == 0:
        n //= 4
        p //= 4
        dst = out if p == 1 else tmp[level % 2, :n]
        for i in range(n):
            dst[i] = (src[4 * i] + src[4 * i + 1]) + (src[4 * i + 2] + src[4 * i + 3])
        if p == 1:
            return
        src = dst
        level += 1
    if p == 1:
        out[:units] = src[:units]
    elif p == 2:
        for i in range(units):
            out[i] = src[2 * i] + src[2 * i + 1]
    else:
        for i in range(units):
            s = src[i * p]
            for j in range(1, p):
                s += src[i * p + j]
            out[i] = s


@numba.njit(fastmath=FAST, nogil=True, cache=True)
def columns(x, lo, hi, sums, totals, u0, u1, relu):
    """Short rows (few positions per sample and unit: 2 x 2 maps), in blocks of ``BLOCK`` units:
    per block, each sample's entries of those units are one contiguous run; the counts are kept per entry and
    summed over the samples along that run (vectorised across entries), the per-sample sums taken by
    ``_segment_sums``, and only then each unit's entries folded together (float32 sums of integers below 2^24,
    samples x positions: exact). ``u0`` and ``u1`` are multiples of ``BLOCK`` (or the last unit), so the blocks and
    every sum are the same whichever threads took them."""
    samples = x.shape[0]
    p = x.shape[2]
    acc = np.empty((3, BLOCK * p), np.float32)
    tmp = np.empty((3, BLOCK * p), np.float32)
    flat = x.reshape(samples, x.shape[1] * p)
    part = np.empty(BLOCK, np.float32)
    ta = np.empty(BLOCK)
    for s0 in range(u0, u1, BLOCK):
        s1 = min(s0 + BLOCK, u1)
        units = s1 - s0
        m = units * p
        cn = acc[0, :m]
        cl = acc[1, :m]
        cg = acc[2, :m]
        cn[:] = 0.0
        cl[:] = 0.0
        cg[:] = 0.0
        ta[:] = 0.0
        for b in range(samples):
            run = flat[b, s0 * p:s1 * p]
            row = sums[b, s0:s1]
            if relu:
                for k in range(m):
                    v = run[k]
                    cn[k] += np.float32(v != 0)
                    cg[k] += np.float32(v >= hi)
                _segment_sums(run, p, units, row, tmp[1:])
                for i in range(units):
                    ta[i] += row[i]
            else:
                mag = tmp[0, :m]
                for k in range(m):
                    v = run[k]
                    mag[k] = abs(v)
                    cn[k] += np.float32(v != 0)
                    cl[k] += np.float32(v <= lo)
                    cg[k] += np.float32(v >= hi)
                _segment_sums(run, p, units, row, tmp[1:])
                _segment_sums(mag, p, units, part, tmp[1:])
                for i in range(units):
                    ta[i] += part[i]
        totals[0, s0:s1] = ta[:units]
        _segment_sums(cn, p, units, part, tmp[1:])
        totals[1, s0:s1] = part[:units]
        if relu:
            for i in range(units):
                totals[2, s0 + i] = samples * p - totals[1, s0 + i]
        else:
            _segment_sums(cl, p, units, part, tmp[1:])
            totals[2, s0:s1] = part[:units]
        _segment_sums(cg, p, units, part, tmp[1:])
        totals[3, s0:s1] = part[:units]
        for i in range(units):
            totals[4, s0 + i] = totals[2, s0 + i] + totals[3, s0 + i]
