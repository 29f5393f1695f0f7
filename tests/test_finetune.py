"""The fine-tuning loop: learning, stopping, failing, reproducibility, schedule, layer-wise LR, re-init."""
from __future__ import annotations

import math
import threading

import pytest
import timm
import torch
from torch import nn

from plasticity_core.config import FinetuneConfig, ReinitConfig
from plasticity_core.data import load_dataset
from plasticity_core.finetune import _batches, finetune, lr_factor, param_groups

SPEC = "synthetic:classes=4,n=256,size=32"


@pytest.fixture(scope="module")
def data():
    return load_dataset(SPEC, image_size=32)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", num_classes=4)


def _cfg(**kw) -> FinetuneConfig:
    base = dict(steps=30, batch_size=32, lr=0.05, warmup_steps=3, eval_every=10, device="cpu")
    return FinetuneConfig(**{**base, **kw})


def test_short_run_lowers_loss_and_beats_chance(data):
    events = []
    r = finetune(_model(), data, _cfg(), on_event=events.append)
    losses = [e["loss"] for e in events if e["type"] == "step"]
    assert r.status == "finished" and r.steps == 30 and len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert r.final_val_acc > 0.6  # chance is 0.25 on 4 balanced classes
    assert [e["step"] for e in events if e["type"] == "eval"] == [10, 20, 30]
    assert events[-1]["type"] == "finished" and all({"type", "step", "time"} <= set(e) for e in events)


def test_eval_matches_a_hand_computed_accuracy(data):
    model = _model()
    r = finetune(model, data, _cfg(steps=5))
    model.eval()
    with torch.no_grad():
        xs, ys = zip(*[data.val[i] for i in range(len(data.val))])
        acc = int((model(torch.stack(xs)).argmax(1) == torch.tensor(ys)).sum()) / len(ys)
    assert r.final_val_acc == pytest.approx(acc, abs=1e-9)


def test_stop_event_ends_within_one_step(data):
    stop = threading.Event()

    def on_event(e):
        if e["type"] == "step" and e["step"] == 4:
            stop.set()

    events = []
    r = finetune(_model(), data, _cfg(steps=50), on_event=lambda e: (events.append(e), on_event(e)), stop=stop)
    assert r.status == "stopped" and r.steps == 4
    assert max(e["step"] for e in events if e["type"] == "step") == 4
    assert events[-1]["type"] == "stopped" and "stop requested" in events[-1]["reason"]


class NaNAfter(nn.Module):
    """Wraps a model; from forward call ``k`` on (training mode) its logits are NaN."""

    def __init__(self, inner: nn.Module, k: int) -> None:
        super().__init__()
        self.inner, self.k, self.calls = inner, k, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.k:
                out = out * float("nan")
        return out


def test_nan_loss_fails_with_step_and_reason(data):
    events = []
    r = finetune(NaNAfter(_model(), 3), data, _cfg(steps=20), on_event=events.append)
    assert r.status == "failed" and r.steps == 3
    assert "non-finite loss at step 3" in r.reason
    assert events[-1]["type"] == "failed" and events[-1]["reason"] == r.reason


def test_nan_is_located_inside_a_log_window(data):
    r = finetune(NaNAfter(_model(), 6), data, _cfg(steps=20, eval_every=100), log_every=4)
    assert r.status == "failed" and "step 6" in r.reason and r.steps == 8  # detected at the log point after it


def test_same_seed_same_metrics_with_augmentation(data):
    runs = []
    for _ in range(2):
        runs.append([])
        finetune(_model(1), data, _cfg(steps=12, augment=True, seed=3), on_event=runs[-1].append)
    strip = [[{k: v for k, v in e.items() if k not in ("time", "images_per_s", "wall_time_s")} for e in ev] for ev in runs]
    assert strip[0] == strip[1]


def test_data_order_and_augmentation_ignore_other_rng_use(data):
    cfg = _cfg(augment=True, seed=5)
    a, _ = _batches(data, cfg)
    b, _ = _batches(data, cfg)
    for _ in range(8):
        xa, ya = next(a)
        torch.rand(1000)  # e.g. dropout or a re-init strategy drawing from the global RNG in one arm only
        xb, yb = next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c, _ = _batches(data, _cfg(augment=True, seed=6))
    assert not torch.equal(next(c)[0], next(_batches(data, cfg)[0])[0])


def test_lr_schedule_is_warmup_then_cosine_to_zero(data):
    events = []
    finetune(_model(), data, _cfg(steps=20, warmup_steps=4, lr=0.1), on_event=events.append)
    lrs = [e["lr"] for e in events if e["type"] == "step"]
    expected = [0.1 * (s + 1) / 4 if s < 4 else 0.1 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 16)) for s in range(20)]
    assert lrs == pytest.approx(expected)
    assert lr_factor(20, 20, 4, "cosine") == pytest.approx(0.0) and lr_factor(10, 20, 4, "constant") == 1.0


