"""Re-init page (AppTest): widgets generated from the registry build the ReinitConfig; Preview runs preview_reinit."""
import timm

import plasticity_core as pc
from dashboard.testing import no_exception, tiny_app


def _reinit_page():
    at = tiny_app()
    at.switch_page("app_pages/reinit.py").run()
    no_exception(at)
    return at


def test_parameter_widgets_come_from_the_registry():
    at = _reinit_page()
    at.selectbox(key="w_strategy").set_value("shrink_perturb").run()
    info = pc.STRATEGIES.get("shrink_perturb")
    labels = {w.label for w in [*at.selectbox, *at.number_input, *at.checkbox]}
    assert {p.name for p in info.params} <= labels
    lam = at.number_input(key="w_param_shrink_perturb_lam")
    assert lam.value == info.defaults()["lam"] and str(info.defaults()["lam"]) in lam.help


def test_preview_fire_svd_reports_isometries_on_the_selected_layers():
    at = _reinit_page()
    at.selectbox(key="w_strategy").set_value("fire").run()
    at.selectbox(key="w_param_fire_method").set_value("svd")
    at.text_area[0].set_value("layer4.*\nfc").run()
    at.button(key="btn_preview").click().run()
    no_exception(at)
    cfg, report = at.session_state["reinit_cfg"], at.session_state["preview"]
    expected = pc.select_layers(timm.create_model("test_resnet", num_classes=4), ["layer4.*", "fc"]).names
    assert cfg.strategy == "fire" and cfg.params["method"] == "svd" and cfg.layers == ["layer4.*", "fc"]
    assert sorted(cfg.resolved_layers) == sorted(expected) and "fc" not in expected  # the head is never selected
    assert sorted(report.table["layer"]) == sorted(expected)
    # the exact polar factor has equal singular values: scale-invariant DfI is 0 per tap, so 0 on average
    assert (report.table["dfi_si_after"].abs() < 1e-4).all()
    assert (report.table["dfi_si_before"] > 1e-3).all() and (report.table["sfe"] > 0).all()
    assert "fc" in set(report.skipped["layer"])


def test_patterns_matching_nothing_disable_preview():
    at = _reinit_page()
    at.text_area[0].set_value("no_such_layer*").run()
    assert at.button(key="btn_preview").disabled
    assert "preview" not in at.session_state
