"""What runs an experiment is made of: expansion into single runs, their names, and checks before a launch."""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Sequence

import yaml

from plasticity_core.config import ConfigError, ExperimentConfig, Refused, read_yaml, short
from plasticity_core.errors import UserError


class LaunchError(UserError):
    """A launch the tool refuses: its message names the input and what to do instead."""


class MissingExtraError(LaunchError):
    """An executor or tracker sink whose optional package is not installed (the message names the pip extra)."""


class RunExistsError(LaunchError):
    """The run or experiment folder is owned by another launch."""


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
            # the run draws its head from its seed (setup.load_setup) and does not probe it (every arm and the
            # baseline start from the same untrained head): the arm records what the run does
            arm_cfg = None if reinit is None else dataclasses.replace(reinit, seed=seed, head_seed=seed, head_probe_steps=0)
            runs.append(dataclasses.replace(config, finetune=dataclasses.replace(config.finetune, seed=seed),
                                            arms={arm: arm_cfg}, seeds=[seed]))
    return runs


def run_name(single: ExperimentConfig) -> str:
    """Folder name of a single-run config: the arm and the seed are visible."""
    (arm,) = single.arms
    return f"{slug(arm)}-seed{single.seeds[0]}"


def check_experiment(config: ExperimentConfig) -> None:
    """Refuse an experiment whose runs would share a folder (arm names equal after ``slug``, repeated seeds) or whose
    ``diagnose_metrics`` names a metric that is not registered."""
    from plasticity_core.metrics.base import METRICS

    for metric in config.finetune.diagnose_metrics:
        try:
            METRICS.get(metric)
        except KeyError as e:
            raise ConfigError(f"FinetuneConfig.diagnose_metrics: {e}") from None
    names: dict[str, str] = {}
    for single in expand_experiment(config):
        name, arm = run_name(single), next(iter(single.arms))
        if name in names:
            raise ConfigError(f"ExperimentConfig: arms {names[name]!r} and {arm!r} with seed {single.seeds[0]} would "
                              f"share the run folder {name!r}; rename an arm or drop the repeated seed")
        names[name] = arm


def apply_overrides(config: ExperimentConfig, overrides: Sequence[str]) -> ExperimentConfig:
    """``["finetune.lr=0.02", "seeds=[0,1,2]", "launch.parallel=3"]`` applied to a copy of ``config``.

    Values are YAML scalars or flow collections (read with ``yaml.safe_load``, never evaluated); the result is
    validated like a config file, so a wrong key or value is a ``ConfigError`` naming it.
    """
    d = config.to_dict()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. finetune.lr=0.02 or seeds=[0,1,2]")
        try:
            value = read_yaml(text) if text.strip() else None
        except Refused as e:
            raise ConfigError(f"override {short(item)}: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({e.problem})") from None
        node, parts = d, key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                if isinstance(node, dict) and part in node and child is None and parts[0] == "arms":
                    child = node[part] = {}
                else:
                    raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])} is not a section of the config")
            node = child
        freeform = parts[0] == "arms" or parts[:2] == ["launch", "slurm"] or (len(parts) > 2 and parts[-2] == "params")
        if not freeform and parts[-1] not in node:
            raise ConfigError(f"override {item!r}: unknown key {key.strip()!r}; "
                              f"known here: {sorted(k for k in node if k != 'schema_version')}")
        node[parts[-1]] = value
    return ExperimentConfig.from_dict(d)


def total_steps(config: ExperimentConfig, n_train: int) -> int:
    """Optimizer steps one run takes (``finetune.steps``, or ``epochs`` over ``n_train`` images as finetune counts)."""
    ft = config.finetune
    if ft.epochs is None:
        return ft.steps
    per_epoch = n_train // ft.batch_size if n_train >= ft.batch_size else 1
    return max(1, math.ceil(ft.epochs * per_epoch))


def noop_arms(config: ExperimentConfig, backbone: Any = None, data: Any = None, quick: bool = False,
              progress: Callable[[int, int], None] | None = None) -> dict[str, str]:
    """Arms that would do nothing, each with the reason: ``{arm: reason}`` (empty when every arm acts).

    An arm does nothing when its patterns reach no layer its strategy acts on, or it is ``cbp`` that can never
    replace a unit (``maturity`` at or beyond the run's total steps, or a zero rate): ``reinit.noop_reason`` on the
    layer map; or when its re-init, previewed on a copy of the loaded backbone with the real data (once per arm),
    touches no unit or weight (e.g. ``redo`` finding no dormant unit). The baseline (no re-init) is never a no-op: it is the control.
    ``backbone``/``data``: already loaded inputs (else loaded as a run would load them). ``quick``: score units on
    one batch (one forward per arm); only an arm that touches nothing there is checked again on the strategy's full
    batches, so a quick check never refuses what the full one would run. ``progress(arms checked, arms)``.
    """
    arms = {a: r for a, r in config.arms.items() if r is not None}
    if not arms:
        return {}
    if backbone is None or data is None:
        from plasticity_core.setup import load_setup

        backbone, data = load_setup(config)
    from plasticity_core.reinit import STRATEGIES, noop_reason, preview_reinit

    model = getattr(backbone, "model", backbone)
    steps = total_steps(config, len(data.train))
    out: dict[str, str] = {}
    def touches_nothing(reinit: Any) -> bool:
        totals = preview_reinit(model, dataclasses.replace(reinit, recalibrate_bn=False), data=data.train).summary()
        return totals["units"] == 0 and totals["weights"] == 0

    for i, (arm, reinit) in enumerate(arms.items()):
        why = noop_reason(model, reinit, steps)  # from the layer map: nothing selected, cbp that never replaces
        if why is None and not STRATEGIES.get(reinit.strategy).during_training:  # on the data: e.g. redo scoring no unit
            scored = "max_batches" in {p.name for p in STRATEGIES.get(reinit.strategy).params}
            one = dataclasses.replace(reinit, params={**reinit.params, "max_batches": 1}) if quick and scored else reinit
            if touches_nothing(one) and (one is reinit or touches_nothing(reinit)):
                why = "its preview on the loaded backbone and data touches no unit or weight"
        if why:
            out[arm] = f"{reinit.strategy} on {config.backbone}: {why}"
        if progress is not None:
            progress(i + 1, len(arms))
    return out
