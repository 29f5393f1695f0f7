"""Diagnose: per-layer metrics on the target data as a heatmap; select layers by clicking it or from a recommendation."""
import copy
import time

import streamlit as st

import plasticity_core as pc
from dashboard import checks, forms, state, tables, views
from plasticity_core import directions
from plasticity_core.metrics import ranking

st.title("Diagnose")
current = state.require_loaded()


# --- History: every diagnosis of this workspace is kept (<workspace>/diagnoses/), newest first ----------------------
def _history_dir():
    return state.workspace_dir(st.session_state["ws_restored"]) / "diagnoses"


def _keep(d: pc.Diagnosis) -> None:
    folder = _history_dir()
    folder.mkdir(parents=True, exist_ok=True)
    d.save(folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{len(list(folder.glob('*.parquet'))):03d}.parquet")


def _history() -> dict[str, pc.Diagnosis]:
    """label -> diagnosis, newest first (a file that does not read is named, not fatal)."""
    out = {}
    for path in sorted(_history_dir().glob("*.parquet"), reverse=True):
        try:
            d = pc.Diagnosis.load(path)
        except (OSError, ValueError) as e:
            st.caption(f"Earlier diagnosis {path.name} could not be read: {e}")
            continue
        m = d.meta
        stamp = path.stem[:15].replace("-", " ")
        note = m.get("note") or "loaded model"
        out[f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]} · {note} · "
            f"{len(d.metrics)} metrics · {m.get('samples', '?')} images"] = d
    return out

weights_pending = state.weight_metrics_pending(current.backbone)


def _weight_status() -> None:
    """The background weight metrics' line: redrawn every second while they compute, the page rerun once they end."""
    st.caption(state.weight_metrics_status(current.backbone))
    if weights_pending and not state.weight_metrics_pending(current.backbone):
        st.rerun()


st.fragment(_weight_status, run_every=1.0 if weights_pending else None)()
all_metrics = pc.METRICS.names()
with st.form("diagnose_form", border=False):
    c1, c2, c3 = st.columns([4, 1, 1])
    metrics = c1.multiselect("Metrics", all_metrics, default=st.session_state.get("diag_metrics", all_metrics),
                             format_func=lambda m: m, help="\n".join(f"- **{m}**: {pc.METRICS[m].definition}" for m in all_metrics))
    batches = c2.number_input("Probe batches", 1, 256, st.session_state.get("diag_batches", 4),
                              help="Batches of 32 validation images the activation and gradient metrics see.")
    run = c3.form_submit_button("Run diagnosis", type="primary", width="stretch")

if run:
    st.session_state.update(diag_metrics=metrics, diag_batches=int(batches))
    bar = st.progress(0.0, text="Weight metrics: finishing in the background…")
    state.wait_weight_metrics(current.backbone)
    bar.progress(0.0, text="Probing…")
    try:
        with state.model_lock(current.model):  # never two passes with hooks on the same model at once
            st.session_state["diagnosis"] = pc.diagnose(  # the val Dataset: the library's one probe order
                current.backbone, current.data.val, metrics=metrics or None,
                max_batches=int(batches), device=current.device,
                progress=lambda done, total: bar.progress(done / max(total, 1), text=f"Probe batch {done}/{total}"))
        st.session_state.pop("recommendation", None)
        _keep(st.session_state["diagnosis"])
    except forms.errors() as e:
        st.error(state.message(e))
    bar.empty()

diagnosis = st.session_state.get("diagnosis")
if diagnosis is None:
    st.info("Choose metrics and press **Run diagnosis**.")
    st.stop()

meta = diagnosis.meta
wide_all = diagnosis.wide()
folded = views.constant_columns(wide_all)
wide = wide_all.drop(columns=list(folded))
normalised = [m for m in views.WIDTH_NORMALISED if m in wide.columns]
head_words = (meta.get("head") or {}).get("text")
if head_words and any(pc.METRICS[m].needs == "gradients" for m in diagnosis.metrics):
    st.caption(f"Gradient metrics (grad_norm, grad_dormant) go through {head_words}: they measure the backbone as "
               "seen through that head, and change with it.")
st.caption(f"{meta['samples']} images in {meta['batches']} batches on {meta['device']}, {meta['seconds']:.1f} s. "
           "**Darker red = worse** for that metric (each column scaled between its 5th and 95th percentile layers, "
           "so one outlier does not set the scale); blue columns "
           "have no better or worse (norms, movement from the pretrained weights). Grey *n/a*: the metric does not "
           "apply to that layer (e.g. dormant/dead/saturation need an activation after the layer). "
           "Hover a cell for the value. **Click a cell** to select its layer; to select several, pick *Box Select* or "
           "*Lasso Select* in the chart's toolbar and drag over the rows.")
if meta.get("no_gradient"):
    st.caption(f"Gradient metrics are *n/a* for {len(meta['no_gradient'])} layer(s) whose output never joined the "
               f"autograd graph (run under no_grad or detached inside the model): {', '.join(meta['no_gradient'][:8])}"
               + (" ..." if len(meta["no_gradient"]) > 8 else ""))
