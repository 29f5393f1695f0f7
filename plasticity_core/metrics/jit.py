"""Optional compiled kernels (numba, the ``fast`` extra): whether they may run, and building each one once.

``pip install 'plasticity-lab[fast]'`` (the dev and dashboard setups include it). ``PLASTICITY_NUMBA=0`` turns
every kernel off: the torch / BLAS paths run instead (the same values to float32 rounding, slower on the CPU).
A kernel that cannot be built (an unsupported numba / numpy pair, a compiler error) never fails a diagnosis: its
caller takes the other path and a RuntimeWarning says why.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Callable

AVAILABLE = importlib.util.find_spec("numba") is not None
ENABLED = AVAILABLE and os.environ.get("PLASTICITY_NUMBA", "1") != "0"


def build(factory: Callable[[], Callable], what: str, instead: str) -> tuple[Callable | None, str]:
    """``(factory(), "")``: the kernel compiled (or loaded from numba's on-disk cache), or ``(None, why)`` after a
    RuntimeWarning naming ``what`` could not be built and what runs ``instead``. Callers cache the result."""
    try:
        return factory(), ""
    except Exception as e:  # never a failed diagnosis
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        warnings.warn(f"{what} could not be built ({why}); {instead}", RuntimeWarning, stacklevel=3)
        return None, why


def why_not(enabled: bool, loaded: Callable[[], tuple[Callable | None, str]], kernel: str, switch: str) -> str | None:
    """Why the kernel ``loaded`` builds does not run (``enabled``: its switches, named by ``switch``), or None."""
    if not AVAILABLE:
        return "numba not installed (pip install 'plasticity-lab[fast]')"
    if not enabled:
        return f"{kernel} disabled ({switch})"
    built, why = loaded()
    return None if built is not None else f"{kernel} could not be built ({why})"
