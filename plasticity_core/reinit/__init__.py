"""Re-initialisation strategies (one file each, registered in ``STRATEGIES``), preview and helpers.

``apply_reinit(model, cfg, data=None, optimizer=None)`` applies a ``ReinitConfig`` in place;
``preview_reinit`` reports the same on a copy; ``plan_reinit`` says per layer what will happen (or why not)
without running anything. ``orthogonalize`` is FIRE's building block;
``recalibrate_batchnorm`` and ``reset_optimizer_state`` are public for users' own loops.
"""
from plasticity_core.reinit.base import STRATEGIES, Change, Context, Param, StrategyInfo, register
from plasticity_core.reinit.report import ReinitReport
from plasticity_core.reinit.apply import apply_reinit, preview_reinit, recalibrate_batchnorm, reset_optimizer_state
from plasticity_core.reinit.fire import orthogonalize

# registration order = listing order in the UI
from plasticity_core.reinit import fire as _fire, reset as _reset, shrink_perturb as _sp  # noqa: F401,E402
from plasticity_core.reinit import redo as _redo, targeted as _targeted  # noqa: F401,E402
from plasticity_core.reinit.cbp import ContinualBackprop, make_cbp  # noqa: E402
from plasticity_core.reinit.plan import ReinitPlan, fit_recommendation, noop_reason, plan_reinit, strategies_for  # noqa: E402

__all__ = ["STRATEGIES", "StrategyInfo", "Param", "Change", "Context", "register", "ReinitReport", "apply_reinit",
           "preview_reinit", "recalibrate_batchnorm", "reset_optimizer_state", "orthogonalize", "ContinualBackprop", "make_cbp",
           "ReinitPlan", "plan_reinit", "fit_recommendation", "noop_reason", "strategies_for"]
