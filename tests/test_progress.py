"""run_progress reads step/total, latest accuracy and ETA from a real fine-tune's event stream."""
import pytest

import plasticity_core as pc
from plasticity_core.progress import run_progress


def test_progress_of_a_real_run_midway_and_at_the_end(tiny_resnet, synthetic):
    events = []
    pc.finetune(tiny_resnet, synthetic, pc.FinetuneConfig(steps=6, batch_size=8, eval_every=3, device="cpu"),
                on_event=events.append)
    end = run_progress(events, {"status": "finished", "steps": 6})
    evals = [e for e in events if e["type"] == "eval"]
    assert end["step"] == 6 and end["total"] == 6 and end["fraction"] == 1.0 and end["eta_s"] is None
    assert end["val_acc"] == evals[-1]["val_acc"] and end["status"] == "finished"
    # the stream as a reader sees it while the run is at step 3 (just after the step-3 evaluation)
    cut = next(i for i, e in enumerate(events) if e["type"] == "eval" and e["step"] == 3) + 1
    mid = run_progress(events[:cut], {"status": "running"})
    last_time = events[cut - 1]["time"]
    assert mid["step"] == 3 and mid["total"] == 6 and mid["fraction"] == 0.5
    assert mid["eta_s"] == pytest.approx(last_time / 3 * 3) and mid["val_acc_step"] == 3


def test_progress_before_any_event_says_nothing_rather_than_none():
    p = run_progress([], {"status": "queued"})
    assert p["step"] == 0 and p["total"] is None and p["fraction"] == 0.0 and p["eta_s"] is None and p["val_acc"] is None
