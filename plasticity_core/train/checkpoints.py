"""Checkpoints of a fine-tune: weights as safetensors, the resume state as plain tensors (``weights_only`` loads).

``model.safetensors``: the newest checkpointed weights (the final ones at the end); ``best.safetensors``: the
weights of the best evaluation; ``state.pt``: what a resume needs besides the weights, plain tensors, numbers,
strings, lists and dicts only, so ``torch.load(weights_only=True)`` reads it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from plasticity_core.config import FinetuneConfig

if TYPE_CHECKING:
    from plasticity_core.train.loop import _Run

MODEL_FILE, BEST_FILE, STATE_FILE = "model.safetensors", "best.safetensors", "state.pt"
CHECKPOINT_FORMAT = 1
# fields a resumed run may change: they do not alter the weights it computes
RESUME_MAY_CHANGE = {"device", "num_workers", "data_path", "data_memory_mb", "compile", "checkpoint", "save_optimizer",
                     "checkpoint_every", "time_limit_s", "eval_every", "eval_batches", "diagnose_every", "diagnose_metrics"}


def _pending(path: Path) -> Path:
    """Where ``path``'s next version is written before it is renamed into place."""
    return path.with_name(path.name + ".tmp")


def _write_weights(model: nn.Module, path: Path, **metadata: Any) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={k: str(v) for k, v in metadata.items()})


def save_weights(model: nn.Module, path: Path, **metadata: Any) -> None:
    """The model's state dict (parameters and buffers) as safetensors, written to a temporary file then renamed."""
    _write_weights(model, _pending(path), **metadata)
    os.replace(_pending(path), path)


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, state) of the checkpoint in ``directory``; refuses a pair written at different steps."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    directory = Path(directory)
    state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    with safe_open(str(directory / MODEL_FILE), framework="pt") as f:
        step = (f.metadata() or {}).get("step")
    pending = _pending(directory / STATE_FILE)
    if step != str(state.get("step")) and pending.is_file():  # stopped between the two renames of _save: the
        try:  # state written with these weights is complete in its temporary file; finish the commit
            newer = torch.load(pending, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - unreadable: not the pair's state, refused below
            newer = {}
        if str(newer.get("step")) == step:
            os.replace(pending, directory / STATE_FILE)
            state = newer
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{directory / STATE_FILE}: checkpoint format {state.get('format')!r} is not supported "
                         f"(this version reads {CHECKPOINT_FORMAT})")
    if step != str(state["step"]):
        raise ValueError(f"{directory}: {MODEL_FILE} is from step {step} but {STATE_FILE} from step {state['step']} "
                         "(a write was interrupted); cannot resume from a mixed checkpoint")
    return load_file(str(directory / MODEL_FILE)), state


def _save(run: _Run, step: int) -> None:
    """A resumable checkpoint at ``step``: weights, then the state that names them."""
    result = run.result
    progress = {k: v for k, v in result.summary().items() if v is not None}
    state = {"format": CHECKPOINT_FORMAT, "step": step, "total_steps": run.total, "batches_per_epoch": run.batches.per_epoch,
             "train_images": len(run.batches.store) if run.batches.store is not None else len(run.data.train),
             "config": run.cfg.to_dict(), "result": progress, "evals": [dict(e) for e in result.evals],
             "rng": {"cpu": torch.get_rng_state(),
                     "cuda": torch.cuda.get_rng_state_all() if run.device.type == "cuda" else []},
             "optimizer": run.optimizer.state_dict() if run.cfg.save_optimizer else None}
    model, saved = run.ckpt / MODEL_FILE, run.ckpt / STATE_FILE
    _write_weights(run.model, _pending(model), step=step)
    torch.save(state, _pending(saved))
    # both are written before either is renamed: a stop between the two renames leaves the new state complete in
    # its temporary file, which load_checkpoint then takes (before, the state was still being written while the
    # new weights were in place, and a killed node left a checkpoint no resume could read)
    os.replace(_pending(model), model)
    os.replace(_pending(saved), saved)
    run.emit("checkpoint", step, path=str(run.ckpt), optimizer=run.cfg.save_optimizer)


def _check_resumable(state: dict[str, Any], cfg: FinetuneConfig, total: int, per_epoch: int, ckpt: Path) -> None:
    saved = state["config"]
    now = cfg.to_dict()
    changed = sorted(k for k in set(saved) | set(now) if k not in RESUME_MAY_CHANGE and saved.get(k) != now.get(k))
    if changed:
        raise ValueError(f"cannot resume from {ckpt}: the config differs in {', '.join(changed)} "
                         f"(checkpoint: {', '.join(f'{k}={saved.get(k)!r}' for k in changed)}); resume with the same "
                         "config or start a new run")
    if state["total_steps"] != total or state["batches_per_epoch"] != per_epoch:
        raise ValueError(f"cannot resume from {ckpt}: the data differ (checkpoint: {state['batches_per_epoch']} batches "
                         f"per epoch, {state['total_steps']} steps; now {per_epoch} and {total})")


def _restore(run: _Run, state: dict[str, Any]) -> None:
    """Optimizer, result so far and RNG state of a checkpoint (the weights and batch position are already set)."""
    if state.get("optimizer") is not None:
        run.optimizer.load_state_dict(state["optimizer"])
    else:
        run.emit("warning", state["step"], message="the checkpoint has no optimizer state (save_optimizer=False): "
                 "momentum / Adam moments restart, so the resumed run differs from an uninterrupted one")
    result = run.result
    for k, v in state["result"].items():
        if k in ("best_val_acc", "final_val_acc", "final_val_loss", "train_loss", "images_per_s", "initial_val_acc",
                 "wall_time_s"):
            setattr(result, k, v)
    result.evals = [dict(e) for e in state["evals"]]
    result.resumed_from = int(state["step"])
    torch.set_rng_state(state["rng"]["cpu"])
    if run.device.type == "cuda" and state["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
