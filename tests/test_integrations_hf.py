"""The Hugging Face callback drives a real ``Trainer.train`` (CPU, an image classifier around timm's test_resnet)."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

import plasticity_core as pc
from plasticity_core.errors import UserError

transformers = pytest.importorskip("transformers")
from plasticity_core.integrations.hf import PlasticityCallback  # noqa: E402

TOUCHED = "layer4.0.downsample.1"


class Classifier(nn.Module):
    """An image classifier as the HF Trainer wants it: forward(pixel_values, labels) -> {loss, logits}."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = timm.create_model("test_resnet", num_classes=4)

    def forward(self, pixel_values, labels=None):
        logits = self.model(pixel_values)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


class Pixels(torch.utils.data.Dataset):
    def __init__(self, data) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return {"pixel_values": x, "labels": int(y)}


def accuracy(pred) -> dict:
    return {"accuracy": float((np.argmax(pred.predictions, axis=1) == pred.label_ids).mean())}


class RecordingTrainer(transformers.Trainer):
    """Records, when the Trainer builds its optimizer, whether the re-init had happened."""

    def create_optimizer(self, *args, **kwargs):
        cb = next(c for c in self.callback_handler.callbacks if isinstance(c, PlasticityCallback))
        self.at_optimizer = {"report": cb.tracker.report, "existed": self.optimizer is not None,
                             "weight": self.model.model.get_submodule(TOUCHED).weight.detach().clone()}
        return super().create_optimizer(*args, **kwargs)


def _trainer(tmp_path, model, callback, data, steps: int = 4, cls=RecordingTrainer, metrics=accuracy, **kwargs):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=steps, per_device_train_batch_size=16, per_device_eval_batch_size=32,
        learning_rate=1e-3, logging_steps=1, eval_strategy="steps", eval_steps=2, save_strategy="no", report_to="none",
        use_cpu=True, seed=0, disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0)
    return cls(model=model, args=args, train_dataset=Pixels(data.train), eval_dataset=Pixels(data.val),
               compute_metrics=metrics, callbacks=[callback], **kwargs)


def test_hf_train_is_a_run_and_the_optimizer_is_built_after_the_reinit(tmp_path, synthetic):
    store = pc.RunStore(tmp_path / "runs")
    cfg = pc.ReinitConfig(strategy="reset", layers=["layer4.*"], seed=0)
    original = Classifier().model.get_submodule(TOUCHED).weight.detach().clone()
    for reinit in (None, cfg):
        model = Classifier()
        callback = PlasticityCallback(reinit, store, "hf", data=synthetic.train)
        trainer = _trainer(tmp_path, model, callback, synthetic)
        trainer.train()
    # re-initialised in on_init_end; the Trainer built its optimizer afterwards, in train(), on the new weights
    assert callback.applied_in == "on_init_end" and callback.tracker.reinit_optimizers == 0
    assert trainer.at_optimizer["report"] is callback.tracker.report and not trainer.at_optimizer["existed"]
    assert not torch.equal(trainer.at_optimizer["weight"], original)
    assert callback.tracker.module is model.model
    table = store.table("hf")
    assert sorted(table["arm"]) == ["baseline", "reset"] and set(table["status"]) == {"finished"}
    run = store.get("hf/reset-seed0")
    assert [e["step"] for e in run.events("step")] == [1, 2, 3, 4]
    assert [e["step"] for e in run.events("eval")] == [2, 4]
    last = run.events("eval")[-1]
    assert 0 <= last["val_acc"] <= 1 and last["val_loss"] > 0 and run.summary()["final_val_acc"] == last["val_acc"]
    assert run.events("start")[0]["params"]["learning_rate"] == 1e-3 and run.config.finetune.lr == 1e-3
    assert sorted(pc.compare_runs(store.runs("hf"))["arm"]) == ["baseline", "reset"]


