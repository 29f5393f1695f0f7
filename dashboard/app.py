"""Plasticity Lab dashboard: ``streamlit run dashboard/app.py``.

Backbone and data (Setup) -> per-layer diagnosis (Diagnose) -> re-init preview (Re-init) -> background
fine-tunes with live curves (Fine-tune) -> the exported config (Export). Pages only call plasticity_core.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts dashboard/ on the path, the pages import dashboard.*
    sys.path.insert(0, str(ROOT))

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
if error := st.session_state.pop("restore_error", None):
    st.warning(error)
page.run()
state.save()
with st.sidebar:  # after the page, so that it shows what the page just loaded or selected
    loaded = st.session_state.get("loaded_setup")
    st.caption(f"Backbone: `{loaded['backbone']}`  \nData: `{loaded['data']}` at {loaded['image_size']} px"
               if loaded else "Nothing loaded yet")
    st.caption(f"Selected layers: {len(st.session_state['selected_layers'])}")
    st.caption(f"Workspace `{st.session_state['ws_restored']}`: saved under the runs folder; reloading this URL "
               "restores it.")
