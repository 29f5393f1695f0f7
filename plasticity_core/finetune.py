"""The fine-tuning loop: one real training run, reported through events, stoppable within a step. No UI code.

``finetune(model, data, cfg, reinit=None, on_event=None, stop=None)`` moves the model to the device, applies the
re-init (which recalibrates BatchNorm on the train split) before the optimizer exists, then trains with warm-up +
cosine learning rate, evaluating on the val split every ``eval_every`` steps and at the end. Every event is a
dict with ``type``, ``step`` and ``time`` (seconds since the run started):

- ``start``: device, total steps, batches per epoch; ``optimizer``: parameter count per group;
- ``reinit``: the ``ReinitReport`` table (records) and notes;
- ``step``: ``loss`` (mean over the logged window), ``lr``, ``images_per_s``, ``epoch``;
- ``step`` also has ``replaced`` (units replaced in the window) when ``cbp`` runs; ``cbp``: replaced units per layer;
- ``eval``: ``val_acc``, ``val_loss``; ``diagnosis``: ``rows`` (layer, metric, value);
- ``finished`` / ``stopped`` / ``failed``: ``reason``, and the final numbers.

Data order and augmentation come from generators seeded by ``cfg.seed`` only, so every arm of an experiment sees
the same batches. On CUDA the loop keeps the loss on the device and syncs only at log and eval points.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn

from plasticity_core.config import ConfigError, FinetuneConfig, ReinitConfig

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
    best_val_acc: float | None = None
    final_val_acc: float | None = None
    final_val_loss: float | None = None
    train_loss: float | None = None
    wall_time_s: float = 0.0
    images_per_s: float | None = None
    evals: list[Event] = field(default_factory=list)
    reinit: Any = None  # ReinitReport or None

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (no eval curve, no report object)."""
        d = asdict(self)
        d.pop("evals"), d.pop("reinit")
        return d


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; explicit names must be available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use device='auto' or 'cpu'")
    if name == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device 'mps' requested but MPS is not available; use device='auto' or 'cpu'")
    return torch.device(name)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """LR multiplier at 0-based ``step``: linear warm-up to 1 over ``warmup`` steps, then cosine to 0 (or constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    """Backbone and head parameters with their own LR scale; no weight decay on biases and norm parameters."""
    from plasticity_core.layers import layer_map

    heads = [layer.module_name for layer in layer_map(model) if layer.head]
    head_ids = {id(p) for name in heads for p in model.get_submodule(name).parameters()}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault(("head" if id(p) in head_ids else "backbone", p.ndim > 1), []).append(p)
    scale = {"head": cfg.head_lr_scale, "backbone": cfg.backbone_lr_scale}
    return [dict(params=ps, name=f"{part}{'' if decay else '_no_decay'}", base_lr=cfg.lr * scale[part],
                 lr=cfg.lr * scale[part], weight_decay=cfg.weight_decay if decay else 0.0)
            for (part, decay), ps in sorted(groups.items())]


def make_optimizer(groups: list[dict[str, Any]], cfg: FinetuneConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _batches(data: Any, cfg: FinetuneConfig) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], int]:
    """Endless training batches in a seeded order with seeded augmentation, and the number of batches per epoch.

    Augmentation draws from the global torch RNG inside the dataset; it gets its own saved RNG state here so that
    whatever else consumes random numbers (dropout, a re-init strategy) cannot shift it between arms.
    """
    n = len(data.train)
    if n == 0:
        raise ValueError("the train split is empty")
    drop_last = n >= cfg.batch_size  # avoid a last batch of 1, which BatchNorm cannot train on
    loader = data.loader("train", batch_size=cfg.batch_size, shuffle=True, augment=cfg.augment,
                         num_workers=cfg.num_workers, seed=cfg.seed, drop_last=drop_last)
    per_epoch = len(loader)

    def gen() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        aug_state = torch.Generator().manual_seed(cfg.seed + 7919).get_state()
        while True:
            it = iter(loader)
            while True:
                if cfg.augment and cfg.num_workers == 0:
                    with torch.random.fork_rng(devices=[]):
                        torch.set_rng_state(aug_state)
                        batch = next(it, None)
                        aug_state = torch.get_rng_state()
                else:
                    batch = next(it, None)
                if batch is None:
                    break
                yield batch

    return gen(), per_epoch


def _autocast(device: torch.device, cfg: FinetuneConfig):
    if device.type == "cuda" and cfg.amp:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate(model: nn.Module, data: Any, cfg: FinetuneConfig, device: torch.device) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on the val split, in eval mode; one host sync at the end."""
    loader = data.loader("val", batch_size=cfg.batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=device)
    loss_sum = torch.zeros((), device=device)
    seen = 0
    mf = torch.channels_last if device.type == "cuda" and cfg.channels_last else torch.contiguous_format
    try:
        with torch.no_grad(), _autocast(device, cfg):
            for i, (x, y) in enumerate(loader):
                if cfg.eval_batches is not None and i >= cfg.eval_batches:
                    break
                x = x.to(device, non_blocking=True, memory_format=mf)
                y = y.to(device, non_blocking=True)
                logits = model(x).float()
                loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("the val split is empty: nothing to evaluate")
    return float(correct) / seen, float(loss_sum) / seen


