"""The workspace survives a browser reload (AppTest: a new session with the same ?ws= URL parameter) and the
Fine-tune form keeps its values when the user leaves the page."""
import pandas as pd
from streamlit.testing.v1 import AppTest

from dashboard.testing import APP, TINY_SETUP, no_exception, previewed, tiny_app


def test_reload_restores_setup_diagnosis_selection_preview_and_form(tmp_path):
    at = tiny_app()
    ws = at.query_params["ws"][0] if isinstance(at.query_params["ws"], list) else at.query_params["ws"]
    at.switch_page("app_pages/diagnose.py").run()
    at.number_input[0].set_value(1)
    at.button[0].click().run()
    at.multiselect(key="w_diag_selected").set_value(["layer2.0.conv1", "layer2.0.conv2"]).run()
    previewed(at, "redo", "layer2.0.conv1\nlayer2.0.conv2")
    at.switch_page("app_pages/finetune.py").run()
    at.number_input(key="w_ft_steps").set_value(7).run()
    at.switch_page("app_pages/export.py").run()  # leave the page: Streamlit forgets the widget
    at.switch_page("app_pages/finetune.py").run()
    assert at.number_input(key="w_ft_steps").value == 7
    no_exception(at)

    fresh = AppTest.from_file(APP, default_timeout=180)  # a reload: new session, only the URL is the same
    fresh.query_params["ws"] = ws
    fresh.run()
    no_exception(fresh)
    assert fresh.session_state["loaded_setup"] == TINY_SETUP
    assert fresh.session_state["selected_layers"] == ["layer2.0.conv1", "layer2.0.conv2"]
    pd.testing.assert_frame_equal(fresh.session_state["diagnosis"].wide(), at.session_state["diagnosis"].wide())
    assert fresh.session_state["reinit_cfg"] == at.session_state["reinit_cfg"]
    pd.testing.assert_frame_equal(fresh.session_state["preview"].table, at.session_state["preview"].table)
    fresh.switch_page("app_pages/finetune.py").run()
    assert fresh.number_input(key="w_ft_steps").value == 7
    fresh.switch_page("app_pages/reinit.py").run()
    no_exception(fresh)
    assert fresh.selectbox(key="w_strategy").value == "redo"


def test_setup_never_replaces_a_restored_model(tmp_path):
    at = tiny_app()
    ws = at.query_params["ws"][0] if isinstance(at.query_params["ws"], list) else at.query_params["ws"]
    fresh = AppTest.from_file(APP, default_timeout=180)
    fresh.query_params["ws"] = ws
    fresh.run()  # Setup is the default page: it must show the restored tiny model, not load the default one
    assert fresh.session_state["loaded_setup"] == TINY_SETUP
    metrics = {m.label: m.value for m in fresh.metric}
    assert "test_resnet" in metrics["Backbone"]
