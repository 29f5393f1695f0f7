"""Re-init: a strategy and its parameters (from the registry), what it will do to each selected layer, and a
preview on a copy of the model."""
import streamlit as st

import plasticity_core as pc
from dashboard import checks, forms, state, tables, views

st.title("Re-init")
current = state.require_loaded()

saved: pc.ReinitConfig | None = st.session_state.get("reinit_cfg")
if "strategy" not in st.session_state and saved is not None:
    st.session_state["strategy"] = saved.strategy
left, right = st.columns([1, 2])
with left:
    st.subheader("Strategy")
    strategy = forms.strategy_picker("w_strategy")
    info = pc.STRATEGIES.get(strategy)
    st.caption(info.definition)
    start = checks.params_for(strategy) or (saved.params if saved and saved.strategy == strategy else {})
    params = forms.strategy_params(info, start, "w_param")
    st.session_state.setdefault("strategy_params", {})[strategy] = params
    seed = st.number_input("Seed", 0, 2**31 - 1, saved.seed if saved else 0, key="w_reinit_seed")
    recalibrate = st.checkbox("Recalibrate BatchNorm on target data", value=saved.recalibrate_bn if saved else True,
                              key="w_recal")
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

st.subheader(f"What {strategy} will do to the selected layers")
plan = checks.selection_check(current.model, strategy, include, exclude, key="reinit")
diagnosis = st.session_state.get("diagnosis")
cfg = None
if plan is not None:  # the form is the session's one config: Export and Fine-tune take exactly this
    try:
        cfg = state.adopt_config(current.model, pc.ReinitConfig(
            strategy=strategy, layers=include, exclude=exclude, params=params, seed=int(seed), recalibrate_bn=recalibrate),
            diagnosis, from_form=True)
    except forms.errors() as e:
        st.error(state.message(e))
if cfg is not None:
    st.caption(f"Seed {cfg.seed} draws the strategy's randomness; the unit scores go through the {current.data.num_classes}"
               f"-class head drawn from seed {cfg.head_seed} (Setup). Export and Fine-tune use this config as shown.")

if st.button("Preview", type="primary", key="btn_preview", disabled=cfg is None or not plan.touched,
             help=None if cfg is None or plan.touched else "The strategy acts on none of the selected layers."):
    try:
        bar = st.progress(0.0, text="Re-initialising a copy of the model…")
        with state.model_lock(current.model):
            report = pc.preview_reinit(current.model, cfg, data=current.data.train,  # the Dataset: the library's order
                                       progress=lambda what, done, total: bar.progress(
                                           min(1.0, done / max(total or done, 1)), text=f"Preview: {what} {done}/{total or '?'}"))
        bar.empty()
    except forms.errors() as e:
        st.error(state.message(e))
    else:
        cfg.resolved_layers = list(report.resolved_layers)
        cfg.skipped_layers = dict(zip(report.skipped["layer"], report.skipped["reason"]))
        st.session_state.update(reinit_cfg=cfg, preview=report, preview_for=state.config_key(cfg))

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
m[3].metric("Selected but skipped", s["skipped"])
for note in report.notes:
    st.caption(f"Note: {note}")
idle = report.table[report.table["units_touched"] == 0]["layer"].tolist() if len(report.table) else []
if idle and not pc.STRATEGIES.get(s["strategy"]).during_training:
    st.warning(f"{len(idle)} selected layer(s) had no unit meeting {s['strategy']}'s criterion on this data and are "
               f"unchanged: {', '.join(idle[:8])}{' …' if len(idle) > 8 else ''}")
if len(report.table):
    st.plotly_chart(views.preview_chart(report.table), key="preview_chart")
    tables.show(report.table, key="preview_table", hide_index=True)
if len(report.skipped):
    st.warning(f"{len(report.skipped)} selected layer(s) left alone by {s['strategy']}:")
    st.dataframe(report.skipped, hide_index=True, key="preview_skipped", width="stretch")
st.page_link("app_pages/finetune.py", label="Compare it against plain fine-tuning", icon=":material/show_chart:")
