"""The public names of docs/design.md and the README resolve to what they promise, whatever was imported before."""
import importlib

import plasticity_core as pc


def test_finetune_stays_the_function_after_its_module_is_imported():
    importlib.import_module("plasticity_core.finetune")
    importlib.import_module("plasticity_core.runs")
    assert callable(pc.finetune) and pc.finetune is importlib.import_module("plasticity_core.finetune").finetune


def test_every_exported_name_resolves():
    for name in pc.__all__:
        assert getattr(pc, name) is not None, name
    for name in ("load_backbone", "load_dataset", "layer_table", "select_layers", "diagnose", "apply_reinit",
                 "preview_reinit", "finetune", "start_run", "compare_runs", "run_experiment"):
        assert callable(getattr(pc, name)), name
    assert hasattr(pc.ReinitConfig, "from_yaml") and len(pc.METRICS) >= 13 and "fire" in pc.STRATEGIES
