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


def _ws(at: AppTest) -> str:
    ws = at.query_params["ws"]
    return ws[0] if isinstance(ws, list) else ws


def test_two_tabs_on_one_workspace_never_undo_each_other(tmp_path):
    """Tab B restored the workspace, then tab A saved a diagnosis. B's next save writes and deletes nothing, says that
    another tab changed it, and offers A's state, which B then loads."""
    from dashboard import state

    a = tiny_app()
    ws = _ws(a)
    b = AppTest.from_file(APP, default_timeout=180)
    b.query_params["ws"] = ws
    b.run()
    a.switch_page("app_pages/diagnose.py").run()
    a.number_input[0].set_value(1)
    a.button[0].click().run()
    no_exception(a)
    folder = tmp_path / "runs" / ".workspaces" / ws
    assert (folder / "diagnosis.parquet").is_file()
    saved = (folder / "workspace.json").read_bytes()
    b.session_state["selected_layers"] = ["layer1.0.conv1"]
    b.run()  # the stale tab: before this fix its save deleted A's diagnosis.parquet
    assert (folder / "diagnosis.parquet").is_file() and (folder / "workspace.json").read_bytes() == saved
    assert any("Another tab saved this workspace" in w.value for w in b.warning)
    b.button(key="btn_ws_reload").click().run()
    no_exception(b)
    assert b.session_state["diagnosis"] is not None and "ws_conflict" not in b.session_state
    b.session_state["selected_layers"] = ["layer1.0.conv1"]
    b.run()  # now up to date: its save goes through
    assert state.validate_workspace(__import__("json").loads((folder / "workspace.json").read_text()))[0][
        "selected_layers"] == ["layer1.0.conv1"]
    a.run()  # and A, now stale, is told in turn
    assert any("Another tab saved this workspace" in w.value for w in a.warning)


def test_workspace_files_are_validated_private_and_odd_visits_leave_nothing(tmp_path):
    import json
    import stat

    root = tmp_path / "runs" / ".workspaces"
    for odd in ("zz!!", "../../etc", "deadbeef00"):  # malformed, traversal, well-formed but unknown
        at = AppTest.from_file(APP, default_timeout=180)
        at.query_params["ws"] = odd
        at.run()
        no_exception(at)
    assert not root.exists() or not any(root.iterdir())  # nothing saved: no folder left behind

    (root / "bad0000001").mkdir(parents=True)
    (root / "bad0000001" / "workspace.json").write_text(json.dumps(
        {"setup": 5, "selected_layers": "abc", "diag_batches": "x", "form": [], "loaded_setup": {"backbone": 3}}))
    (root / "bad0000002").mkdir()
    (root / "bad0000002" / "workspace.json").write_bytes(b'{"setup": "\xff\xfe"}')
    for ws, words in (("bad0000001", "restored in part: setup dropped"), ("bad0000002", "not UTF-8 text; set aside")):
        at = AppTest.from_file(APP, default_timeout=180)
        at.query_params["ws"] = ws
        at.run()
        no_exception(at)
        assert any(words in w.value for w in at.warning), [w.value for w in at.warning]
        at.run()  # every later page works too (the save no longer trips over the file)
        no_exception(at)
    assert list((root / "bad0000002").glob("workspace.json.broken-*"))

    at = tiny_app()
    folder = root / _ws(at)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = [p for p in folder.iterdir() if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), \
        {p.name: oct(p.stat().st_mode) for p in files}
