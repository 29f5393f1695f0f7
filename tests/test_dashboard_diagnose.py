"""Diagnose page (AppTest): the form drives diagnose(), the results land in session state, Recommend selects."""
import numpy as np

from dashboard.testing import no_exception, tiny_app


def _diagnosed(metrics=None, batches=2):
    at = tiny_app()
    at.switch_page("app_pages/diagnose.py").run()
    no_exception(at)
    if metrics is not None:
        at.multiselect[0].set_value(metrics)
    at.number_input[0].set_value(batches)
    at.button[0].click().run()  # the form's "Run diagnosis"
    no_exception(at)
    return at


def test_run_diagnosis_uses_the_widgets_and_stores_the_result():
    at = _diagnosed(["sfe", "dfi_si", "dormant", "grad_norm"], batches=1)
    d = at.session_state["diagnosis"]
    assert set(d.metrics) == {"sfe", "dfi_si", "dormant", "grad_norm"}
    assert d.meta["batches"] == 1 and d.meta["samples"] == 32  # one probe batch of 32 validation images
    wide = d.wide()
    assert (wide["sfe"] == 0).all()  # an untouched working copy sits exactly on its reference
    assert wide["dormant"].dropna().between(0, 1).all() and (wide["dfi_si"] >= -1e-6).all()
    assert at.dataframe[-1].value["name"].tolist() == d.layer_names


def test_recommend_selects_the_recommended_layers_and_strategy():
    at = _diagnosed(batches=2)
    d = at.session_state["diagnosis"]
    at.button(key="btn_recommend").click().run()
    no_exception(at)
    expected = d.recommend(budget=0.25)
    assert at.session_state["selected_layers"] == expected.layers and expected.layers
    assert at.session_state["strategy"] == expected.strategy
    assert at.multiselect(key="w_diag_selected").value == expected.layers
    at.button(key="btn_clear").click().run()
    assert at.session_state["selected_layers"] == []


def test_selected_layer_panel_shows_its_unit_scores():
    at = _diagnosed(["dormant", "saturation"], batches=1)
    d = at.session_state["diagnosis"]
    layer = d.layer_names[4]
    at.multiselect(key="w_diag_selected").set_value([layer]).run()
    assert at.session_state["selected_layers"] == [layer]
    assert at.selectbox(key="w_diag_focus").value == layer  # the one-layer panel follows the selection
    at.radio(key="w_diag_unit_metric").set_value("saturation").run()  # another widget does not flip it back
    assert at.selectbox(key="w_diag_focus").value == layer
    no_exception(at)
    shown = next(df.value for df in at.dataframe if list(df.value.columns) == ["value"])["value"]
    np.testing.assert_allclose(shown.to_numpy(float), d.wide().loc[layer].to_numpy(float))


def test_top_k_ranks_by_the_metric_and_history_compares_before_and_after_a_reinit(tmp_path, monkeypatch):
    monkeypatch.setenv("PLASTICITY_RUNS", str(tmp_path))
    at = _diagnosed(["dormant", "sfe", "feature_erank"], batches=1)
    at.selectbox(key="w_diag_rank_metric").set_value("feature_erank").run()
    at.number_input(key="w_diag_top_k").set_value(3).run()
    no_exception(at)
    top = next(d.value for d in at.dataframe if "rank" in d.value.columns)
    wide = at.session_state["diagnosis"].wide()
    assert top["layer"].tolist() == wide["feature_erank"].dropna().sort_values(kind="stable").index[:3].tolist()
    # a re-init previewed on Re-init, then diagnosed after it: kept in the workspace's history next to the first
    at.switch_page("app_pages/reinit.py").run()
    at.selectbox(key="w_strategy").set_value("reset").run()
    at.text_area[0].set_value("layer4.*").run()
    at.button(key="btn_preview").click().run()
    at.switch_page("app_pages/diagnose.py").run()
    at.button(key="btn_diag_after_reinit").click().run()
    no_exception(at)
    assert len(at.selectbox(key="w_diag_hist_before").options) == 2
    at.selectbox(key="w_diag_hist_metric").set_value("sfe").run()
    change = next(d.value for d in at.dataframe if "change" in d.value.columns)
    moved = change.set_index("layer")["after"]
    assert (moved[[n for n in moved.index if n.startswith("layer4.")]] > 0).all()  # reset moved layer4 from pretrained
    assert (moved[[n for n in moved.index if n.startswith("layer1.")]] == 0).all()  # and nothing else


def test_number_tables_show_four_significant_digits():
    """The one-layer values and the layer table format every metric to 4 significant digits: Streamlit's default
    showed a dead layer's 1.66e-11 fro_norm as 0.00000000001 (cut off in the layer table) and a diverged layer's
    3.03e51 dfi as unformatted text (seen in Chromium on a checkpoint with such layers)."""
    import json

    at = _diagnosed(["dfi", "fro_norm", "dormant"], batches=1)
    d = at.session_state["diagnosis"]
    values = next(df for df in at.dataframe if list(df.value.columns) == ["value"])
    layer_table = at.dataframe[-1]
    assert json.loads(values.proto.columns)["value"]["type_config"]["format"] == "%.4g"
    config = json.loads(layer_table.proto.columns)
    assert all(config[m]["type_config"]["format"] == "%.4g" for m in d.metrics), config
    assert "units" not in config  # integer columns keep their own format