def check_batch_size(model: nn.Module, batch_size: int) -> None:
    """BatchNorm cannot train on batches of one image (its batch statistics are that image): refuse, naming the fix."""
    if batch_size < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError(f"FinetuneConfig.batch_size: 1 cannot train a model with BatchNorm ({type(model).__name__}); "
                          f"use batch_size >= 2, 16 or more is usual")


def finetune(model: nn.Module, data: Any, cfg: FinetuneConfig, reinit: ReinitConfig | None = None,
             on_event: Callable[[Event], None] | None = None, stop: StopFlag | None = None,
             log_every: int | None = None) -> RunResult:
    """Fine-tune ``model`` in place on ``data`` (a ``DataBundle``: ``.train``, ``.val``, ``.loader``).

    ``reinit`` is applied before the optimizer is created (``cbp`` arms a per-step callback instead); ``stop`` is
    any object with ``is_set()`` (``threading.Event``, a stop file), checked before every step. ``log_every``: steps
    per ``step`` event (default 1 on CPU, ``CUDA_LOG_EVERY`` on CUDA, where each log point is a host sync).
    A non-finite loss or an out-of-memory error ends the run as ``failed`` with a reason; any other exception is
    reported as a ``failed`` event and re-raised.
    """
    if not isinstance(cfg, FinetuneConfig):
        raise TypeError(f"cfg must be a FinetuneConfig, got {type(cfg).__name__}")
    if reinit is not None and not isinstance(reinit, ReinitConfig):
        raise TypeError(f"reinit must be a ReinitConfig or None, got {type(reinit).__name__}")
    check_batch_size(model, cfg.batch_size)
    t0 = time.perf_counter()
    emit = _Emitter(on_event, t0)
    result = RunResult(status="failed", reason="", steps=0, total_steps=0)
    callback, reference = None, None
    try:
        device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        mf = torch.channels_last if device.type == "cuda" and cfg.channels_last else torch.contiguous_format
        model.to(device, memory_format=mf)
        batches, per_epoch = _batches(data, cfg)
        total = cfg.steps if cfg.epochs is None else max(1, math.ceil(cfg.epochs * per_epoch))
        result.total_steps = total
        log_every = log_every or (CUDA_LOG_EVERY if device.type == "cuda" else 1)
        emit("start", 0, device=str(device), total_steps=total, batches_per_epoch=per_epoch, log_every=log_every)
        if cfg.diagnose_every:  # snapshots measure movement (SFE) from the weights as given, before any re-init
            from plasticity_core.metrics import METRICS

            for name in cfg.diagnose_metrics:
                METRICS.get(name)  # an unknown metric fails now, with close matches, not at the first snapshot
            reference = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if reinit is not None:
            from plasticity_core.reinit import apply_reinit

            report = apply_reinit(model, reinit, data=data.train)
            result.reinit, callback = report, report.step_callback
            emit("reinit", 0, strategy=report.strategy, table=report.table.to_dict("records"), notes=list(report.notes),
                 resolved_layers=list(report.resolved_layers), summary=report.summary())
            torch.manual_seed(cfg.seed)  # the re-init may have drawn from the global RNG; arms must not differ here
        groups = param_groups(model, cfg)
        optimizer = make_optimizer(groups, cfg)
        emit("optimizer", 0, groups={g["name"]: sum(p.numel() for p in g["params"]) for g in groups})
        _train(model, data, cfg, device, mf, optimizer, batches, per_epoch, total, log_every, callback, stop, emit, result,
               reference)
        if callback is not None and callable(getattr(callback, "replaced", None)):
            emit("cbp", result.steps, replaced=callback.replaced())
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
        result.wall_time_s = time.perf_counter() - t0
        emit("failed", result.steps, reason=result.reason)
        raise
    finally:
        close = getattr(callback, "close", None)
        if callable(close):
            close()
    result.wall_time_s = time.perf_counter() - t0
    emit(result.status, result.steps, **result.summary())
    return result


