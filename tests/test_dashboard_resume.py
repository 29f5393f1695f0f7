"""Fine-tune page (AppTest): the Resume button continues an experiment's interrupted runs from their checkpoints."""
import plasticity_core as pc
from dashboard.testing import no_exception, tiny_app


class _StopAfter:
    """A stop flag set after ``n`` checks (the loop checks once before the run and before every step)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def is_set(self) -> bool:
        self.n -= 1
        return self.n < 0


def test_resume_button_continues_stopped_runs_from_their_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("PLASTICITY_RUNS", str(tmp_path))
    cfg = pc.ExperimentConfig(name="r", backbone="timm:test_resnet", pretrained=False, data="synthetic:classes=4,n=64,size=32",
                              seeds=[0], arms={"baseline": None},
                              finetune=pc.FinetuneConfig(steps=12, batch_size=8, eval_every=4, image_size=32, device="cpu",
                                                         checkpoint_every=4, save_optimizer=True))
    cfg.launch.sinks = []
    (run,) = pc.RunStore(tmp_path).create(cfg, tag="a")
    assert pc.execute_run(run, stop=_StopAfter(7))["status"] == "stopped"  # stopped at step 6, checkpoint at 6
    at = tiny_app()
    at.switch_page("app_pages/finetune.py").run()
    no_exception(at)
    assert at.button(key="btn_resume").label == "Resume 1 interrupted run"
    at.button(key="btn_resume").click().run()
    no_exception(at)
    assert pc.RunHandle.attach(run.path).wait(timeout=240)
    s = run.summary()
    assert s["status"] == "finished" and s["steps"] == 12 and s["attempt"] == 2, s
    assert run.events("resume")[-1]["step"] == 6
