"""The fine-tuning loop: learning, stopping, failing, reproducibility, schedule, layer-wise LR, re-init."""
from __future__ import annotations

import math
import threading

import pytest
import timm
import torch
from torch import nn

from plasticity_core.config import FinetuneConfig, ReinitConfig
from safetensors.torch import load_file

from plasticity_core.data import TrainBatches, load_dataset, plan_data_path
from plasticity_core.finetune import evaluate, finetune, lr_factor, param_groups
from plasticity_core.reinit import apply_reinit

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
    assert [e["step"] for e in events if e["type"] == "eval"] == [0, 10, 20, 30]
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
    plan = plan_data_path(data)
    a = TrainBatches(data.train, plan.train, cfg.batch_size, cfg.seed, True, torch.device("cpu"))
    b = TrainBatches(data.train, None, cfg.batch_size, cfg.seed, True, torch.device("cpu"))
    for _ in range(8):
        xa, ya = next(a)
        torch.rand(1000)  # e.g. dropout or a re-init strategy drawing from the global RNG in one arm only
        xb, yb = next(b)
        assert torch.allclose(xa, xb, atol=1e-6, rtol=0) and torch.equal(ya, yb)
    c = TrainBatches(data.train, plan.train, cfg.batch_size, 6, True, torch.device("cpu"))
    assert not torch.equal(next(c)[1], next(TrainBatches(data.train, plan.train, 32, 5, True, torch.device("cpu")))[1])


@pytest.mark.parametrize("path", ["device", "loader"])
def test_both_data_paths_train_the_same_weights(data, path):
    ref, other = _model(2), _model(2)
    finetune(ref, data, _cfg(steps=6, augment=True, data_path="device"))
    events = []
    finetune(other, data, _cfg(steps=6, augment=True, data_path=path), on_event=events.append)
    assert next(e for e in events if e["type"] == "start")["data_path"] == path
    for (k, a), b in zip(ref.state_dict().items(), other.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6, rtol=0), k


def test_step0_eval_is_the_reinitialised_model_and_the_final_eval_covers_the_whole_val_split(data):
    events = []
    cfg = ReinitConfig(strategy="fire", layers=["layer*"])
    r = finetune(_model(), data, _cfg(steps=4, eval_every=2, eval_batches=1), reinit=cfg, on_event=events.append)
    evals = [e for e in events if e["type"] == "eval"]
    kinds = [e["type"] for e in events]
    assert kinds.index("reinit") < kinds.index("eval") < kinds.index("step")
    assert [e["step"] for e in evals] == [0, 2, 4] and r.initial_val_acc == evals[0]["val_acc"]
    assert [e["val_images"] for e in evals] == [32, 32, len(data.val)] and [e["full_val"] for e in evals] == [False, False, True]
    assert r.final_val_acc == evals[-1]["val_acc"]
    # independently: the same model, re-initialised by hand, evaluated on the same first val batch
    model = _model()
    torch.manual_seed(0)
    apply_reinit(model, cfg, data=data.train)
    acc, loss = evaluate(model, data, _cfg(), torch.device("cpu"), max_batches=1)
    assert evals[0]["val_acc"] == pytest.approx(acc, abs=1e-9) and evals[0]["val_loss"] == pytest.approx(loss, rel=1e-6)
    model.eval()
    with torch.no_grad():
        xs, ys = zip(*[data.val[i] for i in range(32)])
        by_hand = int((model(torch.stack(xs)).argmax(1) == torch.tensor(ys)).sum()) / 32
    assert acc == pytest.approx(by_hand, abs=1e-9)


def test_over_budget_data_falls_back_to_the_loader_and_says_so(data):
    events = []
    with pytest.warns(UserWarning, match="memory budget"):
        r = finetune(_model(), data, _cfg(steps=2, data_memory_mb=0.01), on_event=events.append)
    start = next(e for e in events if e["type"] == "start")
    assert r.data_path == start["data_path"] == "loader" and "exceed" in start["data_path_reason"]
    assert start["notes"] and r.summary()["data_path"] == "loader"