if note := diagnosis.slow_path_note():
    st.caption(note)
if meta.get("uncovered"):
    st.caption("Not in the diagnosis (outside the layer map): "
               + "; ".join(f"`{n}`: {why}" for n, why in meta["uncovered"][:8]))
if normalised:
    st.caption("Coloured per unit of width (the hover shows the raw value and this one): "
               + "; ".join(f"**{m}**: {views.WIDTH_NORMALISED[m]}" for m in normalised) + ".")
if folded:
    st.caption("Not drawn (the same for every layer, nothing to compare): "
               + "; ".join(f"**{m}** {why}" for m, why in folded.items()) + ".")
with st.popover("What the metrics mean", icon=":material/help:"):
    st.markdown("\n".join(f"- **{m}** ({ {'high': 'higher is worse', 'low': 'lower is worse'}.get(directions.worse(m), 'no better/worse') }): "
                          f"{directions.plain(m) or pc.METRICS[m].definition}  \n  <small>{pc.METRICS[m].definition}</small>"
                          for m in diagnosis.metrics), unsafe_allow_html=True)
layers_meta = diagnosis.layers()
stages = {r["name"]: views.stage_of(r["group"]) for r in layers_meta.to_dict("records")}
order = diagnosis.layer_names
fig, cells = views.heatmap(wide, stages, {m: pc.METRICS[m].definition for m in diagnosis.metrics},
                           selected=st.session_state["selected_layers"],
                           worse={m: directions.worse(m) for m in wide.columns}, plain=directions.PLAIN,
                           colour_by=views.width_normalised(wide_all, layers_meta, meta.get("samples")))
rows = list(wide.index)


def _on_heatmap_select() -> None:
    picked = views.layers_from_selection(st.session_state["diag_heatmap"].selection, cells, rows)
    if picked:  # a redraw can report an empty selection; clearing is the button's job
        st.session_state["selected_layers"] = picked
        st.session_state["w_diag_selected"] = picked
        st.session_state["w_diag_focus"] = picked[0]  # the one-layer view follows (set, not dropped: the browser
        # would otherwise send its old value back with the next widget and flip the panel to it)


def _on_multiselect() -> None:
    st.session_state["selected_layers"] = st.session_state["w_diag_selected"]
    if st.session_state["selected_layers"]:
        st.session_state["w_diag_focus"] = st.session_state["selected_layers"][0]


left, right = st.columns([3, 2])
with left:
    st.plotly_chart(fig, key="diag_heatmap", on_select=_on_heatmap_select, selection_mode=("points", "box", "lasso"),
                    config={"displaylogo": False})
with right:
    st.subheader("Selected layers")
    st.session_state.setdefault("w_diag_selected", st.session_state["selected_layers"])
    st.multiselect("Layers to re-initialise", order, key="w_diag_selected", label_visibility="collapsed",
                   on_change=_on_multiselect)
    b1, b2, b3 = st.columns([2, 2, 2])
    budget = b1.number_input("Budget", 0.01, 1.0, 0.25, step=0.05, key="w_budget",
                             help="Fraction of the scored layers' weights the recommendation may re-initialise.")
    if b2.button("Recommend", key="btn_recommend", width="stretch"):
        rec = pc.fit_recommendation(diagnosis.recommend(budget=float(budget)), current.model)
        st.session_state["recommendation"] = rec
        st.session_state["selected_layers"] = list(rec.layers)
        st.session_state.pop("w_diag_selected", None)
        if rec.layers:
            st.session_state["w_diag_focus"] = rec.layers[0]
            state.adopt_config(current.model, rec.to_config(seed=state.reinit_seed()), diagnosis)
        st.rerun()
    if b3.button("Clear", key="btn_clear", width="stretch"):
        st.session_state["selected_layers"] = []
        st.session_state.pop("w_diag_selected", None)
        st.rerun()
    rec = st.session_state.get("recommendation")
    if rec:
        st.success(f"**Recommendation: {rec.strategy}** {rec.params or ''} on {len(rec.layers)} layers  \n{rec.reason}"
                   + ("  \nRe-init, Export and Fine-tune now hold this config (strategy, parameters, layers, seed)."
                      if rec.layers else ""))
    if st.session_state["selected_layers"]:
        strategy = forms.strategy_picker("w_diag_strategy", label="Strategy to check the selection against")
        checks.selection_check(current.model, strategy, st.session_state["selected_layers"], key="diag",
                               recommended=rec.strategy if rec and set(rec.layers) != set(st.session_state["selected_layers"]) else None)

    st.subheader("One layer")
    if st.session_state.get("w_diag_focus") not in order:  # the value lives in the key only (no index=): one source
        st.session_state["w_diag_focus"] = (st.session_state["selected_layers"] or order)[0]
    focus = st.selectbox("Layer", order, key="w_diag_focus")
    unit_metrics = [m for (l, m) in diagnosis.unit_keys() if l == focus]
    if unit_metrics:
        metric = st.radio("Unit score", unit_metrics, horizontal=True, key="w_diag_unit_metric")
        tau = meta.get("metric_params", {}).get(metric, {}).get("tau")
        st.plotly_chart(views.unit_histogram(diagnosis.units(focus, metric), focus, metric, tau), key="diag_hist")
    else:
        st.caption("No per-unit scores for this layer (no activation metrics requested, or no activation after it).")
    tables.show(wide_all.loc[[focus]].T.rename(columns={focus: "value"}), key="diag_focus_values")