class _Emitter:
    """Builds events (type, step, time since start) and hands them to the caller's callback."""

    def __init__(self, on_event: Callable[[Event], None] | None, t0: float) -> None:
        self.on_event, self.t0 = on_event, t0

    def __call__(self, kind: str, step: int, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event({"type": kind, "step": step, "time": round(time.perf_counter() - self.t0, 4), **fields})


def _train(model: nn.Module, data: Any, cfg: FinetuneConfig, device: torch.device, mf: torch.memory_format,
           optimizer: torch.optim.Optimizer, batches: Iterator, per_epoch: int, total: int, log_every: int,
           callback: Callable | None, stop: StopFlag | None, emit: _Emitter, result: RunResult,
           reference: dict[str, torch.Tensor] | None) -> None:
    """The step loop; fills ``result`` as it goes (status, steps, accuracies)."""
    model.train()
    window_loss = torch.zeros((), device=device)
    bad_step = torch.full((), -1, device=device, dtype=torch.long)  # first step with a non-finite loss, on device
    window_steps = window_images = train_images = window_replaced = 0
    train_time, window_start = 0.0, time.perf_counter()
    deadline = None if cfg.time_limit_s is None else emit.t0 + cfg.time_limit_s
    result.status, result.reason = "finished", f"completed {total} steps"
    for step in range(total):
        if stop is not None and stop.is_set():
            result.status, result.reason = "stopped", f"stop requested; stopped after {step} of {total} steps"
            break
        if deadline is not None and time.perf_counter() > deadline:
            result.status, result.reason = "stopped", f"time limit of {cfg.time_limit_s:g} s reached after {step} steps"
            break
        factor = lr_factor(step, total, cfg.warmup_steps, cfg.schedule)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        x, y = next(batches)
        x = x.to(device, non_blocking=True, memory_format=mf)
        y = y.to(device, non_blocking=True)
        with _autocast(device, cfg):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if callback is not None:
            window_replaced += int(callback(model, optimizer, step + 1) or 0)
        done = result.steps = step + 1
        loss = loss.detach()
        window_loss += loss
        bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), done, bad_step)
        window_steps, window_images = window_steps + 1, window_images + len(y)
        eval_due = done % cfg.eval_every == 0 or done == total
        diag_due = bool(cfg.diagnose_every) and done % cfg.diagnose_every == 0
        if done % log_every == 0 or eval_due or diag_due:
            mean_loss, bad = float(window_loss) / window_steps, int(bad_step)  # the host sync of this window
            elapsed = time.perf_counter() - window_start
            if bad >= 0:
                raise RunFailed(f"non-finite loss at step {bad} (lr {optimizer.param_groups[0]['lr']:.3g}): the run "
                                "diverged; lower the learning rate or enable grad_clip")
            train_images, train_time = train_images + window_images, train_time + elapsed
            result.train_loss, result.images_per_s = mean_loss, train_images / max(train_time, 1e-9)
            extra = {"replaced": window_replaced} if callback is not None else {}
            emit("step", done, loss=mean_loss, lr=optimizer.param_groups[0]["lr"],
                 images_per_s=window_images / max(elapsed, 1e-9), epoch=step // per_epoch, **extra)
            window_loss.zero_()
            window_steps = window_images = window_replaced = 0
            if eval_due:
                _eval(model, data, cfg, device, result, emit)
            if diag_due:
                _diagnose(model, data, cfg, device, done, emit, reference)
            window_start = time.perf_counter()  # eval and diagnosis time is not training time
    user_stop = result.status == "stopped" and result.reason.startswith("stop requested")
    if result.steps > 0 and not user_stop and (not result.evals or result.evals[-1]["step"] != result.steps):
        _eval(model, data, cfg, device, result, emit)  # a run cut by its time limit still gets a final accuracy


def _eval(model: nn.Module, data: Any, cfg: FinetuneConfig, device: torch.device, result: RunResult, emit: _Emitter) -> None:
    acc, loss = evaluate(model, data, cfg, device)
    result.final_val_acc, result.final_val_loss = acc, loss
    result.best_val_acc = acc if result.best_val_acc is None else max(result.best_val_acc, acc)
    event = {"type": "eval", "step": result.steps, "val_acc": acc, "val_loss": loss}
    result.evals.append(event)
    emit("eval", result.steps, val_acc=acc, val_loss=loss)


def _diagnose(model: nn.Module, data: Any, cfg: FinetuneConfig, device: torch.device, step: int, emit: _Emitter,
              reference: dict[str, torch.Tensor] | None) -> None:
    """A diagnosis snapshot on the val split (the chosen metric subset); the model returns to train mode."""
    from plasticity_core.metrics import diagnose

    was_training = model.training
    try:
        d = diagnose(model, data.val, reference=reference, metrics=list(cfg.diagnose_metrics), max_batches=2, device=device)
    finally:
        model.train(was_training)
    rows = [{"layer": r.layer, "metric": r.metric, "value": float(r.value)} for r in d.table.itertuples()]
    emit("diagnosis", step, rows=rows)
