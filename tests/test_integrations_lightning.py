"""The Lightning callback drives a real ``Trainer.fit`` (CPU, timm's test_resnet, a few steps)."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import plasticity_core as pc
from plasticity_core.errors import UserError

pl = pytest.importorskip("pytorch_lightning")
from plasticity_core.integrations.lightning import PlasticityCallback  # noqa: E402

TOUCHED = "layer4.0.downsample.1"


class Lit(pl.LightningModule):
    """A user's LightningModule around a timm backbone (``self.model``): the exported layer names are the backbone's."""

    def __init__(self, lazy: bool = False) -> None:
        super().__init__()
        self.lazy = lazy
        self.model = None if lazy else self._backbone()
        self.at_optimizer: dict = {}
        self.callback: PlasticityCallback | None = None

    @staticmethod
    def _backbone() -> nn.Module:
        torch.manual_seed(0)
        return timm.create_model("test_resnet", num_classes=4)

    def configure_model(self) -> None:
        if self.model is None:
            self.model = self._backbone()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("val_loss", nn.functional.cross_entropy(out, y))
        self.log("val_acc", (out.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        tracker = self.callback.tracker if self.callback is not None else None
        self.at_optimizer = {"report": None if tracker is None else tracker.report,
                             "weight": self.model.get_submodule(TOUCHED).weight.detach().clone()}
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def _fit(module: Lit, callback: PlasticityCallback, data, steps: int = 4) -> pl.Trainer:
    module.callback = callback
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                         num_sanity_val_steps=0, val_check_interval=2, limit_val_batches=2, callbacks=[callback])
    g = torch.Generator().manual_seed(0)
    train = torch.utils.data.DataLoader(data.train, batch_size=16, shuffle=True, generator=g)
    val = torch.utils.data.DataLoader(data.val, batch_size=16)
    trainer.fit(module, train, val)
    return trainer


def test_lightning_fit_is_a_run_and_the_reinit_comes_before_the_optimizer(tmp_path, synthetic):
    store = pc.RunStore(tmp_path / "runs")
    original = Lit._backbone().get_submodule(TOUCHED).weight.detach().clone()
    cfg = pc.ReinitConfig(strategy="reset", layers=["layer4.*"], seed=0)
    for reinit in (None, cfg):
        module = Lit()
        callback = PlasticityCallback(reinit, store, "lit", data=synthetic.train)
        _fit(module, callback, synthetic)
    # the re-init ran in setup, before configure_optimizers built the optimizer: the optimizer saw re-initialised
    # weights and no optimizer existed to hold state of the old ones
    assert callback.applied_in == "setup" and callback.tracker.reinit_optimizers == 0
    assert module.at_optimizer["report"] is callback.tracker.report
    assert not torch.equal(module.at_optimizer["weight"], original)
    assert callback.tracker.module is module.model  # layer names found under the LightningModule's `model`
    table = store.table("lit")
    assert sorted(table["arm"]) == ["baseline", "reset"] and set(table["status"]) == {"finished"}
    run = store.get("lit/reset-seed0")
    assert [e["step"] for e in run.events("eval")] == [2, 4]
    assert 0 <= run.events("eval")[-1]["val_acc"] <= 1 and run.events("eval")[-1]["val_loss"] > 0
    assert [e["step"] for e in run.events("step")] == [1, 2, 3, 4] and all(e["loss"] > 0 for e in run.events("step"))
    assert run.events("start")[0]["total_steps"] == 4 and run.events("start")[0]["source"] == "lightning"
    compare = pc.compare_runs(store.runs("lit"))
    assert sorted(compare["arm"]) == ["baseline", "reset"]


def test_lightning_model_built_in_configure_model_and_cbp(tmp_path, synthetic):
    cfg = pc.ReinitConfig(strategy="cbp", layers=["layer3.*"], params={"maturity": 1, "replacement_rate": 0.5})
    module = Lit(lazy=True)
    callback = PlasticityCallback(cfg, tmp_path, "lazy", data=synthetic.val, diagnose_every=2)
    _fit(module, callback, synthetic)
    # the layers only exist after configure_model: armed in on_fit_start, on the optimizer that exists by then
    assert callback.applied_in == "on_fit_start" and callback.tracker.reinit_optimizers == 1
    assert callback.tracker.steps == 4  # cbp stepped after every optimizer step
    run = callback.tracker.run
    assert sum(run.events("cbp")[0]["replaced"].values()) > 0
    assert [e["step"] for e in run.events("diagnosis")] == [2, 4]
    assert run.summary()["status"] == "finished"


def test_lightning_bad_input_before_training(tmp_path, synthetic):
    module = Lit()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    callback = PlasticityCallback(pc.ReinitConfig(strategy="reset", layers=["blocks.9.*"]), tmp_path, "bad")
    with pytest.raises(UserError, match="match no layer"):
        _fit(module, callback, synthetic)
    assert not (tmp_path / "bad").exists() and module.trainer.global_step == 0
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())
    class NoOptimizer(Lit):
        def configure_optimizers(self):
            return None  # Lightning runs without an optimizer: nothing for cbp to step after

    cbp = pc.ReinitConfig(strategy="cbp", layers=["layer3.*"])
    module = NoOptimizer()
    with pytest.raises(UserError, match="replaces units after every optimizer step but there is no optimizer"):
        _fit(module, PlasticityCallback(cbp, tmp_path, "noopt"), synthetic)
    assert not (tmp_path / "noopt").exists() and module.trainer.global_step == 0
    _fit(Lit(), PlasticityCallback(None, tmp_path, "taken"), synthetic, steps=1)
    with pytest.raises(UserError, match="exists already"):
        PlasticityCallback(None, tmp_path, "taken")


def test_lightning_exception_in_training_reads_failed(tmp_path, synthetic):
    class Boom(Lit):
        def training_step(self, batch, batch_idx):
            if self.global_step == 2:
                raise ValueError("bad batch at step 2")
            return super().training_step(batch, batch_idx)

    callback = PlasticityCallback(None, tmp_path, "boom")
    with pytest.raises(ValueError):
        _fit(Boom(), callback, synthetic)
    s = callback.tracker.run.summary()
    assert s["status"] == "failed" and s["reason"] == "ValueError: bad batch at step 2" and s["steps"] == 2


def test_lightning_stop_request_from_the_dashboard_stops_the_fit(tmp_path, synthetic):
    class Stopped(Lit):
        def training_step(self, batch, batch_idx):
            if self.global_step == 2:
                self.callback.tracker.run.request_stop()  # what the dashboard's Stop button does
            return super().training_step(batch, batch_idx)

    callback = PlasticityCallback(None, tmp_path, "stop")
    trainer = _fit(Stopped(), callback, synthetic, steps=50)
    s = callback.tracker.run.summary()
    assert trainer.global_step == 3 and s["status"] == "stopped" and "stop requested" in s["reason"]
