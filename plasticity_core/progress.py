"""Where a run stands (step of total, latest accuracy, elapsed time, ETA): ``run_progress`` of the run contract.

Kept as an import path; the function lives in ``plasticity_core.train.events``.
"""
from __future__ import annotations

from plasticity_core.train.events import FINAL, run_progress

__all__ = ["FINAL", "run_progress"]
