"""Fine-tune: baseline vs re-init arms over seeds, run in a background worker; curves poll the run folders live."""
import pandas as pd
import streamlit as st

import plasticity_core as pc
from dashboard import forms, state, views

st.title("Fine-tune")
store = pc.RunStore(state.runs_root())
current = state.loaded()
cfg: pc.ReinitConfig | None = st.session_state.get("reinit_cfg")

with st.expander("New experiment", expanded="experiment" not in st.session_state):
    if current is None:
        st.info("Load a backbone and a dataset on Setup to launch runs; past runs are listed below.")
    else:
        setup = current.setup
        st.caption(f"`{setup['backbone']}` on `{setup['data']}` at {setup['image_size']} px, device {setup['device']}. "
                   "Every arm starts from the same pretrained weights and sees the same batches per seed.")
        a1, a2 = st.columns([1, 2])
        baseline = a1.checkbox("Baseline (plain fine-tuning)", value=True, key="w_ft_baseline")
        own = a1.checkbox(f"Re-init arm: {cfg.strategy}" if cfg else "Re-init arm (preview one on Re-init first)",
                          value=cfg is not None, disabled=cfg is None, key="w_ft_own")
        others = a2.multiselect("Also compare (default parameters, same layers)",
                                [n for n in pc.STRATEGIES.names() if cfg is None or n != cfg.strategy],
                                disabled=cfg is None, key="w_ft_others")
        c = st.columns(6)
        seeds = c[0].number_input("Seeds", 1, 10, 1, key="w_ft_seeds")
        steps = c[1].number_input("Steps", 1, 100_000, 100, step=10, key="w_ft_steps")
        batch = c[2].number_input("Batch size", 1, 4096, 32, step=8, key="w_ft_batch")
        lr = c[3].number_input("Learning rate", 1e-6, 10.0, 0.01, format="%.4g", key="w_ft_lr")
        eval_every = c[4].number_input("Eval every", 1, 10_000, 10, key="w_ft_eval")
        limit = c[5].number_input("Data limit (0 = all)", 0, 10_000_000, int(setup["limit"]), step=100, key="w_ft_limit")
        arms = {"baseline": None} if baseline else {}
        if cfg is not None and own:
            arms[cfg.strategy] = cfg
        for name in others:
            arms[name] = pc.ReinitConfig(strategy=name, layers=cfg.layers, exclude=cfg.exclude, seed=cfg.seed)
        if st.button("Launch", type="primary", key="btn_launch", disabled=not arms):
            try:
                experiment = pc.ExperimentConfig(
                    name="dashboard", backbone=setup["backbone"], arch=setup["arch"] or None, pretrained=setup["pretrained"],
                    data=setup["data"],
                    data_limit=int(limit) or None, arms=arms, seeds=list(range(int(seeds))),
                    finetune=pc.FinetuneConfig(steps=int(steps), batch_size=int(batch), lr=float(lr),
                                               image_size=int(setup["image_size"]), eval_every=int(eval_every),
                                               device=setup["device"], warmup_steps=min(10, int(steps) // 10)))
                handle = pc.start_run(experiment, store)
            except forms.errors() as e:
                st.error(f"{type(e).__name__}: {e}")
            else:
                st.session_state["experiment"] = st.session_state["w_ft_experiment"] = handle.runs[0].experiment
                st.rerun()

experiments = store.experiments()
if not experiments:
    st.info("No runs yet.")
    st.stop()
active = [r.experiment for r in store.runs() if r.status in ("queued", "running")]
# after a browser reload the session is new: re-attach to a running experiment, else show the latest
default = st.session_state.get("experiment") or (active[-1] if active else experiments[-1])
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
                frames.append(long.assign(arm=r.arm, seed=r.seed))
    return pd.concat(frames) if frames else pd.DataFrame(columns=["arm", "seed", "step", "metric", "value"])


def _live_view() -> None:
    runs = store.runs(chosen)
    table = store.table(chosen)
    running = table["status"].isin(["queued", "running"]).any()
    if running and st.button("Stop", key="btn_stop", icon=":material/stop:"):
        for r in runs:
            r.request_stop()
        st.toast("Stop requested: the worker ends each run at its next step.")
    points = _points(runs)
    if len(points):
        for column, (metric, title) in zip(st.columns(2), [("val_acc", "Validation accuracy"), ("loss", "Training loss")]):
            if (points["metric"] == metric).any():
                column.plotly_chart(views.curves(points, metric, title), key=f"curve_{metric}")
            else:
                column.caption(f"{title}: waiting for the first value…")
    else:
        st.caption("Waiting for the first events…")
    st.dataframe(table.drop(columns=["experiment", "path"]), hide_index=True, key="runs_table")
    if not running:
        if st.session_state.get("was_running"):
            st.session_state["was_running"] = False
            st.rerun(scope="app")  # stop polling
        st.subheader("Comparison")
        st.dataframe(pc.compare_runs(runs)[["arm", "strategy", "n_seeds", "n_failed", "final_acc", "best_acc",
                                           "steps_to_target", "reached_target", "wall_time_s_mean"]],
                     hide_index=True, key="compare_table")
    st.session_state["was_running"] = running


is_running = store.table(chosen)["status"].isin(["queued", "running"]).any()
st.fragment(_live_view, run_every=1.0 if is_running else None)()
