"""Setup page (AppTest): the first run loads the preset and shows its real layer table; errors keep the state."""
import timm

import plasticity_core as pc
from dashboard.testing import TINY_SETUP, no_exception, tiny_app


def test_first_run_loads_the_setup_and_shows_the_layer_table():
    at = tiny_app()
    no_exception(at)
    assert at.session_state["loaded_setup"] == TINY_SETUP
    expected = pc.layer_table(timm.create_model("test_resnet", num_classes=4))
    shown = at.dataframe[0].value
    assert shown["name"].tolist() == expected["name"].tolist()
    assert shown["shape"].tolist() == expected["shape"].tolist()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Classes"] == "4" and metrics["Weight layers"] == str(len(expected))
    train, val = (int(v) for v in metrics["Train / val images"].split(" / "))
    assert train + val == 160 and val == 32  # val_fraction 0.2, stratified


def test_a_bad_backbone_shows_the_error_and_keeps_the_loaded_state():
    at = tiny_app()
    at.radio(key="w_bb_source").set_value("timm").run()
    at.text_input(key="w_bb_timm_q").set_value("resnet_eighteen").run()  # no substring match: typed name is used
    assert any("Close matches" in w.value for w in at.warning)
    at.button(key="btn_load").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "unknown timm model 'resnet_eighteen'" in at.error[0].value
    assert "close matches" in at.error[0].value
    assert at.session_state["loaded_setup"] == TINY_SETUP  # the previous load is still the session's setup
    assert len(at.dataframe[0].value) == len(pc.layer_table(timm.create_model("test_resnet")))
