"""The fine-tuning loop: one real training run, reported through events, stoppable within a step. No UI code.

Beside it in ``train/``: the learning-rate schedule and optimizer (``schedule``), checkpoints (``checkpoints``), the
device feed (``feed``) and the run contract its events follow (``events``).

``finetune(model, data, cfg, reinit=None, on_event=None, stop=None, log_every=None, checkpoint_dir=None,
resume=False)`` moves the model to the device, puts the data there when it fits (``data.plan_data_path``: uint8
splits normalised and augmented on the device, else a DataLoader), applies the re-init (which recalibrates BatchNorm
on the train split) before the optimizer exists, evaluates once at step 0, then trains with warm-up + cosine learning
rate, evaluating every ``eval_every`` steps (on the first ``eval_batches`` val batches when set) and at the end (always
the whole val split). Every event is a dict with ``type``, ``step`` and ``time`` (seconds since the process started it):

- ``start``: device, total steps, batches per epoch, ``data_path`` and ``data_path_reason``, ``val_images`` and
  ``eval_images`` (periodic evals), ``compile``, ``resumed_from``, ``notes``; ``optimizer``: parameter count per group;
- ``reinit``: the ``ReinitReport`` table (records) and notes; ``resume``: the checkpoint step continued from;
- ``step``: ``loss`` (mean over the logged window), ``lr``, ``images_per_s``, ``epoch``;
- ``step`` also has ``replaced`` (units replaced in the window) when ``cbp`` runs; ``cbp``: replaced units per layer;
- ``eval``: ``val_acc``, ``val_loss``, ``val_images``, ``full_val`` (step 0 included); ``diagnosis``: ``rows``;
- ``checkpoint``: a resumable checkpoint was written; ``warning``: something the user should know (``message``);
- ``finished`` / ``stopped`` / ``failed``: ``reason``, and the final numbers.

Data order and augmentation come from generators seeded by ``cfg.seed`` only, so every arm of an experiment sees
the same batches on either data path, and a resumed run continues them exactly. On CUDA the loop keeps the loss on
the device and syncs only at log and eval points.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from plasticity_core.config import ConfigError, FinetuneConfig, ReinitConfig
from plasticity_core.errors import UserError
from plasticity_core.hooks import kept_modes
from plasticity_core.registry import registry
from plasticity_core.train.checkpoints import (BEST_FILE, STATE_FILE, _check_resumable, _restore, _save, load_checkpoint,
                                               save_weights)
from plasticity_core.train.events import Clock
from plasticity_core.train.feed import DeviceSplit, TrainBatches, eval_batches, plan_data_path
from plasticity_core.train.schedule import lr_factor, make_optimizer, param_groups

Event = dict[str, Any]
CUDA_LOG_EVERY = 20  # steps between host syncs on CUDA


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


class RunFailed(RuntimeError):
    """A failure the loop detects and reports as a status (non-finite loss, out of memory)."""


@dataclass
class RunResult:
    """What one ``finetune`` call did: final status, accuracies, throughput, the eval curve and the re-init report."""

    status: str  # finished | stopped | failed
    reason: str
    steps: int
    total_steps: int
    best_val_acc: float | None = None  # over every eval, step 0 included
    final_val_acc: float | None = None
    final_val_loss: float | None = None
    train_loss: float | None = None
    wall_time_s: float = 0.0
    images_per_s: float | None = None
    initial_val_acc: float | None = None  # the step-0 evaluation: after the re-init, before any update
    data_path: str = ""  # "device" | "loader"
    resumed_from: int | None = None  # the checkpoint step this process continued from
    evals: list[Event] = field(default_factory=list)
    reinit: Any = None  # ReinitReport or None

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (no eval curve, no report object)."""
        d = asdict(self)
        d.pop("evals"), d.pop("reinit")
        return d


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; an explicit name must be a device this machine has (a UserError if not)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name} is not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={name}: CUDA is not available on this machine; use device='cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device={name}: this machine has {torch.cuda.device_count()} CUDA device(s); use cuda:0 ...")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device={name}: MPS is not available on this machine; use device='cpu'")
    return dev


