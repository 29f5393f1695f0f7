"""Fine-tune: baseline vs re-init arms over seeds, run in the background; live per-run progress and curves read
from the run folders; arms that would change nothing are refused before launch, with the reason."""
import pandas as pd
import streamlit as st

import plasticity_core as pc
from dashboard import charts, forms, state, views
from plasticity_core.train.events import ACTIVE, run_progress
from plasticity_core.reinit import noop_reason
from plasticity_core.runs import frames
from plasticity_core.runs.interrupt import resume_problem

st.title("Fine-tune")
store = pc.RunStore(state.runs_root())
current = state.loaded()
cfg: pc.ReinitConfig | None = st.session_state.get("reinit_cfg")
kept = forms.kept  # widgets start from the values this workspace last had (they survive page switches and reloads)

COMPARE_HELP = {
    "arm": "the arm's name: baseline = plain fine-tuning; otherwise the re-init strategy applied before it",
    "runs": "how the arm's runs ended; a stopped or failed run is flagged because its numbers are not comparable",
    "n_seeds": "finished seeds (only these enter the means and the target; stopped, failed and running runs are "
               "listed under 'runs' and drawn dashed, apart from the mean)",
    "final_acc": "validation accuracy at the last evaluation, in %, mean ± sample std over seeds",
    "best_acc": "best validation accuracy over the run, in %, mean ± std over seeds",
    "steps_to_target": "first evaluated step at which accuracy reached 90 % of the baseline's best accuracy "
                       "(mean over the seeds that reached it; 'never' if none did). Lower = adapts faster",
    "reached_target": "seeds that reached that target / seeds",
    "target_acc": "the target: 90 % of the baseline's mean best accuracy",
    "wall_time_s_mean": "wall-clock seconds per run, mean over seeds",
}

# --- Per-layer snapshots taken by launches from this page (shown under "Layers over training") ---------------------
SNAPSHOT_METRICS = ["dormant", "dead", "saturation", "sfe_rel", "dfi_si", "feature_erank"]
SNAPSHOTS_PER_RUN = 10
SNAPSHOT_MIN_GAP = 10  # steps: one snapshot costs about what 0.4 training steps cost (benchmarks/snapshot_overhead.py)


