"""Integrations: runs of training loops that are not ours, written into the run store as the run contract says.

``track`` (any loop: ``with pc.track(store, name, ...) as run: run.log(step, loss=...)``) is here; the framework
callbacks import their framework and live in their own modules: ``plasticity_core.integrations.lightning``
(``pip install 'plasticity-lab[lightning]'``) and ``plasticity_core.integrations.hf`` (``[hf]``).
"""
from __future__ import annotations

from plasticity_core.integrations.track import IntegrationError, Tracker, track

__all__ = ["IntegrationError", "Tracker", "track"]
