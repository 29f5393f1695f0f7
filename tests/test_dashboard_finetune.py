"""Fine-tune page (AppTest): Launch starts background runs in folders, the page reads them back, Stop stops them."""
import plasticity_core as pc
from dashboard.testing import no_exception, previewed, tiny_app


def _previewed(tmp_path, monkeypatch):
    monkeypatch.setenv("PLASTICITY_RUNS", str(tmp_path))
    at = previewed(tiny_app(), "shrink_perturb", "layer3.*")
    at.switch_page("app_pages/finetune.py").run()
    no_exception(at)
    return at


def _launch(at, steps, eval_every=2, others=()):
    at.number_input(key="w_ft_steps").set_value(steps)
    at.number_input(key="w_ft_batch").set_value(8)
    at.number_input(key="w_ft_eval").set_value(eval_every)
    at.multiselect(key="w_ft_others").set_value(list(others))
    at.button(key="btn_launch").click().run()
    no_exception(at)
    return at.session_state["experiment"]


def test_launch_runs_two_arms_in_the_background_and_compares_them(tmp_path, monkeypatch):
    at = _previewed(tmp_path, monkeypatch)
    experiment = _launch(at, steps=10, eval_every=5)  # 10 steps: one per-layer snapshot (at least 10 steps apart)
    store = pc.RunStore(tmp_path)
    runs = store.runs(experiment)
    assert sorted(r.arm for r in runs) == ["baseline", "shrink_perturb"]
    assert runs[0].config.arms.get("shrink_perturb", runs[-1].config.arms.get("shrink_perturb")).layers == ["layer3.*"]
    assert pc.RunHandle.attach(runs[0].path).wait(timeout=240)
    assert {r.status for r in runs} == {"finished"}, store.table(experiment)[["run", "status", "reason"]]
    assert all(r.summary()["steps"] == 10 for r in runs)
    assert all([e["step"] for e in r.events("diagnosis")] == [10] for r in runs)  # snapshots on by default
    at.run()
    no_exception(at)
    compare = at.dataframe[-1].value
    assert sorted(compare["arm"]) == ["baseline", "shrink_perturb"] and (compare["n_seeds"] == 1).all()
    expected = pc.compare_runs(runs).set_index("arm")["final_acc_mean"]
    assert compare.set_index("arm")["final_acc"].to_dict() == {a: f"{100 * v:.1f} % (1 seed)" for a, v in expected.items()}
    charts = [c.proto.id for c in at.get("plotly_chart")]
    assert len(charts) >= 7  # accuracy, loss, val loss, lr, images/s curves; per-layer snapshots of both arms, delta
    run_table = next(d.value for d in at.dataframe if "arm.strategy" in d.value.columns)
    assert sorted(run_table["arm.strategy"]) == ["none", "shrink_perturb"] and len(run_table) == 2


def test_a_new_session_reattaches_and_stop_ends_the_runs(tmp_path, monkeypatch):
    at = _previewed(tmp_path, monkeypatch)
    experiment = _launch(at, steps=100_000, eval_every=1000)
    fresh = tiny_app()  # a browser reload: new session, nothing in session state about the runs
    fresh.switch_page("app_pages/finetune.py").run()
    no_exception(fresh)
    assert fresh.selectbox(key="w_ft_experiment").value == experiment
    fresh.button(key="btn_stop").click().run()
    runs = pc.RunStore(tmp_path).runs(experiment)
    assert pc.RunHandle.attach(runs[0].path).wait(timeout=240)
    assert {r.status for r in runs} == {"stopped"}
    assert all(r.summary()["steps"] < 100_000 for r in runs)


def test_an_arm_that_would_change_nothing_is_refused_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("PLASTICITY_RUNS", str(tmp_path))
    at = previewed(tiny_app(), "cbp", "layer1.*")  # cbp's default maturity (1000) >= the run's 100 steps
    at.switch_page("app_pages/finetune.py").run()
    assert not at.exception
    assert any("Arm **cbp** would change nothing" in e.value and "maturity 1000 >= the run's 100 steps" in e.value
               for e in at.error)
    assert at.button(key="btn_launch").disabled
    at.number_input(key="w_ft_steps").set_value(2000).run()  # now units can mature: the arm is allowed
    assert not any("would change nothing" in e.value for e in at.error) and not at.button(key="btn_launch").disabled
    at.number_input(key="w_ft_steps").set_value(100).run()
    at.checkbox(key="w_ft_anyway").check().run()  # explicit: launch anyway
    assert not at.button(key="btn_launch").disabled


