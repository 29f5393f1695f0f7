"""One read of a CPU activation for every statistic the activation metrics take from it (needs numba).

torch reads an activation once per statistic and writes each count's 0/1 comparisons before summing them: for a
ReLU6 output, three reads and two writes (sums, nonzero count, count of 6s), then a handful of small operations per
layer to total them over the batch. The kernels here (``onepass_numba``) read an NCHW activation once and return
the per-sample sums (float32, in any order: they agree with torch's to float32 rounding) and, per unit, totals over
the batch in float64: the sum of ``|x|`` and the counts of ``x != 0``, ``x <= lo``, ``x >= hi`` and of either tail
(exact). NaN behaves as in torch: it makes the sums NaN, counts as nonzero and falls in neither tail. Rows of a
(sample, unit) are read one by one, except rows of ``SHORT_ROWS`` positions (2 x 2 maps: a row would fill a
fraction of a vector), which are read per block of units along the samples (``columns``: 2-2.5x faster on them).

Optional: ``pip install 'plasticity-lab[fast]'`` (the dev and dashboard setups include it). Without numba, on a
GPU, or for another layout (tokens, plain features), the statistics take torch's passes; ``describe`` says which.
Units are split over torch's intra-op threads (the kernels release the GIL; every value is the same on any number
of threads). The first use in a process compiles the kernels (seconds) or loads them from numba's on-disk cache
(``ready`` does it ahead; the setup script once at install).
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
SHORT_ROWS = (4, 8)  # row lengths (2 x 2 maps) that take the column kernel: such a row leaves a vector mostly empty


@functools.lru_cache(maxsize=1)
def _kernel():
    from plasticity_core.metrics import onepass_numba as k  # needs numba (optional): imported on first use

    # compile now (or load numba's cache), so that a failure shows here
    for p in (1, 4):
        x = np.zeros((1, 1, p), dtype=np.float32)
        _run(k, x, np.float32(0.0), np.float32(1.0), False)
    return k


@functools.lru_cache(maxsize=1)
def _loaded() -> tuple[object | None, str]:
    """The compiled kernels, or None and why not (numba present but unusable: the statistics take torch's passes)."""
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
    x = np.from_dlpack(t.detach().reshape(t.shape[0], t.shape[1], -1))  # a view: no copy, no host read
    sums, totals = _run(_kernel(), x, np.float32(lo), np.float32(hi), relu)  # torch compares in float32 too
    return torch.from_numpy(sums), torch.from_numpy(totals).unbind(0)


def _run(k, x: np.ndarray, lo: np.float32, hi: np.float32, relu: bool) -> tuple[np.ndarray, np.ndarray]:
    """The kernel for ``x``'s row length over all its units, on up to torch's intra-op threads."""
    b, u, p = x.shape
    sums = np.empty((b, u), dtype=np.float32)
    totals = np.empty((len(TOTALS), u), dtype=np.float64)
    kernel, step = (k.columns, k.BLOCK) if p in SHORT_ROWS else (k.rows, 1)  # columns: whole blocks per thread
    steps = -(-u // step)
    threads = min(torch.get_num_threads(), steps) if x.size >= PARALLEL_MIN else 1
    if threads <= 1:
        kernel(x, lo, hi, sums, totals, 0, u, relu)
        return sums, totals
    cuts = [min(u, step * (steps * i // threads)) for i in range(threads + 1)]
    pool = _pool(os.getpid())  # each thread a block of units, all their samples (disjoint outputs; no GIL held)
    jobs = [pool.submit(kernel, x, lo, hi, sums, totals, cuts[i], cuts[i + 1], relu) for i in range(1, threads)]
    kernel(x, lo, hi, sums, totals, 0, cuts[1], relu)
    for job in jobs:
        job.result()
    return sums, totals


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
