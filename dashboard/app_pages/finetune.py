"""Fine-tune: baseline vs re-init arms over seeds, run in the background; live per-run progress and curves read
from the run folders; arms that would change nothing are refused before launch, with the reason."""
import pandas as pd
import streamlit as st

import plasticity_core as pc
from dashboard import forms, state, views
from plasticity_core.progress import run_progress
from plasticity_core.reinit import noop_reason

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
        noop = {arm: why for arm, c in arms.items() if (why := noop_reason(current.model, c, int(steps)))}
        refused = st.session_state.get("ft_refused") or {}
        noop |= {arm: why for arm, why in refused.get("arms", {}).items() if refused.get("for") == sorted(arms)}
        for arm, why in noop.items():
            st.error(f"Arm **{arm}** would change nothing: {why}", icon=":material/block:")
        anyway = st.checkbox("Launch anyway (the arms above will reproduce the baseline)", key="w_ft_anyway") if noop else False
        if st.button("Launch", type="primary", key="btn_launch", disabled=not arms or (bool(noop) and not anyway)):
            try:
                experiment = pc.ExperimentConfig(
                    name=name or default_name, backbone=setup["backbone"], arch=setup["arch"] or None,
                    pretrained=setup["pretrained"], data=setup["data"],
                    data_limit=int(limit) or None, arms=arms, seeds=list(range(int(seeds))),
                    finetune=pc.FinetuneConfig(steps=int(steps), batch_size=int(batch), lr=float(lr),
                                               image_size=int(setup["image_size"]), eval_every=int(eval_every),
                                               device=setup["device"], warmup_steps=min(10, int(steps) // 10)))
                if not anyway:  # the full check: each arm previewed on the loaded model and data (e.g. redo finding no dormant unit)
                    with st.spinner("Checking that every arm changes something…"):
                        found = pc.noop_arms(experiment, backbone=current.backbone, data=current.data)
                    if found:
                        st.session_state["ft_refused"] = {"for": sorted(arms), "arms": found}
                        st.rerun()
                handle = pc.start_run(experiment, store, executor=executor, allow_noop=True)
            except forms.errors() as e:
                st.error(state.message(e))
            else:
                st.session_state.pop("ft_refused", None)
                st.session_state["experiment"] = st.session_state["w_ft_experiment"] = handle.runs[0].experiment
                st.rerun()

experiments = store.experiments()
if not experiments:
    st.info("No runs yet.")
    st.stop()
active = [r.experiment for r in store.runs() if r.status in ("queued", "running")]
# after a browser reload the session is new: re-attach to a running experiment, else show the latest
default = st.session_state.get("experiment")
if default not in experiments:
    default = active[-1] if active else experiments[-1]
chosen = st.selectbox("Experiment", experiments[::-1], index=experiments[::-1].index(default), key="w_ft_experiment")
st.session_state["experiment"] = chosen


def _points(runs: list) -> pd.DataFrame:
    """Long table arm, seed, step, metric, value from the runs' eval and step events."""
    frames = []
    for r in runs:
        for kind, metrics in (("eval", ["val_acc", "val_loss"]), ("step", ["loss"])):
            df = r.curve(kind)
            present = [m for m in metrics if m in df.columns]
            if present:
                long = df.melt(id_vars="step", value_vars=present, var_name="metric")
                frames.append(long.assign(arm=r.arm, seed=r.seed, status=r.status))
    return pd.concat(frames) if frames else pd.DataFrame(columns=["arm", "seed", "step", "metric", "value", "status"])


def _progress_table(runs: list) -> pd.DataFrame:
    rows = []
    for r in runs:
        p = run_progress(r.events(), r.summary())
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


def _live_view() -> None:
    runs = store.runs(chosen)
    table = store.table(chosen)
    running = table["status"].isin(["queued", "running"]).any()
    if running and st.button("Stop", key="btn_stop", icon=":material/stop:"):
        for r in runs:
            r.request_stop()
        st.toast("Stop requested: the worker ends each run at its next step.")
    st.dataframe(_progress_table(runs), hide_index=True, key="progress_table", width="stretch", column_config={
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
        "val_acc": st.column_config.TextColumn("latest val acc",
                                               help="accuracy on the validation split at the latest evaluation"),
        "at step": st.column_config.TextColumn("at step", help="step of that evaluation (0 = before training)"),
        "ETA": st.column_config.TextColumn("ETA", help="time left at this run's pace so far"),
    })
    points = _points(runs)
    strategies = {r.arm: (r.config.arms[r.arm].strategy if r.config.arms[r.arm] is not None else "none") for r in runs}
    colours = views.arm_colours(list(dict.fromkeys(r.arm for r in runs)), strategies)
    total = max((r.config.finetune.steps for r in runs), default=None)
    if len(points):
        for column, (metric, title, pct) in zip(st.columns(2), [("val_acc", "Validation accuracy", True),
                                                               ("loss", "Training loss", False)]):
            if (points["metric"] == metric).any():
                column.plotly_chart(views.curves(points, metric, title, colours, percent=pct, total_steps=total),
                                    key=f"curve_{metric}")
            else:
                column.caption(f"{title}: waiting for the first value…")
    else:
        st.caption("Waiting for the first events…")
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


is_running = store.table(chosen)["status"].isin(["queued", "running"]).any()
st.fragment(_live_view, run_every=1.0 if is_running else None)()