class DropoutNet(nn.Module):
    """A small conv net with BatchNorm and dropout: a resume must restore buffers and the global RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                                      nn.Flatten(), nn.Dropout(0.3))
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc(self.features(x))


def _net() -> nn.Module:
    torch.manual_seed(4)
    return DropoutNet()


@pytest.mark.parametrize("path", ["device", "loader"])
def test_resume_continues_to_the_uninterrupted_weights(data, tmp_path, path):
    cfg = _cfg(steps=14, augment=True, eval_every=5, checkpoint="final", save_optimizer=True, checkpoint_every=4,
               data_path=path, batch_size=48)  # 4 batches per epoch: the stop lands inside an epoch
    whole = _net()
    ref = finetune(whole, data, cfg, checkpoint_dir=tmp_path / "whole")  # checkpoints must not change the run
    stop = threading.Event()
    first = finetune(_net(), data, cfg, checkpoint_dir=tmp_path / "cut", stop=stop,
                     on_event=lambda e: e["type"] == "step" and e["step"] == 9 and stop.set())
    assert first.status == "stopped" and first.steps == 9
    state = torch.load(tmp_path / "cut" / "state.pt", weights_only=True)  # plain tensors, numbers and containers only
    assert state["step"] == 9 and state["optimizer"]["state"]
    events = []
    resumed = _net()  # fresh weights, as a requeued job would load them
    r = finetune(resumed, data, cfg, checkpoint_dir=tmp_path / "cut", resume=True, on_event=events.append)
    assert r.status == "finished" and r.steps == 14 and r.resumed_from == 9
    assert next(e for e in events if e["type"] == "start")["resumed_from"] == 9
    assert [e["step"] for e in events if e["type"] == "step"] == list(range(10, 15))
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6, rtol=0), k
    assert r.final_val_acc == pytest.approx(ref.final_val_acc) and [e["step"] for e in r.evals] == [0, 5, 10, 14]
    saved = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in resumed.state_dict().items())


class _Killed(BaseException):
    """A process killed mid-write: nothing in the loop may catch it."""


def test_a_stop_between_the_checkpoint_renames_still_resumes_to_the_uninterrupted_weights(data, tmp_path, monkeypatch):
    """A checkpoint is two files renamed into place one after the other. A kill between the two renames (a lost
    node, SIGKILL) leaves the new weights beside the old state: the new state is complete in state.pt.tmp, and
    the resume takes it and continues to the uninterrupted weights. Without that file the mixed pair is refused."""
    import os
    import shutil

    from plasticity_core.train.checkpoints import load_checkpoint

    cfg = _cfg(steps=14, eval_every=5, checkpoint="final", save_optimizer=True, checkpoint_every=4, batch_size=48)
    whole = _net()
    finetune(whole, data, cfg, checkpoint_dir=tmp_path / "whole")
    rename = os.replace

    def killed_at_step_8(src, dst):
        if str(dst).endswith("state.pt") and torch.load(src, weights_only=True)["step"] == 8:
            raise _Killed
        rename(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_step_8)
    with pytest.raises(_Killed):
        finetune(_net(), data, cfg, checkpoint_dir=tmp_path / "cut")
    monkeypatch.setattr(os, "replace", rename)
    assert torch.load(tmp_path / "cut" / "state.pt", weights_only=True)["step"] == 4  # the mixed pair on disk
    shutil.copytree(tmp_path / "cut", tmp_path / "lost")
    (tmp_path / "lost" / "state.pt.tmp").unlink()
    with pytest.raises(ValueError, match="model.safetensors is from step 8 but state.pt from step 4"):
        load_checkpoint(tmp_path / "lost")
    resumed = _net()
    r = finetune(resumed, data, cfg, checkpoint_dir=tmp_path / "cut", resume=True)
    assert r.status == "finished" and r.resumed_from == 8 and r.steps == 14
    assert not (tmp_path / "cut" / "state.pt.tmp").exists()
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6, rtol=0), k


def test_resume_refuses_another_config_and_starts_afresh_without_a_checkpoint(data, tmp_path):
    cfg = _cfg(steps=3, checkpoint="best")
    finetune(_model(), data, cfg, checkpoint_dir=tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "best.safetensors").exists()
    with pytest.raises(ValueError, match="config differs in lr"):
        finetune(_model(), data, _cfg(steps=3, checkpoint="best", lr=0.1), checkpoint_dir=tmp_path, resume=True)
    events = []
    r = finetune(_model(), data, cfg, checkpoint_dir=tmp_path / "empty", resume=True, on_event=events.append)
    assert r.status == "finished" and r.steps == 3 and r.resumed_from is None
    assert "no checkpoint" in next(e for e in events if e["type"] == "start")["notes"][0]
    with pytest.raises(ValueError, match="checkpoint_dir"):
        finetune(_model(), data, _cfg(steps=3, checkpoint="final"))
    warned = []
    finetune(_model(), data, _cfg(steps=5, checkpoint_every=2), checkpoint_dir=tmp_path / "noopt")
    torch.load(tmp_path / "noopt" / "state.pt", weights_only=True)
    finetune(_model(), data, _cfg(steps=6, checkpoint_every=2), checkpoint_dir=tmp_path / "noopt2",
             stop=_StopAt(3))
    finetune(_model(), data, _cfg(steps=6, checkpoint_every=2), checkpoint_dir=tmp_path / "noopt2", resume=True,
             on_event=warned.append)
    assert any(e["type"] == "warning" and "no optimizer state" in e["message"] for e in warned)


class _StopAt:
    """A stop flag that is set once ``n`` steps have run (checked before every step)."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def is_set(self) -> bool:
        self.calls += 1
        return self.calls > self.n


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
        self.calls += self.training
        if self.training and self.calls == 3:  # the third training step
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


@pytest.mark.gpu
def test_cuda_resume_continues_to_the_uninterrupted_weights(data, tmp_path):
    cfg = _cfg(steps=8, device="cuda", amp=False, checkpoint="final", save_optimizer=True, checkpoint_every=3)
    whole = _net()
    finetune(whole, data, cfg, checkpoint_dir=tmp_path / "whole")
    finetune(_net(), data, cfg, checkpoint_dir=tmp_path / "cut", stop=_StopAt(5))
    resumed = _net()
    r = finetune(resumed, data, cfg, checkpoint_dir=tmp_path / "cut", resume=True)
    assert r.status == "finished" and r.resumed_from == 5
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5, rtol=0), k
