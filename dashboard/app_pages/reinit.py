"""Re-init: a strategy and its parameters (from the registry), the layers it touches, and a preview on a copy."""
import streamlit as st

import plasticity_core as pc
from dashboard import forms, state, views

st.title("Re-init")
current = state.require_loaded()

names = pc.STRATEGIES.names()
saved: pc.ReinitConfig | None = st.session_state.get("reinit_cfg")
default_strategy = st.session_state.get("reinit_strategy") or (saved.strategy if saved else names[0])
left, right = st.columns([1, 2])
with left:
    st.subheader("Strategy")
    strategy = st.selectbox("Strategy", names, index=names.index(default_strategy), key="w_strategy",
                            label_visibility="collapsed")
    info = pc.STRATEGIES.get(strategy)
    st.caption(info.definition)
    start = st.session_state.get("reinit_params") if st.session_state.get("reinit_strategy") == strategy else None
    params = forms.strategy_params(info, start or (saved.params if saved and saved.strategy == strategy else {}), "w_param")
    seed = st.number_input("Seed", 0, 2**31 - 1, saved.seed if saved else 0, key="w_reinit_seed")
    recalibrate = st.checkbox("Recalibrate BatchNorm on target data", value=True, key="w_recal")
with right:
    st.subheader("Layers")
    selected = st.session_state["selected_layers"]
    st.caption("fnmatch patterns over layer names, one per line; the Diagnose selection fills them in.")
    default_layers = "\n".join(selected or (saved.layers if saved else ["*"]))
    # the key follows the selection, so a new selection on Diagnose shows up here as the new default
    layers_text = st.text_area("Include", default_layers, height=140, key=f"w_layers_{hash(tuple(selected))}")
    exclude_text = st.text_area("Exclude", "\n".join(saved.exclude if saved else []), height=68, key="w_exclude")
    include = [p.strip() for p in layers_text.splitlines() if p.strip()]
    exclude = [p.strip() for p in exclude_text.splitlines() if p.strip()]
    sel = pc.select_layers(current.model, include, exclude, allow_grouped=info.allow_grouped,
                           allow_patch_embed=info.allow_patch_embed, kinds=info.kinds)
    st.caption(f"{len(sel.names)} layer(s) match: " + (", ".join(sel.names[:12]) + (" …" if len(sel.names) > 12 else "")))

if st.button("Preview", type="primary", key="btn_preview", disabled=not sel.names):
    diagnosis = st.session_state.get("diagnosis")
    try:
        cfg = pc.ReinitConfig(strategy=strategy, layers=include, exclude=exclude, params=params, seed=int(seed),
                              recalibrate_bn=recalibrate,
                              metric_versions=dict(diagnosis.meta["metric_versions"]) if diagnosis else {})
        with st.spinner("Re-initialising a copy of the model…"):
            report = pc.preview_reinit(current.model, cfg, data=current.data.loader("train", batch_size=32))
    except forms.errors() as e:
        st.error(f"{type(e).__name__}: {e}")
    else:
        cfg.resolved_layers = list(report.resolved_layers)
        st.session_state.update(reinit_cfg=cfg, preview=report)
        st.session_state.pop("reinit_strategy", None)
        st.session_state.pop("reinit_params", None)

report = st.session_state.get("preview")
if report is None:
    st.info("Press **Preview** to see what the re-init would do to each layer; the model itself is not touched.")
    st.stop()

s = report.summary()
st.subheader(f"Preview: {s['strategy']}")
m = st.columns(4)
m[0].metric("Layers touched", s["layers"])
m[1].metric("Units touched", s["units"])
m[2].metric("Weights touched", f"{s['weights']:,}")
m[3].metric("Skipped", s["skipped"])
for note in report.notes:
    st.caption(f"Note: {note}")
if len(report.table):
    st.plotly_chart(views.preview_chart(report.table), key="preview_chart")
    st.dataframe(report.table, hide_index=True, key="preview_table")
with st.expander(f"Skipped layers ({len(report.skipped)})"):
    st.dataframe(report.skipped, hide_index=True)
st.page_link("app_pages/finetune.py", label="Compare it against plain fine-tuning", icon=":material/show_chart:")
