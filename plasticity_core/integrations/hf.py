"""``PlasticityCallback`` for the Hugging Face ``Trainer`` (``pip install 'plasticity-lab[hf]'``).

``Trainer(..., callbacks=[PlasticityCallback("reinit.yaml", "runs", "my-exp", data=probe)])`` and the training is a
run in the store: curves, per-layer snapshots and the final status show in ``plasticity runs`` / ``compare`` and
the dashboard's Fine-tune page while it trains.

Where the re-init happens: ``on_init_end``, at the end of ``Trainer.__init__``. The Trainer builds its optimizer
later, inside ``train()`` (``create_optimizer``), so no optimizer state of the old weights can exist; an optimizer
passed in with ``optimizers=(opt, scheduler)`` exists already and its state of the touched slices is zeroed. A
model made by ``model_init`` (at ``train()``) is re-initialised in ``on_train_begin``, before its first step, with
the optimizer given. ``cbp`` runs after every optimizer step (a step post-hook on the torch optimizer).

Curves: the Trainer's own logs (``logging_steps``): ``loss`` / ``learning_rate`` / ``grad_norm`` become ``step``
events, an evaluation's ``eval_loss`` and ``eval_accuracy`` (or the first ``eval_*acc*`` name that
``compute_metrics`` returns; ``val_acc_key=`` picks another) an ``eval`` event, at ``state.global_step``.
Hugging Face has no callback for a failed ``train()``: the callback wraps that Trainer's ``train`` method to
record the exception as the run's ``failed`` (or, for Ctrl-C, ``stopped``) status, then re-raises it.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Any, Mapping, Sequence

from plasticity_core.config import ReinitConfig
from plasticity_core.integrations.track import DIAGNOSE_METRICS, Tracker, metric_key, scalar
from plasticity_core.runs.spec import MissingExtraError
from plasticity_core.runs.store import RunStore

try:
    from transformers import Trainer, TrainerCallback
except ImportError:
    raise MissingExtraError("plasticity_core.integrations.hf needs transformers: pip install 'plasticity-lab[hf]' "
                            "(transformers and accelerate)") from None


def _calling_trainer(depth: int = 12) -> Trainer | None:
    """The ``Trainer`` whose ``__init__`` is calling us (``on_init_end`` runs at its end), found on the call stack."""
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, Trainer):
            return owner
        frame = frame.f_back
    return None


class PlasticityCallback(TrainerCallback):
    """Writes a Hugging Face ``Trainer.train`` into the run store as a run, and applies an exported re-init where no
    stale optimizer state can survive. ``reinit``: a ``ReinitConfig`` or an exported YAML path (None: a baseline);
    ``store``: a ``RunStore`` or folder; ``name``: the experiment (runs under one name compare); ``data``:
    probe/target images (BatchNorm recalibration, unit scoring, diagnosis snapshots every ``diagnose_every`` steps);
    ``module``: the backbone's attribute path inside the model when the config's layer names are relative to it
    (found on its own when unique). Bad input is refused here or in ``Trainer(...)``, before anything trains."""

    def __init__(self, reinit: ReinitConfig | str | os.PathLike | None, store: RunStore | str | os.PathLike | None,
                 name: str, *, data: Any = None, diagnose_every: int = 0,
                 diagnose_metrics: Sequence[str] = DIAGNOSE_METRICS, arm: str | None = None, seed: int | None = None,
                 module: str | None = None, val_acc_key: str | None = None, val_loss_key: str | None = None,
                 config: Mapping[str, Any] | None = None, heartbeat_s: float = 5.0, heartbeat_timeout_s: float = 60.0,
                 sinks: Sequence[str] = (), allow_noop: bool = False) -> None:
        self.tracker = Tracker(store, name, reinit=reinit, data=data, config=config, arm=arm, seed=seed, module=module,
                               diagnose_every=diagnose_every, diagnose_metrics=diagnose_metrics,
                               heartbeat_s=heartbeat_s, heartbeat_timeout_s=heartbeat_timeout_s, sinks=sinks,
                               allow_noop=allow_noop, source="hf")
        self.val_acc_key, self.val_loss_key = val_acc_key, val_loss_key
        self.applied_in: str | None = None  # "on_init_end" (before the Trainer's optimizer) or "on_train_begin"
        self.trainer: Trainer | None = None
        self._warned_keys = False

    # -- before training
    def on_init_end(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                    **kwargs: Any) -> None:
        self.trainer = _calling_trainer()
        if self.trainer is not None:
            self._guard(self.trainer)
        if model is not None:
            self.tracker.prepare(model, [optimizer] if optimizer is not None else [])
            self.applied_in = "on_init_end"

    def _guard(self, trainer: Trainer) -> None:
        """Wrap ``trainer.train`` so an exception leaving it ends the run ``failed`` (Ctrl-C: ``stopped``)."""
        original = trainer.train
        tracker = self.tracker

        @functools.wraps(original)
        def train(*args: Any, **kwargs: Any) -> Any:
            try:
                return original(*args, **kwargs)
            except BaseException as e:
                if tracker.writer is not None and tracker.writer.summary is None:
                    tracker.last_step = max(tracker.last_step or 0, int(trainer.state.global_step))
                    tracker.fail(e)
                else:
                    tracker.close_hooks()
                raise

        trainer.train = train

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        tracker = self.tracker
        if self.trainer is not None:  # with model_init, train() makes a new model; callbacks are still handed the old one
            model = self.trainer.model
            optimizer = self.trainer.optimizer if self.trainer.optimizer is not None else optimizer
        if tracker.writer is not None:
            raise RuntimeError(f"this PlasticityCallback wrote run {tracker.path} already: give another train() a "
                               f"new PlasticityCallback (another name, arm or seed)")
        if model is not None and tracker.model is not None and model is not tracker.model:
            tracker.close_hooks()  # model_init made a new model at train(): re-initialise (and diagnose) that one
            tracker._prepared, tracker.report, tracker.module, tracker.notes = False, None, None, []
        tracker.attach(optimizer)
        if not tracker._prepared:
            tracker.prepare(model, [optimizer])
            self.applied_in = "on_train_begin"
        if state.global_step:
            tracker.notes.append(f"resumed at step {state.global_step} from a checkpoint: its weights replaced the "
                                 f"ones at Trainer init")
        tracker.params = {"learning_rate": args.learning_rate, "per_device_train_batch_size":
                          args.per_device_train_batch_size, "gradient_accumulation_steps":
                          args.gradient_accumulation_steps, "max_steps": state.max_steps,
                          "num_train_epochs": args.num_train_epochs, "optim": str(args.optim),
                          "weight_decay": args.weight_decay, "seed": args.seed, **tracker.params}
        if args.learning_rate > 0:
            tracker.finetune.setdefault("lr", float(args.learning_rate))
        tracker.finetune.setdefault("batch_size", int(args.per_device_train_batch_size))
        tracker.open(state.max_steps or None, reinit_hook=self.applied_in)

    # -- while training
    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
               **kwargs: Any) -> None:
        if self.tracker.writer is None or not logs:
            return
        step = int(state.global_step)
        if "loss" in logs:
            names = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm", "epoch": "epoch"}
            values = {ours: scalar(logs[theirs]) for theirs, ours in names.items() if theirs in logs}
            self.tracker.log(step, **{k: v for k, v in values.items() if v is not None})
        acc = metric_key(logs, self.val_acc_key, ("eval_",), "acc")
        loss = metric_key(logs, self.val_loss_key, ("eval_",), "loss")
        if acc is not None or loss is not None:
            self.tracker.eval(step, val_acc=scalar(logs[acc]) if acc else None,
                              val_loss=scalar(logs[loss]) if loss else None)
        if loss is not None and acc is None and not self._warned_keys:
            self._warned_keys = True
            self.tracker.warn(f"no evaluation accuracy in the Trainer's logs ({sorted(logs)}): pass compute_metrics "
                              f"returning {{'accuracy': ...}} (or val_acc_key=) for the accuracy curve and the "
                              f"comparison", step=step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        tracker, step = self.tracker, int(state.global_step)
        tracker.last_step = max(tracker.last_step or 0, step)
        if tracker.diagnose_every and step % tracker.diagnose_every == 0:
            tracker.diagnose(step)
        if tracker.stop_requested:
            control.should_training_stop = True

    # -- the end
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        tracker, step = self.tracker, int(state.global_step)
        if tracker.writer is None or tracker.writer.summary is not None:
            return
        tracker.last_step = max(tracker.last_step or 0, step)
        if tracker.stop_requested:
            tracker.finish("stopped", f"stop requested; stopped after {step} steps")
        elif state.max_steps and step < state.max_steps:
            tracker.finish("finished", f"ended at step {step} of {state.max_steps}: a callback stopped training "
                                       f"(e.g. EarlyStoppingCallback)")
        else:
            tracker.finish("finished", f"completed {step} steps (hf)")
