"""Export: the chosen ReinitConfig (YAML, JSON), how to apply it (CLI, Python), the diagnosis and the charts."""

import streamlit as st

import plasticity_core as pc
from dashboard import state, tables, views

st.title("Export")
cfg: pc.ReinitConfig | None = st.session_state.get("reinit_cfg")
diagnosis = st.session_state.get("diagnosis")
current = state.loaded()

st.subheader("Re-init config")
if cfg is None:
    st.info("Choose a strategy on Re-init (or press Recommend on Diagnose) first: that config is what gets exported.")
else:
    yaml_text, json_text = cfg.to_yaml(), cfg.to_json()
    if st.session_state.get("preview_for") != state.config_key(cfg):
        st.warning("This config has not been previewed yet (it came from Recommend or an edit on Re-init): press "
                   "**Preview** on Re-init to see what it does to each layer before applying it.")
    d1, d2, _ = st.columns([1, 1, 4])
    d1.download_button("reinit_config.yaml", yaml_text, "reinit_config.yaml", "application/x-yaml", key="dl_yaml",
                       icon=":material/download:")
    d2.download_button("reinit_config.json", json_text, "reinit_config.json", "application/json", key="dl_json",
                       icon=":material/download:")
    touched, skipped = cfg.resolved_layers, cfg.skipped_layers
    t1, t2 = st.columns(2)
    t1.markdown(f"**Re-initialised ({len(touched)})**  \n" + (", ".join(f"`{n}`" for n in touched) or "none"))
    t2.markdown(f"**Selected but skipped ({len(skipped)})**  \n"
                + ("  \n".join(f"`{n}`: {why}" for n, why in skipped.items()) or "none"))
    st.code(yaml_text, language="yaml")
    setup = current.setup if current else state.DEFAULT_SETUP
    classes = current.data.num_classes if current else "N"
    st.markdown("**Apply it with the CLI** (writes the re-initialised weights; every word is shell-quoted):")
    st.code(views.shell(views.reinit_argv(setup, classes)), language="bash")
    st.markdown("**Or in your own training code**, before the optimizer is built (the exact setup of this session):")
    st.code(views.python_snippet(setup, classes), language="python")

st.subheader("Diagnosis")
if diagnosis is None:
    st.info("Run a diagnosis on Diagnose to export it.")
else:
    e1, e2, e3, _ = st.columns([1, 1, 1, 3])
    e1.download_button("diagnosis.csv", diagnosis.table.to_csv(index=False), "diagnosis.csv", "text/csv", key="dl_csv")
    e2.download_button("diagnosis.parquet", lambda: views.diagnosis_parquet(diagnosis), "diagnosis.parquet", "application/octet-stream", key="dl_parquet",
                       help="Long table, per-unit scores and metadata (metric versions); Diagnosis.load reads it back. "
                            "Written when you press the button.")
    e3.download_button("heatmap.html", lambda: views.heatmap_html(diagnosis), "heatmap.html", "text/html", key="dl_heatmap",
                       help="Interactive, self-contained (works offline). Rendered when you press the button.")
    st.caption("PNG: use the camera icon in any chart's toolbar (Plotly renders it in the browser).")
    tables.show(diagnosis.wide(), key="export_wide")