def test_experiment_name_progress_and_flags(tmp_path, monkeypatch):
    at = _previewed(tmp_path, monkeypatch)
    at.text_input(key="w_ft_name").set_value("my study").run()
    experiment = _launch(at, steps=3, eval_every=1)
    assert experiment.startswith("my-study")
    runs = pc.RunStore(tmp_path).runs(experiment)
    assert pc.RunHandle.attach(runs[0].path).wait(timeout=240)
    at.run()
    no_exception(at)
    progress = next(df.value for df in at.dataframe if "ETA" in df.value.columns)
    assert progress["step"].tolist() == ["3/3", "3/3"] and (progress["progress"] == 1.0).all()
    assert progress["val_acc"].tolist() == [f"{100 * r.events('eval')[-1]['val_acc']:.1f} %" for r in runs]
    assert "None" not in progress.astype(str).to_numpy().ravel().tolist()
    compare = at.dataframe[-1].value
    assert compare["runs"].tolist() == ["1 finished", "1 finished"]


def test_executor_selector_offers_what_is_installed_and_names_the_missing_extra(tmp_path, monkeypatch):
    import importlib.util

    at = _previewed(tmp_path, monkeypatch)
    installed = ["process"] + [n for n, mod in (("ray", "ray"), ("slurm", "submitit")) if importlib.util.find_spec(mod)]
    assert at.selectbox(key="w_ft_executor").options == [f"{n}: {pc.EXECUTORS[n].doc.split(';')[0]}" for n in installed]
    missing = [n for n in ("ray", "slurm") if n not in installed]
    captions = " ".join(c.value for c in at.caption)
    assert all(f"plasticity-lab[{n}]" in captions for n in missing)


def test_runs_at_once_in_the_plan_and_one_run_stopped_alone(tmp_path, monkeypatch):
    at = _previewed(tmp_path, monkeypatch)
    at.number_input(key="w_ft_parallel").set_value(2).run()
    assert any(c.value.startswith("2 runs, 2 at a time") for c in at.caption)
    experiment = _launch(at, steps=100_000, eval_every=1000)
    runs = pc.RunStore(tmp_path).runs(experiment)
    assert all(r.config.launch.parallel == 2 for r in runs)
    assert at.selectbox(key="w_ft_experiment").value == experiment  # this workspace's experiment, first
    assert "this workspace" in at.selectbox(key="w_ft_experiment").format_func(experiment)
    assert "timm:test_resnet on synthetic:" in at.selectbox(key="w_ft_experiment").format_func(experiment)
    victim = runs[0].name
    at.selectbox(key="w_ft_stop_one").set_value(victim)
    at.button(key="btn_stop_one").click().run()
    no_exception(at)
    import time

    deadline = time.monotonic() + 120
    while pc.Run(runs[0].path).status != "stopped" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pc.Run(runs[0].path).status == "stopped"
    assert pc.Run(runs[1].path).status in ("queued", "running")  # not stopped with it
    at.button(key="btn_stop").click().run()
    assert pc.RunHandle.attach(runs[1].path).wait(timeout=240)
    assert pc.Run(runs[1].path).status == "stopped"


def _written(root, name, lr):
    """An experiment's run folders as the run contract leaves them (config, events, final summary)."""
    import json

    from plasticity_core.runs.spec import expand_experiment, run_name

    cfg = pc.ExperimentConfig(name=name, finetune=pc.FinetuneConfig(steps=4, lr=lr), seeds=[0],
                              arms={"baseline": None, "fire": pc.ReinitConfig(strategy="fire", layers=["blocks.5.*"])})
    for single in expand_experiment(cfg):
        run = root / name / run_name(single)
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(single.to_yaml())
        events = [{"type": "eval", "step": s, "time": float(s), "val_acc": 0.1 * s, "val_loss": 1.0} for s in (0, 4)]
        events += [{"type": "step", "step": s, "time": float(s), "loss": 1.0 / s, "lr": lr, "images_per_s": 9.0}
                   for s in (1, 2, 3, 4)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        (run / "summary.json").write_text(json.dumps({"status": "finished", "reason": "done", "steps": 4,
                                                      "final_val_acc": 0.4, "best_val_acc": 0.4, "wall_time_s": 4.0}))


def test_runs_of_another_experiment_join_only_when_the_setup_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("PLASTICITY_RUNS", str(tmp_path))
    for name, lr in (("a", 0.01), ("b", 0.01), ("c", 0.05)):
        _written(tmp_path, name, lr)
    from streamlit.testing.v1 import AppTest

    from dashboard.testing import APP

    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("app_pages/finetune.py").run()
    at.selectbox(key="w_ft_experiment").set_value("a").run()
    at.multiselect(key="w_ft_also").set_value(["b", "c"]).run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("**c** is not shown: its setup differs (finetune.lr: 0.01 vs 0.05)" in w.value for w in at.warning)
    table = next(d.value for d in at.dataframe if "arm.strategy" in d.value.columns)
    assert sorted(table["experiment"]) == ["a", "a", "b", "b"]  # b joined, c did not
