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
    experiment = _launch(at, steps=4)
    store = pc.RunStore(tmp_path)
    runs = store.runs(experiment)
    assert sorted(r.arm for r in runs) == ["baseline", "shrink_perturb"]
    assert runs[0].config.arms.get("shrink_perturb", runs[-1].config.arms.get("shrink_perturb")).layers == ["layer3.*"]
    assert pc.RunHandle.attach(runs[0].path).wait(timeout=240)
    assert {r.status for r in runs} == {"finished"}, store.table(experiment)[["run", "status", "reason"]]
    assert all(r.summary()["steps"] == 4 for r in runs)
    at.run()
    no_exception(at)
    compare = at.dataframe[-1].value
    assert sorted(compare["arm"]) == ["baseline", "shrink_perturb"] and (compare["n_seeds"] == 1).all()
    expected = pc.compare_runs(runs).set_index("arm")["final_acc"]
    assert compare.set_index("arm")["final_acc"].to_dict() == expected.to_dict()
    assert len(at.get("plotly_chart")) == 2  # accuracy and loss curves


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
