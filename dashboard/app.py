"""Plasticity Lab dashboard: ``streamlit run dashboard/app.py``.

Backbone and data (Setup) -> per-layer diagnosis (Diagnose) -> re-init preview (Re-init) -> background
fine-tunes with live curves (Fine-tune) -> the exported config (Export). Pages only call plasticity_core.
"""
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if (HERE.parent / "plasticity_core").is_dir() and str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))  # a checkout: plasticity_core sits next to dashboard/
if "dashboard" not in sys.modules:  # the pages import dashboard.*: this folder, in a checkout or inside the wheel
    _spec = importlib.util.spec_from_file_location("dashboard", HERE / "__init__.py", submodule_search_locations=[str(HERE)])
    sys.modules["dashboard"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["dashboard"])

import streamlit as st  # noqa: E402

from dashboard import state  # noqa: E402

st.set_page_config(page_title="Plasticity Lab", page_icon=":material/neurology:", layout="wide")
state.init()

PAGES = [
    st.Page("app_pages/setup.py", title="Setup", icon=":material/tune:", default=True),
    st.Page("app_pages/diagnose.py", title="Diagnose", icon=":material/grid_on:"),
    st.Page("app_pages/reinit.py", title="Re-init", icon=":material/restart_alt:"),
    st.Page("app_pages/finetune.py", title="Fine-tune", icon=":material/show_chart:"),
    st.Page("app_pages/export.py", title="Export", icon=":material/download:"),
]
page = st.navigation(PAGES)
if error := st.session_state.get("restore_error"):  # kept until dismissed: Setup's first load reruns the script
    w1, w2 = st.columns([6, 1])
    w1.warning(error)
    if w2.button("Dismiss", key="btn_restore_dismiss"):
        st.session_state.pop("restore_error", None)
        st.rerun()

# Saved before the page as well: widget values of this run are already in session_state, and a page that ends
# with st.stop() runs nothing after it (no st.* call works in a `finally` either).
state.save()
if conflict := st.session_state.get("ws_conflict"):
    st.warning(conflict, icon=":material/sync_problem:")
    c1, c2, _ = st.columns([1, 1, 2])
    if c1.button("Load the other tab's state", key="btn_ws_reload"):
        state.reload_workspace()
        st.rerun()
    if c2.button("Keep this tab's state", key="btn_ws_keep", help="save this tab's state over the other tab's"):
        st.session_state["ws_overwrite"] = True
        state.save()
        st.rerun()
if error := st.session_state.pop("ws_save_error", None):
    st.warning(error)
with st.sidebar:
    loaded = st.session_state.get("loaded_setup")
    st.caption(f"Backbone: `{loaded['backbone']}`  \nData: `{loaded['data']}` at {loaded['image_size']} px"
               if loaded else "Nothing loaded yet")
    st.caption(f"Selected layers: {len(st.session_state['selected_layers'])}")
    st.caption(f"Workspace `{st.session_state['ws_restored']}`: saved under the runs folder; reloading this URL "
               "restores it.")
page.run()
state.save()  # what the page computed (diagnosis, preview)