def _autocast(device: torch.device, cfg: FinetuneConfig):
    if device.type == "cuda" and cfg.amp:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate(model: nn.Module, data: Any, cfg: FinetuneConfig, device: torch.device, max_batches: int | None = None,
             store: DeviceSplit | None = None) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on the val split in stored order, in eval mode; one host sync at the end.

    ``max_batches``: only the first that many batches (a fixed subset), None: the whole split. ``store``: the val
    split already on the device (``finetune`` passes its own); without it the split is read per item.
    """
    acc, loss, _ = _evaluate(model, data, cfg, device, max_batches, store)
    return acc, loss


def _evaluate(model: nn.Module, data: Any, cfg: FinetuneConfig, device: torch.device, max_batches: int | None,
              store: DeviceSplit | None) -> tuple[float, float, int]:
    modes = kept_modes(model)  # every submodule's own mode back afterwards (a frozen BatchNorm stays in eval)
    modes.__enter__()
    model.eval()
    correct = torch.zeros((), device=device)
    loss_sum = torch.zeros((), device=device)
    seen = 0
    mf = _memory_format(device, cfg)
    try:
        with torch.no_grad(), _autocast(device, cfg):
            for x, y in eval_batches(data.val, store, cfg.batch_size, device, max_batches, cfg.num_workers):
                logits = model(x.contiguous(memory_format=mf)).float()
                loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
    finally:
        modes.__exit__(None, None, None)
    if seen == 0:
        raise ValueError("the val split is empty: nothing to evaluate")
    return float(correct) / seen, float(loss_sum) / seen, seen


def _memory_format(device: torch.device, cfg: FinetuneConfig) -> torch.memory_format:
    return torch.channels_last if device.type == "cuda" and cfg.channels_last else torch.contiguous_format


def check_batch_size(model: nn.Module, batch_size: int) -> None:
    """BatchNorm cannot train on batches of one image (its batch statistics are that image): refuse, naming the fix."""
    if batch_size < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError(f"FinetuneConfig.batch_size: 1 cannot train a model with BatchNorm ({type(model).__name__}); "
                          f"use batch_size >= 2, 16 or more is usual")


def finetune(model: nn.Module, data: Any, cfg: FinetuneConfig, reinit: ReinitConfig | None = None,
             on_event: Callable[[Event], None] | None = None, stop: StopFlag | None = None,
             log_every: int | None = None, checkpoint_dir: str | Path | None = None, resume: bool = False) -> RunResult:
    """Fine-tune ``model`` in place on ``data`` (a ``DataBundle``: ``.train``, ``.val``).

    ``reinit`` is applied before the optimizer is created (``cbp`` arms a per-step callback instead); ``stop`` is
    any object with ``is_set()`` (``threading.Event``, a stop file), checked before every step. ``log_every``: steps
    per ``step`` event (default 1 on CPU, ``CUDA_LOG_EVERY`` on CUDA, where each log point is a host sync).
    ``checkpoint_dir``: where ``cfg.checkpoint`` / ``cfg.checkpoint_every`` write ``model.safetensors``,
    ``best.safetensors`` and ``state.pt``; ``resume=True`` continues from the checkpoint there (same weights,
    optimizer, schedule, RNG and batch order as the uninterrupted run) or starts afresh, saying so, if there is none.
    A non-finite loss or an out-of-memory error ends the run as ``failed`` with a reason; any other exception is
    reported as a ``failed`` event and re-raised.
    """
    if not isinstance(cfg, FinetuneConfig):
        raise TypeError(f"cfg must be a FinetuneConfig, got {type(cfg).__name__}")
    if reinit is not None and not isinstance(reinit, ReinitConfig):
        raise TypeError(f"reinit must be a ReinitConfig or None, got {type(reinit).__name__}")
    check_batch_size(model, cfg.batch_size)
    if checkpoint_dir is None and (cfg.checkpoint != "none" or cfg.checkpoint_every or resume):
        raise ValueError(f"checkpoint={cfg.checkpoint!r}, checkpoint_every={cfg.checkpoint_every} and resume={resume} "
                         "need checkpoint_dir= (the folder for model.safetensors and state.pt)")
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    t0 = time.perf_counter()
    emit = _Emitter(on_event, t0)
    result = RunResult(status="failed", reason="", steps=0, total_steps=0)
    run: _Run | None = None
    try:
        saved, state = load_checkpoint(ckpt) if resume and ckpt is not None and (ckpt / STATE_FILE).exists() else (None, None)
        if state is not None and reinit is not None and registry("re-init strategy").get(reinit.strategy).during_training:
            raise ValueError(f"resume is not supported for {reinit.strategy} arms: a strategy acting during training keeps "
                             "per-unit state (e.g. continual backprop's utilities and ages) that is not checkpointed; "
                             "rerun the arm from step 0 (resume=False)")
        device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        mf = _memory_format(device, cfg)
        model.to(device, memory_format=mf)
        plan = plan_data_path(data, cfg.data_path, cfg.data_memory_mb, cfg.num_workers)
        notes = []
        if plan.over_budget:
            warnings.warn(plan.reason, stacklevel=2)
            notes.append(plan.reason)
        train_store = plan.train.to(device) if plan.train is not None else None
        val_store = plan.val.to(device) if plan.val is not None else None
        start = int(state["step"]) if state is not None else 0
        batches = TrainBatches(data.train, train_store, cfg.batch_size, cfg.seed, cfg.augment, device, cfg.num_workers,
                               start=start)
        per_epoch = batches.per_epoch
        total = cfg.steps if cfg.epochs is None else max(1, math.ceil(cfg.epochs * per_epoch))
        if state is not None:
            _check_resumable(state, cfg, total, per_epoch, ckpt)
        elif resume:
            notes.append(f"resume requested but {ckpt} holds no checkpoint ({STATE_FILE}); starting from step 0")
        result.total_steps, result.data_path, result.steps = total, plan.path, start
        log_every = log_every or (CUDA_LOG_EVERY if device.type == "cuda" else 1)
        n_val = len(val_store) if val_store is not None else len(data.val)
        periodic = n_val if cfg.eval_batches is None else min(n_val, cfg.eval_batches * cfg.batch_size)
        emit("start", start, device=str(device), total_steps=total, batches_per_epoch=per_epoch, log_every=log_every,
             data_path=plan.path, data_path_reason=plan.reason, val_images=n_val, eval_images=periodic,
             compile=cfg.compile, resumed_from=start if state is not None else None, notes=notes)
        reference = None
        if cfg.diagnose_every:  # snapshots measure movement (SFE) from the weights as given, before any re-init
            from plasticity_core.metrics import METRICS

            for name in cfg.diagnose_metrics:
                METRICS.get(name)  # an unknown metric fails now, with close matches, not at the first snapshot
            reference = {k: v.detach().clone() for k, v in model.state_dict().items()}
        callback = None
        if state is not None:
            model.load_state_dict(saved)
            emit("resume", start, from_step=start, checkpoint=str(ckpt),
                 note="weights, schedule, RNG and batch order restored; the re-init (if any) is in the weights")
        elif reinit is not None:
            from plasticity_core.reinit import apply_reinit

            report = apply_reinit(model, reinit, data=data.train)
            result.reinit, callback = report, report.step_callback
            emit("reinit", 0, strategy=report.strategy, table=report.table.to_dict("records"), notes=list(report.notes),
                 resolved_layers=list(report.resolved_layers), summary=report.summary())
            torch.manual_seed(cfg.seed)  # the re-init may have drawn from the global RNG; arms must not differ here
        groups = param_groups(model, cfg)
        optimizer = make_optimizer(groups, cfg)
        emit("optimizer", start, groups={g["name"]: sum(p.numel() for p in g["params"]) for g in groups})
        fwd = torch.compile(model) if cfg.compile else model
        run = _Run(model, fwd, data, cfg, device, mf, optimizer, batches, val_store, total, log_every, callback, stop,
                   emit, result, reference, ckpt)
        if state is not None:
            _restore(run, state)
        else:
            _eval(run, full=False, initial=True)  # step 0: what the re-init did, before any update
        _train(run, start)
        if callback is not None and callable(getattr(callback, "replaced", None)):
            emit("cbp", result.steps, replaced=callback.replaced())
        if ckpt is not None and (cfg.checkpoint != "none" or cfg.checkpoint_every):
            _save(run, result.steps)
    except RunFailed as e:
        result.status, result.reason = "failed", str(e)
    except torch.OutOfMemoryError:
        result.status = "failed"
        result.reason = (f"out of memory at step {result.steps} with batch_size={cfg.batch_size}: try a smaller batch "
                         f"(e.g. {max(1, cfg.batch_size // 2)}) or a smaller image_size")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except BaseException as e:
        result.status, result.reason = "failed", f"{type(e).__name__}: {e}"
        result.wall_time_s += time.perf_counter() - t0
        emit("failed", result.steps, reason=result.reason)
        raise
    finally:
        if run is not None:
            run.batches.close()
            close = getattr(run.callback, "close", None)
            if callable(close):
                close()
    result.wall_time_s += time.perf_counter() - t0
    emit(result.status, result.steps, **result.summary())
    return result


class _Emitter(Clock):
    """Builds the loop's events through the run contract (type, step, seconds since start) for the caller's callback."""


@dataclass
class _Run:
    """Everything the step loop, evaluations and checkpoints of one run share."""

    model: nn.Module
    fwd: Callable  # the model or its torch.compile'd wrapper
    data: Any
    cfg: FinetuneConfig
    device: torch.device
    mf: torch.memory_format
    optimizer: torch.optim.Optimizer
    batches: TrainBatches
    val_store: DeviceSplit | None
    total: int
    log_every: int
    callback: Callable | None
    stop: StopFlag | None
    emit: _Emitter
    result: RunResult
    reference: dict[str, torch.Tensor] | None
    ckpt: Path | None


def _train(run: _Run, start: int) -> None:
    """The step loop from step ``start``; fills ``run.result`` as it goes (status, steps, accuracies)."""
    cfg, result, optimizer, emit, device = run.cfg, run.result, run.optimizer, run.emit, run.device
    model, total, per_epoch = run.model, run.total, run.batches.per_epoch
    model.train()
    window_loss = torch.zeros((), device=device)
    bad_step = torch.full((), -1, device=device, dtype=torch.long)  # first step with a non-finite loss, on device
    window_steps = window_images = train_images = window_replaced = 0
    train_time, window_start = 0.0, time.perf_counter()
    deadline = None if cfg.time_limit_s is None else emit.t0 + cfg.time_limit_s
    result.status, result.reason = "finished", f"completed {total} steps" + (f" (resumed at step {start})" if start else "")
    for step in range(start, total):
        if run.stop is not None and run.stop.is_set():
            result.status, result.reason = "stopped", f"stop requested; stopped after {step} of {total} steps"
            break
        if deadline is not None and time.perf_counter() > deadline:
            result.status, result.reason = "stopped", f"time limit of {cfg.time_limit_s:g} s reached after {step} steps"
            break
        factor = lr_factor(step, total, cfg.warmup_steps, cfg.schedule)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        x, y = next(run.batches)
        with _autocast(device, cfg):
            loss = nn.functional.cross_entropy(run.fwd(x.contiguous(memory_format=run.mf)).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if run.callback is not None:
            window_replaced += int(run.callback(model, optimizer, step + 1) or 0)
        done = result.steps = step + 1
        loss = loss.detach()
        window_loss += loss
        bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), done, bad_step)
        window_steps, window_images = window_steps + 1, window_images + len(y)
        eval_due = done % cfg.eval_every == 0 or done == total
        diag_due = bool(cfg.diagnose_every) and done % cfg.diagnose_every == 0
        ckpt_due = run.ckpt is not None and bool(cfg.checkpoint_every) and done % cfg.checkpoint_every == 0 and done < total
        if done % run.log_every == 0 or eval_due or diag_due or ckpt_due:
            mean_loss, bad = float(window_loss) / window_steps, int(bad_step)  # the host sync of this window
            elapsed = time.perf_counter() - window_start
            if bad >= 0:
                raise RunFailed(f"non-finite loss at step {bad} (lr {optimizer.param_groups[0]['lr']:.3g}): the run "
                                "diverged; lower the learning rate or enable grad_clip")
            train_images, train_time = train_images + window_images, train_time + elapsed
            result.train_loss, result.images_per_s = mean_loss, train_images / max(train_time, 1e-9)
            extra = {"replaced": window_replaced} if run.callback is not None else {}
            emit("step", done, loss=mean_loss, lr=optimizer.param_groups[0]["lr"],
                 images_per_s=window_images / max(elapsed, 1e-9), epoch=step // per_epoch, **extra)
            window_loss.zero_()
            window_steps = window_images = window_replaced = 0
            if eval_due:
                _eval(run, full=done == total)
            if diag_due:
                _diagnose(run, done)
            if ckpt_due:
                _save(run, done)
            window_start = time.perf_counter()  # eval, diagnosis and checkpoint time is not training time
    user_stop = result.status == "stopped" and result.reason.startswith("stop requested")
    last = result.evals[-1] if result.evals else None
    if result.steps > 0 and not user_stop and (last is None or last["step"] != result.steps or not last["full_val"]):
        _eval(run, full=True)  # a run cut by its time limit still gets a final accuracy on the whole val split


def _eval(run: _Run, full: bool, initial: bool = False) -> None:
    """One evaluation event: periodic ones on the fixed subset (``eval_batches``), the final one on the whole split."""
    result, cfg = run.result, run.cfg
    max_batches = None if full else cfg.eval_batches
    acc, loss, seen = _evaluate(run.fwd, run.data, cfg, run.device, max_batches, run.val_store)
    whole = seen == (len(run.val_store) if run.val_store is not None else len(run.data.val))
    event = {"type": "eval", "step": result.steps, "val_acc": acc, "val_loss": loss, "val_images": seen, "full_val": whole}
    result.evals.append(event)
    if initial:
        result.initial_val_acc = acc
    else:
        result.final_val_acc, result.final_val_loss = acc, loss
    if result.best_val_acc is None or acc > result.best_val_acc:  # step 0 counts: training may never beat it
        result.best_val_acc = acc
        if run.ckpt is not None and cfg.checkpoint == "best":
            save_weights(run.model, run.ckpt / BEST_FILE, step=result.steps, val_acc=acc)
    run.emit("eval", result.steps, **{k: v for k, v in event.items() if k not in ("type", "step")})


def _diagnose(run: _Run, step: int) -> None:
    """A diagnosis snapshot on the val split (the chosen metric subset); the model returns to train mode."""
    from plasticity_core.metrics import diagnose

    model = run.model
    with kept_modes(model):  # diagnose restores every submodule's mode itself; this keeps it so if it raises midway
        d = diagnose(model, run.data.val, reference=run.reference, metrics=list(run.cfg.diagnose_metrics), max_batches=2,
                     device=run.device)
    rows = [{"layer": r.layer, "metric": r.metric, "value": float(r.value)} for r in d.table.itertuples()]
    run.emit("diagnosis", step, rows=rows)
