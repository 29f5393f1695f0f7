"""One read of a CPU activation for every statistic the activation metrics take from it (needs numba).

torch reads an activation once per statistic and writes each count's 0/1 comparisons before summing them: for a
ReLU6 output, three reads and two writes (sums, nonzero count, count of 6s), then a handful of small operations per
layer to total them over the batch. The kernel here reads each (sample, unit) row of an NCHW activation once and
returns the per-sample sums (float32, in any order: they agree with torch's to float32 rounding) and, per unit,
totals over the batch in float64: the sum of ``|x|`` and the counts of ``x != 0``, ``x <= lo``, ``x >= hi`` and
of either tail (exact). NaN behaves as in torch: it makes the sums NaN, counts as nonzero and falls in neither tail.

Optional: ``pip install 'plasticity-lab[fast]'`` (the dev and dashboard setups include it). Without numba, on a
GPU, or for another layout (tokens, plain features), the statistics take torch's passes; ``describe`` says which.
Units are split over torch's intra-op threads (the kernel releases the GIL). The first use in a process compiles
the kernel (about half a second) or loads it from numba's on-disk cache (``ready`` does it ahead).
"""
from __future__ import annotations

import concurrent.futures
import functools
import os

import numpy as np
import torch

from plasticity_core.metrics import jit

AVAILABLE = jit.AVAILABLE
ENABLED = jit.ENABLED and os.environ.get("PLASTICITY_ONEPASS", "1") != "0"  # PLASTICITY_ONEPASS=0: torch's passes
TOTALS = ("abs_sum", "nonzero", "at_most", "at_least", "outside")  # per-unit float64 totals, in this order
SLOWER = "torch passes on the CPU"  # how ``describe`` starts the lines of a path slower than it had to be
PARALLEL_MIN = 1 << 16  # entries below which one thread does the whole tensor
MAX_ROW = 1 << 24  # longest row whose per-row counts stay exact in float32


@functools.lru_cache(maxsize=1)
def _kernel():
    import numba  # optional dependency: imported (and the kernel compiled) on first use only

    # reassociation lets LLVM vectorise the sums; no other fast-math flag (NaN and inf keep their meaning)
    @numba.njit(fastmath={"reassoc", "nsz", "contract"}, nogil=True, cache=True)
    def kernel(x, lo, hi, sums, totals, u0, u1, relu):
        for u in range(u0, u1):
            ta = 0.0
            tn = 0.0
            tl = 0.0
            tg = 0.0
            for b in range(x.shape[0]):
                s = np.float32(0.0)
                a = np.float32(0.0)
                n = np.float32(0.0)
                le = np.float32(0.0)
                ge = np.float32(0.0)
                if relu:  # x >= 0 (or NaN) and lo == 0: |x| is x, x <= 0 the zeros (a shorter loop, ~20 % faster)
                    for p in range(x.shape[2]):
                        v = x[b, u, p]
                        s += v
                        n += np.float32(v != 0)
                        ge += np.float32(v >= hi)
                    a = s
                    le = x.shape[2] - n
                else:
                    for p in range(x.shape[2]):
                        v = x[b, u, p]
                        s += v
                        a += abs(v)
                        n += np.float32(v != 0)
                        le += np.float32(v <= lo)
                        ge += np.float32(v >= hi)
                sums[b, u] = s
                ta += a
                tn += n
                tl += le
                tg += ge
            totals[0, u] = ta
            totals[1, u] = tn
            totals[2, u] = tl
            totals[3, u] = tg
            totals[4, u] = tl + tg

    # compile now (or load numba's cache), so that a failure shows here
    kernel(np.zeros((1, 1, 1), dtype=np.float32), np.float32(0.0), np.float32(1.0), np.empty((1, 1), dtype=np.float32),
           np.empty((5, 1), dtype=np.float64), 0, 1, False)
    return kernel


@functools.lru_cache(maxsize=1)
def _loaded() -> tuple[dict | None, str]:
    """The compiled kernel, or None and why not (numba present but unusable: the statistics take torch's passes)."""
    return jit.build(_kernel, "the one-pass activation kernel",
                     "the activation statistics take torch's passes (same values, slower on the CPU)")


@functools.lru_cache(maxsize=1)
def _pool(pid: int) -> concurrent.futures.ThreadPoolExecutor:
    """Worker threads for the unit blocks, one pool per process (``pid``: a forked child never reuses its parent's)."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1),
                                                 thread_name_prefix="plasticity-onepass")


def eligible(t: torch.Tensor, unit_dim: int) -> bool:
    """Whether ``t`` (the activation, units on ``unit_dim``) has the layout the kernel reads: a contiguous float32 CPU
    tensor with units on axis 1 and positions after them (NCHW), rows below 2^24 entries."""
    return (t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() > 2 and unit_dim % t.dim() == 1
            and t.is_contiguous() and t.numel() > 0 and t.numel() // (t.shape[0] * t.shape[1]) < MAX_ROW)


def ready() -> bool:
    """Whether the one-pass path is usable: numba present and enabled, the kernel built (built now on the first
    call: numba's import and compilation, or its cache load, up to a second)."""
    return ENABLED and _loaded()[0] is not None


def stats(t: torch.Tensor, lo: float, hi: float, relu: bool = False) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """For an ``eligible`` ``t`` when ``ready``: the per-sample sums over positions, (batch, units) float32, and the
    per-unit float64 totals over batch and positions named by ``TOTALS`` (``|x|``, ``x != 0``, ``x <= lo``,
    ``x >= hi``, either tail). ``relu``: ``t`` is a ReLU / ReLU6 output and ``lo`` is 0 (a shorter loop)."""
    b, u = t.shape[0], t.shape[1]
    x = np.from_dlpack(t.detach().reshape(b, u, -1))  # a view: no copy, no host read
    sums = np.empty((b, u), dtype=np.float32)
    totals = np.empty((len(TOTALS), u), dtype=np.float64)
    lo32, hi32 = np.float32(lo), np.float32(hi)  # torch compares a float32 tensor with a float scalar in float32
    kernel = _kernel()  # built by ``ready``
    threads = min(torch.get_num_threads(), u)
    if threads <= 1 or x.size < PARALLEL_MIN:
        kernel(x, lo32, hi32, sums, totals, 0, u, relu)
    else:  # each thread a block of units, all their samples (disjoint outputs)
        cuts = [u * i // threads for i in range(threads + 1)]
        pool = _pool(os.getpid())
        jobs = [pool.submit(kernel, x, lo32, hi32, sums, totals, cuts[i], cuts[i + 1], relu) for i in range(1, threads)]
        kernel(x, lo32, hi32, sums, totals, 0, cuts[1], relu)
        for job in jobs:
            job.result()
    return torch.from_numpy(sums), torch.from_numpy(totals).unbind(0)


def describe(device: torch.device, nchw: bool) -> str:
    """Which path a diagnosis's activation statistics took on ``device``; ``nchw``: it read an ``eligible``
    activation (the diagnosis meta records the line; one starting with ``SLOWER`` was slower than it had to be)."""
    if device.type != "cpu":
        return "torch (one pass per statistic on the device)"
    if not nchw:
        return "torch passes (no NCHW float32 activation: the one-pass kernel reads those only)"
    why = jit.why_not(ENABLED, _loaded, "the one-pass kernel", "PLASTICITY_ONEPASS=0 or PLASTICITY_NUMBA=0")
    if why:
        return f"{SLOWER}: {why}"
    return "one pass (numba) for NCHW activations on the CPU; torch passes for tokens and plain features"