def test_hf_given_optimizer_state_of_the_touched_slices_is_zeroed(tmp_path, synthetic):
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = Pixels(synthetic.train)
    x = torch.stack([batch[i]["pixel_values"] for i in range(16)])
    y = torch.tensor([batch[i]["labels"] for i in range(16)])
    model(x, y)["loss"].backward()
    opt.step()  # the user's optimizer carries Adam moments for every parameter
    touched, kept = model.model.get_submodule(TOUCHED).weight, model.model.fc.weight
    assert opt.state[touched]["exp_avg"].abs().sum() > 0
    cfg = pc.ReinitConfig(strategy="reset", layers=[TOUCHED], seed=0)
    callback = PlasticityCallback(cfg, tmp_path, "given", data=synthetic.train)
    trainer = _trainer(tmp_path, model, callback, synthetic, steps=2, cls=transformers.Trainer, optimizers=(opt, None))
    # right after the re-init (Trainer(...) returned, nothing trained): the touched slices' state is zero, the rest kept
    assert callback.tracker.reinit_optimizers == 1
    assert opt.state[touched]["exp_avg"].abs().sum() == 0 and opt.state[touched]["exp_avg_sq"].abs().sum() == 0
    assert opt.state[kept]["exp_avg"].abs().sum() > 0
    trainer.train()
    assert callback.tracker.run.summary()["status"] == "finished"


def test_hf_cbp_and_diagnosis(tmp_path, synthetic):
    cfg = pc.ReinitConfig(strategy="cbp", layers=["layer3.*"], params={"maturity": 1, "replacement_rate": 0.5})
    callback = PlasticityCallback(cfg, tmp_path, "cbp", data=synthetic.val, diagnose_every=2)
    _trainer(tmp_path, Classifier(), callback, synthetic).train()
    run = callback.tracker.run
    assert callback.tracker.steps == 4 and sum(run.events("cbp")[0]["replaced"].values()) > 0
    assert not run.events("warning") or all("accuracy" not in w["message"] for w in run.events("warning"))
    assert [e["step"] for e in run.events("diagnosis")] == [2, 4]


def test_hf_bad_input_and_failure(tmp_path, synthetic):
    model = Classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match="match no layer"):
        _trainer(tmp_path, model, PlasticityCallback(pc.ReinitConfig(strategy="fire", layers=["blocks.9.*"]),
                                                     tmp_path, "bad"), synthetic)
    assert not (tmp_path / "bad").exists()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())

    class Boom(RecordingTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            if self.state.global_step == 2:
                raise ValueError("bad batch at step 2")
            return super().training_step(model, inputs, *args, **kwargs)

    callback = PlasticityCallback(None, tmp_path, "boom")
    with pytest.raises(ValueError):
        _trainer(tmp_path, model, callback, synthetic, cls=Boom).train()
    s = callback.tracker.run.summary()
    assert s["status"] == "failed" and s["reason"] == "ValueError: bad batch at step 2" and s["steps"] == 2
    with pytest.raises(UserError, match="exists already"):
        PlasticityCallback(None, tmp_path, "boom")


def test_hf_model_init_model_is_reinitialised_before_its_first_step(tmp_path, synthetic):
    cfg = pc.ReinitConfig(strategy="reset", layers=[TOUCHED], seed=0)
    callback = PlasticityCallback(cfg, tmp_path, "init", data=synthetic.train)
    made = []

    def model_init():
        made.append(Classifier())
        return made[-1]

    trainer = _trainer(tmp_path, None, callback, synthetic, steps=2, model_init=model_init)
    trainer.train()  # model_init makes a second model here; the Trainer built its optimizer on it already
    assert len(made) == 2 and callback.tracker.module is made[-1].model
    assert callback.applied_in == "on_train_begin" and callback.tracker.reinit_optimizers == 1
    assert callback.tracker.run.events("reinit")[0]["resolved_layers"] == [TOUCHED]
    assert callback.tracker.run.summary()["status"] == "finished"


def test_hf_without_an_accuracy_says_so(tmp_path, synthetic):
    callback = PlasticityCallback(None, tmp_path, "noacc")
    _trainer(tmp_path, Classifier(), callback, synthetic, steps=2, metrics=None).train()
    run = callback.tracker.run
    assert [e["step"] for e in run.events("eval")] == [2] and "val_acc" not in run.events("eval")[0]
    (warning,) = run.events("warning")
    assert "no evaluation accuracy" in warning["message"] and "compute_metrics" in warning["message"]