# --- Rank layers by a metric (top k), and compare with an earlier diagnosis of this workspace -----------------------
st.subheader("Top layers by a metric")
t1, t2, t3 = st.columns([2, 1, 3])
rankable = list(wide_all.columns)
first = next((i for i, m in enumerate(rankable) if directions.worse(m) and m not in folded), 0)  # a metric with a worse side
rank_metric = t1.selectbox("Metric to rank by", rankable, index=first, key="w_diag_rank_metric",
                           help="Worst first: highest for higher-is-worse metrics, lowest for lower-is-worse ones, "
                                "highest for metrics with no direction.")
k = t2.number_input("k", 1, max(1, len(wide_all)), min(10, len(wide_all)), key="w_diag_top_k")
direction = {"high": "higher is worse", "low": "lower is worse"}.get(directions.worse(rank_metric), "no better/worse: highest first")
t3.caption(f"**{rank_metric}**: {direction}. {directions.plain(rank_metric)}")
st.dataframe(ranking.top_layers(wide_all, rank_metric, int(k)), hide_index=True, key="diag_top_k",
             column_config={"value": st.column_config.NumberColumn(rank_metric, format="%.4g")})

history = _history()
st.subheader("Compare with an earlier diagnosis")
cfg = st.session_state.get("reinit_cfg")
if cfg is not None and st.button(f"Diagnose after the previewed {cfg.strategy} re-init", key="btn_diag_after_reinit",
                                 help="Re-initialises a copy of the loaded model with the Re-init page's config (BatchNorm "
                                      "recalibrated), diagnoses it with the same metrics and probe batches and keeps it "
                                      "here as 'after'; the loaded model and the diagnosis above are not changed."):
    with st.spinner(f"Re-initialising a copy ({cfg.strategy}) and diagnosing it…"):
        try:
            after_model = copy.deepcopy(current.model)
            pc.apply_reinit(after_model, cfg, data=current.data.loader("train", batch_size=32))
            d = pc.diagnose(after_model, current.data.loader("val", batch_size=32, shuffle=False),
                            reference={k: v.detach().clone() for k, v in current.model.state_dict().items()},
                            metrics=list(diagnosis.metrics), max_batches=int(meta.get("batches") or 4),
                            device=current.device)
            d.meta["note"] = f"after {cfg.strategy} re-init of {len(cfg.resolved_layers or cfg.layers)} layer(s)"
            _keep(d)
            del after_model
        except forms.errors() as e:
            st.error(state.message(e))
    history = _history()
labels = list(history)
if len(labels) < 2:
    st.caption("Every diagnosis run here is kept with this workspace; run another one (e.g. after changing the "
               "model or the probe) to compare the two layer by layer.")
else:
    h1, h2, h3 = st.columns([3, 3, 2])
    before_label = h1.selectbox("Before", labels, index=1, key="w_diag_hist_before")
    after_label = h2.selectbox("After", labels, index=0, key="w_diag_hist_after")
    before, after = history[before_label].wide(), history[after_label].wide()
    shared = [m for m in after.columns if m in before.columns]
    if not shared:
        st.warning("These two diagnoses have no metric in common.")
    else:
        metric = h3.selectbox("Metric", shared, key="w_diag_hist_metric")
        change = ranking.diagnosis_change(before, after, metric)
        st.dataframe(change, hide_index=True, key="diag_history_change", column_config={
            c: st.column_config.NumberColumn(c, format="%.4g") for c in ("before", "after", "change")})
        st.caption(f"{metric} per layer, after − before ({int(change['change'].notna().sum())} layers in both); "
                   "click a header to sort.")

st.subheader("Layer table")
f1, f2, f3 = st.columns([2, 2, 2])
name_filter = f1.text_input("Name contains", key="w_diag_filter")
kinds = f2.multiselect("Kinds", sorted(layers_meta["kind"].unique()), key="w_diag_kinds")
stage_filter = f3.multiselect("Stages", list(dict.fromkeys(stages.values())), key="w_diag_stages")
table = layers_meta[["name", "kind", "group", "units", "params", "act_type"]].merge(
    diagnosis.wide(), left_on="name", right_index=True, how="left")
table.insert(2, "stage", table["name"].map(stages))
if name_filter:
    table = table[table["name"].str.contains(name_filter, regex=False)]
if kinds:
    table = table[table["kind"].isin(kinds)]
if stage_filter:
    table = table[table["stage"].isin(stage_filter)]
tables.show(table, key="diag_table", hide_index=True)