def _snapshot_settings(steps: int) -> dict:
    """FinetuneConfig fields for the per-layer snapshots (on by default: at most SNAPSHOTS_PER_RUN per run and at least
    SNAPSHOT_MIN_GAP steps apart, on 2 probe batches of the validation split, the cheap metrics only: a few % of the
    run's time)."""
    on = st.checkbox("Per-layer snapshots", value=kept("w_ft_snapshots", True), key="w_ft_snapshots",
                     help=f"Every steps/{SNAPSHOTS_PER_RUN} steps (at least {SNAPSHOT_MIN_GAP} apart), {', '.join(SNAPSHOT_METRICS)} per layer on 2 "
                          "validation batches, so the page can show how each layer's plasticity moves while the run "
                          "trains (measured cost: see README).")
    every = max(SNAPSHOT_MIN_GAP, steps // SNAPSHOTS_PER_RUN)
    if on:
        st.caption(f"A per-layer snapshot every {every} steps ({steps // every} per run)." if steps >= every else
                   f"No per-layer snapshot in a run of {steps} steps (at least {every} steps apart, to keep their "
                   "cost at a few % of the run).")
    return {"diagnose_every": every if on else 0, "diagnose_metrics": list(SNAPSHOT_METRICS)}


def _experiment_label(experiment: str, mine: bool) -> str:
    """The picker's words: the experiment, its backbone and data, and whose it is."""
    labels = st.session_state.setdefault("experiment_labels", {})
    if experiment not in labels:
        try:
            cfg = store.runs(experiment)[0].config
            labels[experiment] = f"{cfg.backbone} on {cfg.data}"
        except Exception:  # noqa: BLE001 - a broken folder still gets a name in the list
            labels[experiment] = "config unreadable"
    return f"{experiment} · {labels[experiment]}" + (" · this workspace" if mine else "")


def _seconds_per_step(setup: dict, batch: int) -> float | None:
    """Seconds per step of the latest finished run in this store with the same backbone, data, image size and batch."""
    try:
        for r in reversed(store.runs()):
            cfg = r.config
            if (r.status == "finished" and cfg.backbone == setup["backbone"] and cfg.data == setup["data"]
                    and cfg.finetune.image_size == int(setup["image_size"]) and cfg.finetune.batch_size == batch):
                wall = r.summary().get("wall_time_s")
                if wall:
                    return float(wall) / max(cfg.finetune.steps, 1)
    except Exception:  # noqa: BLE001 - an estimate only
        return None
    return None


with st.expander("New experiment", expanded="experiment" not in st.session_state):
    if current is None:
        st.info("Load a backbone and a dataset on Setup to launch runs; past runs are listed below.")
    else:
        setup = current.setup
        st.caption(f"`{setup['backbone']}` on `{setup['data']}` at {setup['image_size']} px, device {setup['device']}. "
                   "Every arm starts from the same pretrained weights and sees the same batches per seed.")
        a1, a2 = st.columns([1, 2])
        baseline = a1.checkbox("Baseline (plain fine-tuning)", value=kept("w_ft_baseline", True), key="w_ft_baseline")
        own = a1.checkbox(f"Re-init arm: {cfg.strategy}" if cfg else "Re-init arm (preview one on Re-init first)",
                          value=cfg is not None, disabled=cfg is None, key="w_ft_own")
        choices = [n for n in pc.STRATEGIES.names() if cfg is None or n != cfg.strategy]
        others = a2.multiselect("Also compare (default parameters, same layers)", choices,
                                default=[o for o in kept("w_ft_others", []) if o in choices], disabled=cfg is None,
                                key="w_ft_others")
        c = st.columns(6)
        seeds = c[0].number_input("Seeds", 1, 10, kept("w_ft_seeds", 1), key="w_ft_seeds")
        steps = c[1].number_input("Steps", 1, 100_000, kept("w_ft_steps", 100), step=10, key="w_ft_steps")
        batch = c[2].number_input("Batch size", 1, 4096, kept("w_ft_batch", 32), step=8, key="w_ft_batch")
        lr = c[3].number_input("Learning rate", 1e-6, 10.0, kept("w_ft_lr", 0.01), format="%.4g", key="w_ft_lr")
        eval_every = c[4].number_input("Eval every", 1, 10_000, kept("w_ft_eval", 10), key="w_ft_eval")
        limit = c[5].number_input("Data limit (0 = all)", 0, 10_000_000, kept("w_ft_limit", int(setup["limit"])), step=100,
                                  key="w_ft_limit")
        arms = {"baseline": None} if baseline else {}
        if cfg is not None and own:
            arms[cfg.strategy] = cfg
        for name in others:
            params = pc.STRATEGIES.get(name).params_for_run(int(steps))  # e.g. cbp: maturity a tenth of the steps
            arms[name] = pc.ReinitConfig(strategy=name, layers=cfg.layers, exclude=cfg.exclude, seed=cfg.seed, params=params)
            if params:
                defaults = pc.STRATEGIES.get(name).defaults()
                st.caption(f"{name} compared with " + ", ".join(f"{k} = {v} (default {defaults.get(k)})"
                                                               for k, v in params.items())
                           + f" for a run of {int(steps)} steps: with its defaults it would do nothing in a short run.")
        snapshots = _snapshot_settings(int(steps))
        default_name = "-vs-".join(arms) or "experiment"
        n1, n2 = st.columns([2, 1])
        name = n1.text_input("Experiment name", value=kept("w_ft_name", default_name), key="w_ft_name",
                             help="Names the experiment's folder (a timestamp is appended, so names can repeat).",
                             on_change=lambda: st.session_state["form"].update(w_ft_name=st.session_state["w_ft_name"]))
        executors, missing = forms.executors()
        executor = n2.selectbox("Run on", list(executors), format_func=executors.get, key="w_ft_executor",
                                index=list(executors).index(kept("w_ft_executor", "process")) if kept("w_ft_executor", "process") in executors else 0)
        if missing:
            n2.caption("Not installed here: " + "; ".join(missing.values()))
        n_runs = len(arms) * int(seeds)
        parallel = n2.number_input("Runs at once", 1, 64, min(kept("w_ft_parallel", 1), max(n_runs, 1)),
                                   key="w_ft_parallel", help="How many runs go at the same time (process pool size, "
                                   "Ray tasks in flight, Slurm array parallelism). Each run takes one device's share.")
        st.caption(views.launch_plan(n_runs, int(parallel), int(steps), _seconds_per_step(setup, int(batch))))
        noop = {arm: why for arm, c in arms.items() if (why := noop_reason(current.model, c, int(steps)))}
        refused = st.session_state.get("ft_refused") or {}
        noop |= {arm: why for arm, why in refused.get("arms", {}).items() if refused.get("for") == sorted(arms)}
        for arm, why in noop.items():
            st.error(f"Arm **{arm}** would change nothing: {why}", icon=":material/block:")
        anyway = st.checkbox("Launch anyway (the arms above will reproduce the baseline)", key="w_ft_anyway") if noop else False
        full_check = st.checkbox("Full no-op check (score units on every probe batch, not one)", key="w_ft_full_check",
                                 help="The quick check scores each arm's units on one batch and re-checks, on all batches, "
                                      "only an arm that touches nothing there.")
        if st.button("Launch", type="primary", key="btn_launch", disabled=not arms or (bool(noop) and not anyway)):
            try:
                experiment = pc.ExperimentConfig(
                    name=name or default_name, backbone=setup["backbone"], arch=setup["arch"] or None,
                    pretrained=setup["pretrained"], data=setup["data"],
                    data_limit=int(limit) or None, arms=arms, seeds=list(range(int(seeds))),
                    finetune=pc.FinetuneConfig(steps=int(steps), batch_size=int(batch), lr=float(lr),
                                               image_size=int(setup["image_size"]), eval_every=int(eval_every),
                                               device=setup["device"], warmup_steps=min(10, int(steps) // 10),
                                               **snapshots))
                if not anyway:  # each arm previewed on one batch of the loaded data (e.g. redo finding no dormant unit)
                    bar = st.progress(0.0, text="Checking that every arm changes something…")
                    found = pc.noop_arms(experiment, backbone=current.backbone, data=current.data, quick=not full_check,
                                         progress=lambda done, total: bar.progress(
                                             done / total, text=f"Checking that every arm changes something: {done}/{total} arms"))
                    bar.empty()
                    if found:
                        st.session_state["ft_refused"] = {"for": sorted(arms), "arms": found}
                        st.rerun()
                handle = pc.start_run(experiment, store, executor=executor, parallel=int(parallel), allow_noop=True)
            except forms.errors() as e:
                st.error(state.message(e))
            else:
                st.session_state.pop("ft_refused", None)
                st.session_state["experiment"] = st.session_state["w_ft_experiment"] = handle.runs[0].experiment
                st.session_state.setdefault("my_experiments", []).append(handle.runs[0].experiment)
                st.rerun()

experiments = store.experiments()
if not experiments:
    st.info("No runs yet.")
    st.stop()
active = [r.experiment for r in store.runs() if r.status in ACTIVE]
# after a browser reload the session is new: re-attach to a running experiment, else show the latest
default = st.session_state.get("experiment")
if default not in experiments:
    default = active[-1] if active else experiments[-1]
mine = [e for e in st.session_state.get("my_experiments", []) if e in experiments]
ordered = mine[::-1] + [e for e in experiments[::-1] if e not in mine]  # this workspace's first, newest first
chosen = st.selectbox("Experiment", ordered, index=ordered.index(default), key="w_ft_experiment",
                      format_func=lambda e: _experiment_label(e, e in mine),
                      help="This workspace's experiments first; the others in the runs folder (other tabs, the CLI, "
                           "other users of this folder) after them.")
st.session_state["experiment"] = chosen


def _progress_table(runs: list, polled: list) -> pd.DataFrame:
    rows = []
    for r, f in zip(runs, polled):  # the events read so far (this tick's poll read only the new bytes)
        p = run_progress(f.events, r.summary())
        rows.append({"arm": r.arm, "seed": r.seed, "status": p["status"],
                     "progress": p["fraction"], "step": f"{p['step']}/{p['total'] or '?'}",
                     "val_acc": "–" if p["val_acc"] is None else f"{100 * p['val_acc']:.1f} %",
                     "at step": "–" if p["val_acc_step"] is None else str(p["val_acc_step"]),
                     "elapsed": _duration(p["elapsed_s"]),
                     "ETA": _duration(p["eta_s"]) if p["eta_s"] is not None else ("done" if p["status"] in ("finished",) else "–"),
                     "reason": r.summary().get("reason", "")})
    return pd.DataFrame(rows)


def _pct(mean: float, std: float, n: int) -> str:
    if mean != mean:  # NaN: no seed with an evaluation
        return "n/a"
    return f"{100 * mean:.1f} ± {100 * std:.1f} %" if n > 1 and std == std else f"{100 * mean:.1f} % (1 seed)"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


# --- Run views (curves, per-layer snapshots over training, run table): tables from plasticity_core.runs.frames,
# read incrementally (one poll per run per tick), figures from dashboard.charts ---------------------------------
PANELS = [("val_acc", "Validation accuracy", True), ("loss", "Training loss", False),
          ("val_loss", "Validation loss", False), ("lr", "Learning rate", False), ("images_per_s", "Images / s", False)]
SNAPSHOT_ORDER = ["dormant", "dead", "saturation", "sfe_rel", "sfe", "dfi_si", "dfi", "feature_erank"]


@st.cache_resource
def _frame_cache() -> frames.FrameCache:
    return frames.FrameCache()  # one per server process: each run folder is parsed once, then only its new bytes


def _comparable_runs(runs: list) -> list:
    """Runs of other experiments of this store the user added, when their setup matches (else the reason is shown)."""
    others = [e for e in experiments if e != chosen]
    also = st.multiselect("Also show runs of", others, default=[e for e in kept("w_ft_also", []) if e in others],
                          key="w_ft_also", help="Other experiments in this store; their runs join the curves and the "
                                                "run table when backbone, data and fine-tune settings match.")
    extra = []
    for exp in also:
        theirs = store.runs(exp)
        why = frames.setup_differences(runs[0].config, theirs[0].config) if runs and theirs else ["no runs"]
        if why:
            st.warning(f"**{exp}** is not shown: its setup differs ({'; '.join(why)}).")
        else:
            extra += theirs
    return extra


def _label(run, multi: bool) -> str:
    return f"{run.arm} [{run.experiment}]" if multi and run.experiment != chosen else run.arm


def _run_views(runs: list, polled: list) -> None:
    extra = _comparable_runs(runs)
    shown = runs + extra
    polled = polled + _frame_cache().poll(r.path for r in extra)
    shown = [f.run for f in polled]
    labels = [_label(r, bool(extra)) for r in shown]
    strategies = {lab: (r.config.arms[r.arm].strategy if r.config.arms[r.arm] is not None else "none")
                  for lab, r in zip(labels, shown)}
    colours = views.arm_colours(list(dict.fromkeys(labels)), strategies)
    tab_curves, tab_layers, tab_table = st.tabs(["Curves", "Layers over training", "Run table"])
    with tab_curves:
        _curves(shown, labels, polled, colours)
    with tab_layers:
        _snapshots(runs, polled[:len(runs)])
    with tab_table:
        _table(shown)


def _curve_figures(paths: tuple, versions: tuple, labels: tuple, statuses: tuple, smoothing: float, x: str,
                   log_y: bool, per_seed: bool, colours: tuple, polled: list) -> dict:
    """metric -> (figure, plotted points), rebuilt only when a run got new events or an option changed (a tick with
    nothing new reuses this session's figures)."""
    key = (paths, versions, labels, statuses, smoothing, x, log_y, per_seed, colours)
    memo = st.session_state.get("_ft_curve_figures")
    if memo and memo[0] == key:
        return memo[1]
    built = {}
    for metric, title, pct in PANELS:
        points = frames.curve_points([(lab, f.run.seed, f.series(metric), status)
                                      for lab, f, status in zip(labels, polled, statuses)], smoothing)
        if len(points):
            built[metric] = (charts.curve_figure(points, frames.mean_band(points), metric, title, dict(colours), x=x,
                                                 per_seed=per_seed, log_y=log_y, percent=pct, smoothing=smoothing), points)
    st.session_state["_ft_curve_figures"] = (key, built)
    return built


def _curves(shown: list, labels: list[str], polled: list, colours: dict) -> None:
    c = st.columns([3, 2, 1, 1])
    smoothing = c[0].slider("Smoothing", 0.0, 0.99, kept("w_ft_smooth", 0.6), 0.01, key="w_ft_smooth",
                            help="TensorBoard's smoothing: an exponential moving average with its debias term, per "
                                 "run; the raw values stay faint behind. 0 = raw.")
    x = c[1].radio("x axis", ["step", "time"], horizontal=True, key="w_ft_x",
                   index=["step", "time"].index(kept("w_ft_x", "step")),
                   format_func={"step": "step", "time": "relative time"}.get,
                   help="Relative time: seconds since the run's first event (its worker started it).")
    log_y = c[2].toggle("log y", value=kept("w_ft_logy", False), key="w_ft_logy")
    per_seed = c[3].toggle("per seed", value=kept("w_ft_per_seed", False), key="w_ft_per_seed",
                           help="One line per seed instead of the mean over seeds with a min-max band.")
    built = _curve_figures(tuple(str(f.path) for f in polled), tuple(f.version for f in polled), tuple(labels),
                           tuple(f.run.status for f in polled), smoothing, x, log_y, per_seed, tuple(colours.items()), polled)
    tables, cells = [], iter(st.columns(2) + st.columns(3))
    for metric, title, _ in PANELS:
        cell = next(cells)
        if metric not in built:
            cell.caption(f"{title}: no value yet.")
            continue
        fig, points = built[metric]
        cell.plotly_chart(fig, key=f"curve_{metric}")
        tables.append(points.assign(metric=metric))
    if not tables:
        st.caption("Waiting for the first events…")
        return
    plotted = pd.concat(tables, ignore_index=True)[["arm", "seed", "metric", "step", "time", "value", "smoothed"]]
    d1, d2, d3 = st.columns([1, 1, 4])
    d1.download_button("CSV", lambda: plotted.to_csv(index=False), f"{chosen}-curves.csv", "text/csv",
                       key="dl_curves_csv", icon=":material/download:", help="The plotted points: raw and smoothed.")
    d2.download_button("Parquet", lambda: plotted.to_parquet(index=False), f"{chosen}-curves.parquet",
                       "application/octet-stream", key="dl_curves_parquet", icon=":material/download:")
    tb = [p for r in shown for p in r.path.glob("**/events.out.tfevents.*")]
    d3.code(charts.tensorboard_line(str(store.root)), language="bash")
    if not tb:
        d3.caption("No TensorBoard event files in these runs yet (the tensorboard sink needs the `tensorboard` package).")


def _snapshots(runs: list, polled: list) -> None:
    snaps = [(r, f.snapshots(), f) for r, f in zip(runs, polled)]
    snaps = [(r, s, f) for r, s, f in snaps if len(s)]
    if not snaps:
        st.info("No per-layer snapshots in these runs: launches from this page take them (FinetuneConfig."
                "diagnose_every); the CLI and the integrations record them when asked.")
        return
    present = set().union(*(set(s["metric"]) for _, s, _ in snaps))
    metrics = [m for m in SNAPSHOT_ORDER if m in present] + sorted(present - set(SNAPSHOT_ORDER))
    c = st.columns([2, 1, 3])
    metric = c[0].selectbox("Metric", metrics, key="w_ft_snap_metric",
                            index=metrics.index(kept("w_ft_snap_metric", metrics[0])) if kept("w_ft_snap_metric", metrics[0]) in metrics else 0,
                            help="\n".join(f"- **{m}**: {pc.METRICS[m].definition}" for m in metrics if m in pc.METRICS))
    seeds = sorted({r.seed for r, _, _ in snaps})
    seed = c[1].selectbox("Seed", seeds, key="w_ft_snap_seed")
    c[2].caption("Rows: layers in network order (● = re-initialised by the arm). Columns: the steps a snapshot was "
                 "taken at (on the validation split). Right: the arm minus the baseline of the same seed "
                 "(red = higher than baseline).")
    for arm, (fig, delta, note) in _snapshot_figures(metric, seed, snaps).items():
        left, right = st.columns(2)
        if fig is None:
            left.caption(note)
            continue
        left.plotly_chart(fig, key=f"snap_{arm}")
        if delta is None:
            right.caption(note)
        else:
            right.plotly_chart(delta, key=f"snap_delta_{arm}")


def _snapshot_figures(metric: str, seed: int, snaps: list) -> dict:
    """arm -> (heatmap, heatmap of arm - baseline or None, note) for one seed; rebuilt only when a snapshot arrived
    or the metric or seed changed."""
    mine = [(r, s, f) for r, s, f in snaps if r.seed == seed]
    key = (metric, seed, tuple((str(f.path), f.snapshot_version, tuple(f.reinit_layers)) for _, _, f in mine))
    memo = st.session_state.get("_ft_snapshot_figures")
    if memo and memo[0] == key:
        return memo[1]
    base = next((frames.snapshot_matrix(s, metric) for r, s, _ in mine if r.config.arms[r.arm] is None), pd.DataFrame())
    out = {}
    for r, s, f in mine:
        m = frames.snapshot_matrix(s, metric)
        if m.empty:
            out[r.arm] = (None, None, f"{r.arm}: no {metric} in its snapshots.")
            continue
        marked = set(f.reinit_layers)
        delta, note = None, "The baseline: the other arms are compared with it."
        if r.config.arms[r.arm] is not None:
            if base.empty:
                note = f"No baseline snapshots of seed {seed} to compare with."
            else:
                d = frames.snapshot_delta(m, base)
                d.index = [f"● {layer}" if layer in marked else layer for layer in d.index]
                delta = charts.snapshot_heatmap(d, f"{r.arm} − baseline · {metric}", diverging=True, colorbar="Δ")
        m.index = [f"● {layer}" if layer in marked else layer for layer in m.index]
        out[r.arm] = (charts.snapshot_heatmap(m, f"{r.arm} · {metric}", colorbar=metric), delta, note)
    st.session_state["_ft_snapshot_figures"] = (key, out)
    return out


def _table(shown: list) -> None:
    table = frames.run_table(shown)
    f1, f2 = st.columns([2, 2])
    text = f1.text_input("Filter runs (text in any column)", key="w_ft_run_filter")
    statuses = f2.multiselect("Status", sorted(table["status"].dropna().unique()), key="w_ft_run_status")
    if text:
        table = table[table.astype(str).apply(lambda col: col.str.contains(text, case=False, regex=False)).any(axis=1)]
    if statuses:
        table = table[table["status"].isin(statuses)]
    for col in ("final_acc", "best_acc"):
        table[col] = pd.to_numeric(table[col], errors="coerce") * 100
    st.dataframe(table, hide_index=True, key="run_table", width="stretch", column_config={
        "final_acc": st.column_config.NumberColumn("final_acc", format="%.1f %%", help="accuracy at the last evaluation"),
        "best_acc": st.column_config.NumberColumn("best_acc", format="%.1f %%", help="best evaluated accuracy"),
        "wall_time_s": st.column_config.NumberColumn("wall_time_s", format="%.1f s")})
    differ = [c for c in table.columns if "." in c or c in ("name",)]
    st.caption(f"{len(table)} runs. Columns after wall_time_s are the config fields that differ between these runs "
               f"({', '.join(differ) or 'none'}); click a header to sort.")
    st.download_button("Run table (CSV)", lambda: table.to_csv(index=False), f"{chosen}-runs.csv", "text/csv",
                       key="dl_run_table", icon=":material/download:")


def _resume_button(runs: list) -> None:
    """Resume the experiment's stopped, cancelled and failed runs from their last checkpoint (``pc.start_resume``)."""
    interrupted = [r for r in runs if resume_problem(r) is None]  # not runs of the user's own script (integrations)
    if interrupted and st.button(f"Resume {len(interrupted)} interrupted run{'s' * (len(interrupted) > 1)}",
                                 key="btn_resume", icon=":material/play_arrow:",
                                 help="continue each stopped, cancelled or failed run from its last checkpoint "
                                      "(finetune.checkpoint_every; from step 0 where there is none), as "
                                      "`plasticity finetune --resume` does"):
        try:
            pc.start_resume(interrupted, store)
        except forms.errors() as e:
            st.error(state.message(e))
        else:
            st.rerun(scope="app")


def _live_view() -> None:
    runs = store.runs(chosen)
    table = store.table(chosen)
    running = table["status"].isin(ACTIVE).any()
    if running:
        going = [r for r in runs if r.status in ACTIVE]
        s1, s2, s3 = st.columns([1, 2, 1])
        if s1.button("Stop all", key="btn_stop", icon=":material/stop:"):
            for r in going:
                r.request_stop()
            st.toast("Stop requested: the worker ends each run at its next step.")
        one = s2.selectbox("Run", [r.name for r in going], key="w_ft_stop_one", label_visibility="collapsed")
        if s3.button("Stop this run", key="btn_stop_one", disabled=one is None):
            next(r for r in going if r.name == one).request_stop()
            st.toast(f"Stop requested for {one}: it ends at its next step; the others go on.")
    if not running:
        _resume_button(runs)
    polled = _frame_cache().poll(r.path for r in runs)  # the one incremental read per run of this tick
    runs = [f.run for f in polled]  # the same Run objects tick after tick: each config is parsed once
    st.dataframe(_progress_table(runs, polled), hide_index=True, key="progress_table", width="stretch", column_config={
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
        "val_acc": st.column_config.TextColumn("latest val acc",
                                               help="accuracy on the validation split at the latest evaluation"),
        "at step": st.column_config.TextColumn("at step", help="step of that evaluation (0 = before training)"),
        "ETA": st.column_config.TextColumn("ETA", help="time left at this run's pace so far"),
    })
    _run_views(runs, polled)
    if not running:
        if st.session_state.get("was_running"):
            st.session_state["was_running"] = False
            st.rerun(scope="app")  # stop polling
        st.subheader("Comparison")
        compare = pc.compare_runs(runs)
        ended = table.groupby("arm")["status"].agg(lambda s: ", ".join(f"{n} {k}" for k, n in s.value_counts().items()))
        compare.insert(1, "runs", compare["arm"].map(ended))
        flagged = table[table["status"] != "finished"]
        if len(flagged):
            st.warning("Not comparable as is: " + "; ".join(
                f"{r.arm} seed {r.seed} {r.status} ({r.reason})" for r in flagged.itertuples()))
        compare["target_acc"] = compare["target_acc"] * 100
        for col in ("final_acc", "best_acc"):  # in %, like the curves and the progress table
            compare[col] = [_pct(m, s, n) for m, s, n in zip(compare[f"{col}_mean"], compare[f"{col}_std"], compare["n_seeds"])]
        st.dataframe(compare[["arm", "runs", "n_seeds", "final_acc", "best_acc", "steps_to_target", "reached_target",
                              "target_acc", "wall_time_s_mean"]],
                     hide_index=True, key="compare_table",
                     column_config={c: st.column_config.Column(c, help=h) for c, h in COMPARE_HELP.items()}
                     | {"target_acc": st.column_config.NumberColumn("target_acc", format="%.1f %%", help=COMPARE_HELP["target_acc"]),
                        "wall_time_s_mean": st.column_config.NumberColumn("wall_time_s_mean", format="%.1f s",
                                                                          help=COMPARE_HELP["wall_time_s_mean"])})
        st.caption(" · ".join(
            f"**{c}**: {h}" for c, h in COMPARE_HELP.items() if c in ("steps_to_target", "reached_target", "runs")))
    st.session_state["was_running"] = running


is_running = store.table(chosen)["status"].isin(ACTIVE).any()
st.fragment(_live_view, run_every=1.0 if is_running else None)()
