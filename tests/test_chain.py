"""The chain from diagnosis to runs carries one ReinitConfig, and every entry point reproduces the same re-init.

Real weights and data (bundled ImageNet MobileNetV2, animal silhouettes at 32 px, 200 images): recommend ->
to_config -> preview -> save/load -> an ExperimentConfig arm -> the run's config.yaml (library); `plasticity reinit`
twice -> bit-identical weights, equal to the preview's and to the exported Python snippet's; the dashboard's
Recommend -> Re-init -> Preview -> Export shows and exports the recommended parameters (AppTest).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io

import pytest
import torch
from safetensors.torch import load_file

import plasticity_core as pc
from plasticity_core.cli import _table, main

SETUP = {"backbone": "bundled:mobilenetv2_100", "pretrained": True, "arch": "", "data": "bundled:animal-silhouettes",
         "image_size": 32, "limit": 200, "device": "cpu", "head_seed": 0}
METRICS = ["dormant", "dead", "saturation", "grad_dormant"]
BUDGET = 0.5  # on this setup: targeted, criterion "grad" (ranked through the head), fraction 0.32 (not the defaults)


def _recipe(cfg: pc.ReinitConfig) -> dict:
    d = cfg.to_dict()
    for k in ("resolved_layers", "skipped_layers", "metric_versions"):
        d.pop(k)
    return d


@pytest.fixture(scope="module")
def library():
    bb = pc.load_backbone(SETUP["backbone"], num_classes=10, seed=SETUP["head_seed"])
    data = pc.load_dataset(SETUP["data"], image_size=32, limit=SETUP["limit"], data_config=bb.data_config)
    d = pc.diagnose(bb, data.val, metrics=METRICS, max_batches=1)
    rec = d.recommend(budget=BUDGET)
    assert rec.strategy == "targeted" and rec.params["criterion"] == "grad" and rec.params["fraction"] != 0.1, rec
    return bb, data, d, rec


def test_library_chain_carries_the_recommendation_into_the_runs(library, tmp_path):
    bb, data, d, rec = library
    assert d.meta["head"]["seed"] == 0 and "seed 0" in d.meta["head"]["text"]
    from plasticity_core.metrics.recommend import MARGIN

    scores = rec.ranking.set_index("layer").loc[rec.layers, "score"]
    assert (scores >= rec.params["fraction"] - MARGIN - 0.01).all()  # no chosen layer far below the fraction
    cfg = rec.to_config(seed=3)
    assert (cfg.strategy, cfg.layers, cfg.seed, cfg.head_seed) == (rec.strategy, rec.layers, 3, 0)
    assert {k: cfg.params[k] for k in rec.params} == rec.params  # the recommended values (the rest: defaults)
    report = pc.preview_reinit(bb.model, cfg, data=data.train)
    assert report.params == cfg.params and report.strategy == cfg.strategy
    assert set(report.table["layer"]) == set(rec.layers)
    cfg.save(tmp_path / "reinit.yaml")
    loaded = pc.ReinitConfig.load(tmp_path / "reinit.yaml")
    assert loaded.to_dict() == cfg.to_dict()
    exp = pc.ExperimentConfig(name="chain", backbone=SETUP["backbone"], data=SETUP["data"], data_limit=SETUP["limit"],
                              finetune=pc.FinetuneConfig(steps=1, batch_size=16, image_size=32, eval_every=1),
                              arms={"recommended": loaded}, seeds=[0])
    runs = pc.run_experiment(exp, tmp_path / "runs")
    assert [r.status for r in runs] == ["finished"]
    on_disk = pc.ExperimentConfig.load(runs[0].path / "config.yaml").arms["recommended"]
    # a run's seed draws its head and its re-init (runs/spec.py): seed 0's run holds the recipe with seed 0
    assert _recipe(on_disk) == _recipe(dataclasses.replace(cfg, seed=0, head_seed=0))
    assert on_disk.params == cfg.params and on_disk.layers == rec.layers


def _cli_reinit(cfg_path, out) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["reinit", "--config", str(cfg_path), "--model", SETUP["backbone"], "--num-classes", "10",
                   "--data", SETUP["data"], "--image-size", "32", "--limit", str(SETUP["limit"]), "--out", str(out)])
    assert rc == 0
    return buf.getvalue()


def test_cli_reproduces_itself_the_preview_and_the_snippet(library, tmp_path, monkeypatch):
    from dashboard import views

    bb, data, _, rec = library
    cfg = rec.to_config(seed=0)
    cfg.save(tmp_path / "reinit_config.yaml")
    table_a = _cli_reinit(tmp_path / "reinit_config.yaml", tmp_path / "a.safetensors")
    table_b = _cli_reinit(tmp_path / "reinit_config.yaml", tmp_path / "b.safetensors")
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    assert table_a == table_b
    # the preview on the library's model (head drawn from the same seed) gives the CLI's table and weights
    model = bb.fresh_copy()
    report = pc.apply_reinit(model, cfg, data=data.train)
    assert _table(report.table) in table_a
    assert all(torch.equal(v, a[k]) for k, v in model.state_dict().items() if k in a)
    assert pc.preview_reinit(bb.model, cfg, data=data.train).table.equals(report.table)
    # the exported snippet, run as a user would, gives the same weights
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(views.python_snippet(SETUP, 10), "snippet", "exec"), scope)  # our generated code, no user text
    snippet = scope["bb"].model.state_dict()
    assert all(torch.equal(snippet[k], a[k]) for k in a)


def test_dashboard_recommend_travels_to_reinit_and_export(library, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from dashboard.testing import APP, no_exception

    _, _, d_lib, rec = library
    monkeypatch.setenv("PLASTICITY_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["setup"] = dict(SETUP)
    at.run()
    at.switch_page("app_pages/diagnose.py").run()
    at.multiselect[0].set_value(METRICS)
    at.number_input[0].set_value(1)
    at.button[0].click().run()
    no_exception(at)
    d = at.session_state["diagnosis"]
    assert d.wide().equals(d_lib.wide())  # same head, same probe order as the library
    at.number_input(key="w_budget").set_value(BUDGET).run()
    at.button(key="btn_recommend").click().run()
    no_exception(at)
    held = at.session_state["reinit_cfg"]
    assert _recipe(held) == _recipe(rec.to_config(seed=0))
    # Re-init shows the recommended parameters in its widgets
    at.switch_page("app_pages/reinit.py").run()
    no_exception(at)
    assert at.selectbox(key="w_strategy").value == "targeted"
    assert at.selectbox(key="w_param_targeted_criterion").value == rec.params["criterion"]
    assert at.number_input(key="w_param_targeted_fraction").value == pytest.approx(rec.params["fraction"])
    assert _recipe(at.session_state["reinit_cfg"]) == _recipe(held)
    at.button(key="btn_preview").click().run()
    no_exception(at)
    assert at.session_state["preview"].params == held.params
    # Export writes it, and says it was previewed
    at.switch_page("app_pages/export.py").run()
    no_exception(at)
    exported = pc.ReinitConfig.from_yaml(next(c.value for c in at.code if c.language == "yaml"))
    assert _recipe(exported) == _recipe(held)
    assert not [w for w in at.warning if "not been previewed" in w.value]
