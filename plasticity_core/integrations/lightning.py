"""``PlasticityCallback`` for PyTorch Lightning (``pip install 'plasticity-lab[lightning]'``).

``Trainer(callbacks=[PlasticityCallback("reinit.yaml", "runs", "my-exp", data=probe)])`` and the fit is a run in
the store: its curves, per-layer snapshots and final status show in ``plasticity runs`` / ``compare`` and the
dashboard's Fine-tune page while it trains.

Where the re-init happens: Lightning calls a callback's ``setup("fit")`` before ``configure_optimizers`` (the
strategy builds the optimizers after every ``setup`` hook), so the re-init is applied there and no optimizer state
of the old weights can exist. A model whose layers only appear in ``LightningModule.setup`` / ``configure_model``
(after the callbacks' ``setup``) is re-initialised in ``on_fit_start`` instead, with the optimizers given so the
touched slices' state is zeroed. A fit resumed from a checkpoint (``ckpt_path``) is not re-initialised again: the
re-init is in the checkpoint's weights. ``cbp`` runs after every optimizer step (a step post-hook).

Curves: the step loss is the ``training_step``'s returned loss (mean over the optimizer step's batches); the
evaluation is what the module logs in validation (``val_acc`` / ``val_loss``, or the first logged ``val*acc*`` /
``val*loss*`` names; ``val_acc_key=`` / ``val_loss_key=`` pick others), at ``trainer.global_step``.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch

from plasticity_core.config import ReinitConfig
from plasticity_core.integrations.track import DIAGNOSE_METRICS, IntegrationError, Tracker, metric_key, scalar
from plasticity_core.runs.spec import MissingExtraError
from plasticity_core.runs.store import RunStore

try:
    import lightning.pytorch as pl
except ImportError:
    try:
        import pytorch_lightning as pl
    except ImportError:
        raise MissingExtraError("plasticity_core.integrations.lightning needs PyTorch Lightning: pip install "
                                "'plasticity-lab[lightning]' (or lightning / pytorch-lightning)") from None


class PlasticityCallback(pl.Callback):
    """Writes a Lightning fit into the run store as a run (and applies an exported re-init where no stale optimizer
    state can survive). ``reinit``: a ``ReinitConfig`` or an exported YAML path (None: a baseline); ``store``: a
    ``RunStore`` or folder; ``name``: the experiment (runs under one name compare); ``data``: probe/target images
    (BatchNorm recalibration, unit scoring, diagnosis snapshots every ``diagnose_every`` steps); ``module``: the
    backbone's attribute path inside the LightningModule when the config's layer names are relative to it (found
    on its own when unique). Bad input is refused here or in ``setup``, before anything trains."""

    def __init__(self, reinit: ReinitConfig | str | os.PathLike | None, store: RunStore | str | os.PathLike | None,
                 name: str, *, data: Any = None, diagnose_every: int = 0,
                 diagnose_metrics: Sequence[str] = DIAGNOSE_METRICS, arm: str | None = None, seed: int | None = None,
                 module: str | None = None, val_acc_key: str | None = None, val_loss_key: str | None = None,
                 log_every: int | None = None, config: Mapping[str, Any] | None = None, heartbeat_s: float = 5.0,
                 heartbeat_timeout_s: float = 60.0, sinks: Sequence[str] = (), allow_noop: bool = False) -> None:
        super().__init__()
        self.tracker = Tracker(store, name, reinit=reinit, data=data, config=config, arm=arm, seed=seed, module=module,
                               diagnose_every=diagnose_every, diagnose_metrics=diagnose_metrics,
                               heartbeat_s=heartbeat_s, heartbeat_timeout_s=heartbeat_timeout_s, sinks=sinks,
                               allow_noop=allow_noop, source="lightning")
        self.val_acc_key, self.val_loss_key, self.log_every = val_acc_key, val_loss_key, log_every
        self.applied_in: str | None = None  # "setup" (before the optimizers exist) or "on_fit_start" (state reset)
        self._losses: list[torch.Tensor] = []
        self._step = 0
        self._warned_keys = False

    # -- before training
    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit" or self.tracker._prepared:
            return
        if trainer.ckpt_path:
            self.tracker.skip_reinit(pl_module, f"resumed from {trainer.ckpt_path}: not re-initialised again (the "
                                                f"re-init is in the checkpoint's weights)")
            return
        try:
            self.tracker.prepare(pl_module)
            self.applied_in = "setup"
        except IntegrationError:
            if not self._may_appear_later(pl_module):
                raise
            self.tracker.model = pl_module  # its layers come in setup / configure_model: retry in on_fit_start

    @staticmethod
    def _may_appear_later(pl_module: "pl.LightningModule") -> bool:
        overridden = [hook for hook in ("setup", "configure_model", "configure_sharded_model")
                      if getattr(type(pl_module), hook, None) is not getattr(pl.LightningModule, hook, None)]
        return bool(overridden)

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        optimizers = [o for o in trainer.optimizers if getattr(o, "param_groups", None)]  # not Lightning's mock one
        self.tracker.attach(*optimizers)
        if not self.tracker._prepared:
            self.tracker.prepare(pl_module, optimizers)  # the optimizers exist: their touched state is zeroed
            self.applied_in = "on_fit_start"
        total = trainer.estimated_stepping_batches
        total = int(total) if isinstance(total, (int, float)) and total != float("inf") else None
        opt = optimizers[0] if optimizers else None
        hp = {"max_steps": trainer.max_steps, "max_epochs": trainer.max_epochs,
              "accumulate_grad_batches": trainer.accumulate_grad_batches, "precision": str(trainer.precision),
              "optimizer": type(opt).__name__ if opt is not None else None,
              "lr": opt.param_groups[0].get("lr") if opt is not None else None}
        self.tracker.params = {**hp, **self.tracker.params}
        if opt is not None and "lr" not in self.tracker.finetune and isinstance(hp["lr"], float) and hp["lr"] > 0:
            self.tracker.finetune["lr"] = hp["lr"]
        self.tracker.open(total, reinit_hook=self.applied_in)

    # -- while training
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._losses.append(loss.detach())
        step = int(trainer.global_step)
        if step == self._step:  # gradient accumulation: no optimizer step yet
            return
        self._step = step
        every = self.log_every or max(1, int(getattr(trainer, "log_every_n_steps", 1) or 1))
        if step % every == 0 or step == trainer.max_steps:
            scalars: dict[str, float] = {}
            if self._losses:
                scalars["loss"] = float(torch.stack(self._losses).float().mean())
                self._losses.clear()
            if trainer.optimizers and trainer.optimizers[0].param_groups:
                scalars["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
            scalars["epoch"] = float(trainer.current_epoch)
            self.tracker.log(step, **scalars)
        elif self.tracker.diagnose_every and step % self.tracker.diagnose_every == 0:
            self.tracker.diagnose(step)
        if self.tracker.stop_requested:
            trainer.should_stop = True

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.sanity_checking or self.tracker.writer is None:
            return
        metrics = dict(trainer.callback_metrics)
        acc = metric_key(metrics, self.val_acc_key, ("val", "valid"), "acc")
        loss = metric_key(metrics, self.val_loss_key, ("val", "valid"), "loss")
        if acc is None and loss is None:
            if not self._warned_keys:
                self._warned_keys = True
                self.tracker.warn(f"no validation accuracy or loss among the logged metrics {sorted(metrics)}: log "
                                  f"them with self.log('val_acc', acc) / self.log('val_loss', loss) in validation_step, "
                                  f"or pass val_acc_key= / val_loss_key=", step=int(trainer.global_step))
            return
        self.tracker.eval(int(trainer.global_step), val_acc=scalar(metrics[acc]) if acc else None,
                          val_loss=scalar(metrics[loss]) if loss else None)

    # -- the end
    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if self.tracker.writer is None:
            return
        step = int(trainer.global_step)
        self.tracker.last_step = max(self.tracker.last_step or 0, step)
        if self.tracker.stop_requested:
            self.tracker.finish("stopped", f"stop requested; stopped after {step} steps")
        elif trainer.should_stop and (not trainer.max_steps or step < trainer.max_steps):
            self.tracker.finish("finished", f"stopped early by the trainer (e.g. EarlyStopping) after {step} steps")
        else:
            self.tracker.finish("finished", f"completed {step} steps (lightning)")

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        if self.tracker.writer is not None:
            self.tracker.last_step = max(self.tracker.last_step or 0, int(trainer.global_step))
            self.tracker.fail(exception)
        else:
            self.tracker.close_hooks()

    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage == "fit" and self.tracker.writer is not None and self.tracker.writer.summary is None:
            self.tracker.finish("failed", "the fit ended without on_fit_end (see the trainer's output)")
