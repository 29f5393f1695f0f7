"""Weight metrics start in a background thread when a model is loaded; the first diagnosis then reads them."""
import plasticity_core.metrics.weights as weights
from dashboard import state
from dashboard.testing import no_exception, tiny_app


def _captions(at) -> list[str]:
    return [c.value for c in at.caption]


def test_weights_are_computed_in_the_background_and_the_diagnosis_reads_them(monkeypatch):
    at = tiny_app()
    at.switch_page("app_pages/diagnose.py").run()
    no_exception(at)
    assert any(c.startswith("weight metrics: ") for c in _captions(at))
    jobs = [entry for entry in state._WEIGHT_JOBS.values() if entry[0]() is not None]
    assert jobs, "no background job was started at load"
    for _, job, _ in jobs:
        job.result(timeout=120)
    at.run()
    assert "weight metrics: ready" in _captions(at)

    def no_spectra(*a, **k):
        raise AssertionError("sigma_1 recomputed: the background job's values were not used")

    monkeypatch.setattr(weights, "top_singular", no_spectra)
    at.multiselect[0].set_value(["spectral_norm", "stable_rank", "dormant"])
    at.number_input[0].set_value(1)
    at.button[0].click().run()
    no_exception(at)
    d = at.session_state["diagnosis"]
    assert set(d.metrics) >= {"spectral_norm", "stable_rank", "dormant"}
    assert (d.wide()["spectral_norm"] > 0).all()


def test_the_page_names_layers_whose_sigma_1_took_the_exact_svd(monkeypatch):
    """Computed by the diagnosis itself (nothing cached), a layer whose Lanczos ran out of steps is named on the page."""
    from plasticity_core.metrics.diagnose import clear_weight_cache

    at = tiny_app()
    at.switch_page("app_pages/diagnose.py").run()
    for _, job, _ in [e for e in state._WEIGHT_JOBS.values() if e[0]() is not None]:
        job.result(timeout=120)
    monkeypatch.setattr(weights, "GKL_MAX_STEPS", 2)
    clear_weight_cache()  # the diagnosis computes the weight metrics now, with the short step limit
    at.multiselect[0].set_value(["spectral_norm"])
    at.number_input[0].set_value(1)
    at.button[0].click().run()
    no_exception(at)
    slow = at.session_state["diagnosis"].meta["weights_slow_path"]["layers"]
    assert slow
    line = next(c for c in _captions(at) if "came from an exact SVD" in c)
    assert f"of {len(slow)} layer(s)" in line
