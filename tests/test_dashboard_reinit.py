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


def test_unsupported_selected_layers_are_named_with_reasons_and_proposals():
    at = _reinit_page()
    at.selectbox(key="w_strategy").set_value("redo").run()
    # layer1.0.conv2 feeds the residual stream: redo has no unit pair for it; conv1 of the block it can recycle
    at.text_area[0].set_value("layer1.0.conv1\nlayer1.0.conv2\nfc").run()
    no_exception(at)
    shown = " ".join(w.value for w in at.warning)
    assert "`layer1.0.conv2`: redo: no explicit (in, out) unit pair" in shown and "`fc`: classifier head" in shown
    plan = next(df.value for df in at.dataframe if "proposal" in df.value.columns)
    assert plan["layer"].tolist() == ["layer1.0.conv1", "layer1.0.conv2", "fc"]  # only the selected layers
    assert plan.set_index("layer").loc["layer1.0.conv2", "proposal"].startswith("fire, reset, shrink_perturb")
    at.button(key="btn_preview").click().run()
    report, cfg = at.session_state["preview"], at.session_state["reinit_cfg"]
    assert sorted(report.skipped["layer"]) == ["fc", "layer1.0.conv2"]  # not the ~20 layers nobody selected
    assert cfg.resolved_layers == ["layer1.0.conv1"] and set(cfg.skipped_layers) == {"fc", "layer1.0.conv2"}


def test_a_strategy_that_acts_on_nothing_offers_one_that_does():
    at = _reinit_page()
    at.selectbox(key="w_strategy").set_value("redo").run()
    at.text_area[0].set_value("layer1.0.conv2").run()
    assert any("can act on none" in e.value for e in at.error) and at.button(key="btn_preview").disabled
    at.button(key="btn_reinit_use_fire").click().run()
    assert at.selectbox(key="w_strategy").value == "fire" and not at.button(key="btn_preview").disabled
