"""``finetune`` and the names of the training loop, where they have always been imported from.

The loop lives in ``plasticity_core.train``: ``loop`` (``finetune``, ``RunResult``, evaluation, devices),
``schedule`` (learning rate, optimizer), ``checkpoints`` (weights and resume state), ``feed`` (the device data path)
and ``events`` (the run contract its events follow). This module only re-exports them.
"""
from __future__ import annotations

from plasticity_core.train.checkpoints import (BEST_FILE, CHECKPOINT_FORMAT, MODEL_FILE, RESUME_MAY_CHANGE, STATE_FILE,
                                               load_checkpoint, save_weights)
from plasticity_core.train.loop import (CUDA_LOG_EVERY, Event, RunFailed, RunResult, StopFlag, check_batch_size, evaluate,
                                        finetune, resolve_device)
from plasticity_core.train.schedule import lr_factor, make_optimizer, param_groups

__all__ = ["BEST_FILE", "CHECKPOINT_FORMAT", "CUDA_LOG_EVERY", "Event", "MODEL_FILE", "RESUME_MAY_CHANGE", "STATE_FILE",
           "RunFailed", "RunResult", "StopFlag", "check_batch_size", "evaluate", "finetune", "load_checkpoint",
           "lr_factor", "make_optimizer", "param_groups", "resolve_device", "save_weights"]
