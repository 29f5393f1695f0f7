"""Which way is worse for each diagnostic metric, and what it means in plain words: the metric registry's ``worse`` and
``plain`` (``MetricInfo``). Kept as an import path for ``worse(name)``, ``plain(name)``, ``WORSE`` and ``PLAIN``.
"""
from __future__ import annotations

from plasticity_core.metrics.base import PLAIN, WORSE, plain, worse

__all__ = ["PLAIN", "WORSE", "plain", "worse"]