def test_head_and_backbone_get_their_own_lr_and_no_decay_on_biases():
    model = _model()
    groups = {g["name"]: g for g in param_groups(model, _cfg(lr=0.1, head_lr_scale=10.0, weight_decay=1e-3))}
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    assert {id(p) for n in ("head", "head_no_decay") for p in groups[n]["params"]} == head_ids
    assert groups["head"]["lr"] == pytest.approx(1.0) and groups["backbone"]["lr"] == pytest.approx(0.1)
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0 and all(p.ndim == 1 for p in groups["backbone_no_decay"]["params"])
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_reinit_is_applied_before_training_and_reported(data):
    events = []
    cfg = ReinitConfig(strategy="fire", layers=["layer*"])
    r = finetune(_model(), data, _cfg(steps=3), reinit=cfg, on_event=events.append)
    kinds = [e["type"] for e in events]
    assert kinds.index("reinit") < kinds.index("optimizer") < kinds.index("step")
    rep = next(e for e in events if e["type"] == "reinit")
    assert rep["strategy"] == "fire" and len(rep["table"]) == len(r.reinit.table) > 0
    assert any("recalibrated" in n for n in rep["notes"])


def test_time_limit_stops_and_still_evaluates(data):
    r = finetune(_model(), data, _cfg(steps=10_000, eval_every=10_000, time_limit_s=0.5))
    assert r.status == "stopped" and "time limit" in r.reason and 0 < r.steps < 10_000
    assert r.evals and r.evals[-1]["step"] == r.steps


def test_bad_arguments_are_refused(data):
    with pytest.raises(TypeError, match="FinetuneConfig"):
        finetune(_model(), data, {"steps": 3})
    with pytest.raises(TypeError, match="ReinitConfig"):
        finetune(_model(), data, _cfg(), reinit="fire")


def test_diagnosis_snapshots_every_n_steps(data):
    events = []
    cfg = _cfg(steps=4, diagnose_every=2, diagnose_metrics=["dormant", "sfe"])
    r = finetune(_model(), data, cfg, on_event=events.append)
    snaps = [e for e in events if e["type"] == "diagnosis"]
    assert r.status == "finished" and [e["step"] for e in snaps] == [2, 4]
    assert {row["metric"] for row in snaps[0]["rows"]} == {"dormant", "sfe"}
    sfe = [row["value"] for row in snaps[1]["rows"] if row["metric"] == "sfe"]
    assert sfe and all(v > 0 for v in sfe)  # every layer moved from the weights finetune was given
    with pytest.raises(KeyError):
        finetune(_model(), data, _cfg(steps=2, diagnose_every=1, diagnose_metrics=["no_such_metric"]))


def test_cbp_arm_calls_its_step_callback_every_step(data):
    events = []
    cfg = ReinitConfig(strategy="cbp", layers=["layer*"], params={"replacement_rate": 0.05, "maturity": 2})
    r = finetune(_model(), data, _cfg(steps=8), reinit=cfg, on_event=events.append)
    replaced = sum(e["replaced"] for e in events if e["type"] == "step")
    per_layer = next(e for e in events if e["type"] == "cbp")["replaced"]
    assert r.status == "finished" and replaced > 0 and replaced == sum(per_layer.values())


class Raises(nn.Module):
    def __init__(self, inner: nn.Module, error: BaseException) -> None:
        super().__init__()
        self.inner, self.error, self.calls = inner, error, 0

    def forward(self, x):
        self.calls += 1
        if self.training and self.calls == 3:
            raise self.error
        return self.inner(x)


def test_out_of_memory_fails_with_a_smaller_batch_hint(data):
    r = finetune(Raises(_model(), torch.OutOfMemoryError("CUDA out of memory")), data, _cfg(steps=10))
    assert r.status == "failed" and "out of memory" in r.reason and "batch_size=32" in r.reason and "16" in r.reason


def test_unexpected_error_is_reported_then_raised(data):
    events = []
    with pytest.raises(ZeroDivisionError):
        finetune(Raises(_model(), ZeroDivisionError("boom")), data, _cfg(steps=10), on_event=events.append)
    assert events[-1]["type"] == "failed" and "ZeroDivisionError: boom" in events[-1]["reason"]


def test_epochs_set_the_number_of_steps(data):
    per_epoch = len(data.train) // 32  # drop_last: no last batch of a few images
    r = finetune(_model(), data, _cfg(epochs=1.5, eval_every=1000))
    assert r.total_steps == r.steps == math.ceil(1.5 * per_epoch)
