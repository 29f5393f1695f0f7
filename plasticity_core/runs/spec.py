"""What runs an experiment is made of: expansion into single runs, their names, and checks before a launch."""
from __future__ import annotations

import dataclasses
import re

from plasticity_core.config import ExperimentConfig


def slug(text: str) -> str:
    """A file-name-safe version of an experiment or arm name."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")
    return s or "run"


def expand_experiment(config: ExperimentConfig) -> list[ExperimentConfig]:
    """One single-run config per arm x seed (arm order, then seed order).

    The run's seed drives the fine-tune (head init, data order, augmentation) and the arm's re-init draw, so every
    arm of one seed sees the same head and batches and the seeds differ in everything random.
    """
    runs = []
    for arm, reinit in config.arms.items():
        for seed in config.seeds:
            arm_cfg = None if reinit is None else dataclasses.replace(reinit, seed=seed)
            runs.append(dataclasses.replace(config, finetune=dataclasses.replace(config.finetune, seed=seed),
                                            arms={arm: arm_cfg}, seeds=[seed]))
    return runs


def run_name(single: ExperimentConfig) -> str:
    """Folder name of a single-run config: the arm and the seed are visible."""
    (arm,) = single.arms
    return f"{slug(arm)}-seed{single.seeds[0]}"
