"""Plasticity Lab: per-layer loss-of-plasticity diagnostics and re-initialisation for pretrained backbones.

The public API (see docs/design.md and the README) is importable from here; submodules load on first use so that
``import plasticity_core`` stays cheap.
"""
from __future__ import annotations

import importlib

from plasticity_core.version import __version__

_EXPORTS = {
    # backbones, data, offline assets
    "load_backbone": "models", "Backbone": "models", "BackboneError": "models", "probe_head": "head_probe",
    "load_dataset": "data", "DataBundle": "data", "DatasetError": "data",
    "fetch_assets": "assets", "AssetMissingError": "assets",
    # one-line messages for expected failures (the CLI and the dashboard show the same)
    "user_message": "errors", "UserError": "errors",
    # layer map
    "layer_table": "layers", "layer_map": "layers", "select_layers": "layers", "Selection": "layers", "LayerInfo": "layers",
    # configs
    "ReinitConfig": "config", "FinetuneConfig": "config", "ExperimentConfig": "config", "LaunchConfig": "config", "ConfigError": "config",
    # diagnostics
    "diagnose": "metrics", "Diagnosis": "metrics", "METRICS": "metrics",
    # re-initialisation
    "apply_reinit": "reinit", "preview_reinit": "reinit", "ReinitReport": "reinit", "plan_reinit": "reinit", "fit_recommendation": "reinit", "STRATEGIES": "reinit",
    "recalibrate_batchnorm": "reinit", "reset_optimizer_state": "reinit",
    # your own training loop as a run (Lightning / Hugging Face callbacks: plasticity_core.integrations.lightning / .hf)
    "track": "integrations", "Tracker": "integrations", "IntegrationError": "integrations",
    # fine-tuning and runs
    "RunResult": "finetune",
    "RunStore": "runs", "start_run": "runs", "start_resume": "runs", "resume_runs": "runs", "RunHandle": "runs", "compare_runs": "runs", "run_experiment": "runs",
    "Run": "runs", "expand_experiment": "runs", "run_name": "runs", "execute_run": "runs", "read_events": "runs",
    "default_root": "runs", "noop_arms": "runs", "apply_overrides": "runs", "EXECUTORS": "runs", "SINKS": "runs",
}

# ``finetune`` is both a submodule and its main function: importing the submodule anywhere would rebind
# ``plasticity_core.finetune`` to the module, so the function is bound here once, after the submodule is loaded.
from plasticity_core.finetune import finetune  # noqa: E402

__all__ = sorted([*_EXPORTS, "finetune"])


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"plasticity_core.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'plasticity_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
