"""Dataclass configs with an exact YAML/JSON round trip.

Every config the dashboard, the CLI and a cluster sweep exchange lives here: ``ReinitConfig`` (the exported
re-init recipe), ``FinetuneConfig`` (one training run) and ``ExperimentConfig`` (backbone + data + arms x seeds).
Serialised configs carry ``schema_version``; an unknown version is refused instead of being half-read.
Nothing here evaluates user text: YAML is read with ``yaml.safe_load``.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml

from plasticity_core.errors import UserError

SCHEMA_VERSION = 1


class ConfigError(UserError):
    """A config field is missing, unknown, of the wrong type or out of range."""


class SerializableConfig:
    """Mixin: ``to_dict``/``from_dict`` plus YAML and JSON on top of them."""

    kind: ClassVar[str] = "config"

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.kind}: expected a mapping, got {type(d).__name__}")
        version = d.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ConfigError(
                f"{cls.kind}: schema_version {version!r} is not supported by this plasticity-lab "
                f"(it reads version {SCHEMA_VERSION}); upgrade plasticity-lab or re-export the config"
            )
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{cls.kind}: unknown field(s) {unknown}; allowed: {sorted(names)}")
        return cls(**cls._convert_nested(dict(d)))

    @classmethod
    def _convert_nested(cls, d: dict[str, Any]) -> dict[str, Any]:
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{cls.kind}: not valid YAML: {e}") from None
        return cls.from_dict(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{cls.kind}: not valid JSON: {e}") from None
        return cls.from_dict(data)

    def save(self, path) -> None:
        from pathlib import Path

        p = Path(path)
        p.write_text(self.to_json() if p.suffix == ".json" else self.to_yaml())

    @classmethod
    def load(cls, path):
        from pathlib import Path

        p = Path(path)
        text = p.read_text()
        return cls.from_json(text) if p.suffix == ".json" else cls.from_yaml(text)


def _plain(obj: Any) -> Any:
    """Tuples become lists so that YAML/JSON round trips compare equal."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _check_type(kind: str, name: str, value: Any, types: tuple[type, ...], allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(f"{kind}.{name}: expected {'/'.join(t.__name__ for t in types)}, got bool {value!r}")
    if not isinstance(value, types):
        raise ConfigError(f"{kind}.{name}: expected {'/'.join(t.__name__ for t in types)}, got {type(value).__name__} {value!r}")


@dataclass
class ReinitConfig(SerializableConfig):
    """The exported re-init recipe: which strategy, on which layers, with which parameters.

    ``layers``/``exclude`` are fnmatch patterns over layer names (see ``plasticity_core.layers``);
    ``resolved_layers`` records the layers the strategy acted on, on the model they were chosen on, and
    ``skipped_layers`` the layers the patterns matched but the strategy left alone, with the reason, so a reader
    sees exactly what was touched and what was not. ``params`` are validated against the strategy's declared parameters.
    ``seed`` draws the strategy's randomness (fresh weights, noise); ``head_seed`` is the seed of the fresh classifier
    head of the model the config was chosen and previewed on (``load_backbone(..., num_classes=N, seed=head_seed)``):
    unit scores by gradient run through that head, so ``plasticity reinit`` and the exported snippet load it from the
    same seed to reproduce the preview.
    """

    kind: ClassVar[str] = "ReinitConfig"

    strategy: str = "fire"
    layers: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    head_seed: int = 0
    include_head: bool = False
    recalibrate_bn: bool = True
    bn_batches: int = 20
    resolved_layers: list[str] = field(default_factory=list)
    skipped_layers: dict[str, str] = field(default_factory=dict)
    metric_versions: dict[str, int] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        k = self.kind
        _check_type(k, "strategy", self.strategy, (str,))
        for name in ("layers", "exclude", "resolved_layers"):
            v = getattr(self, name)
            if isinstance(v, str):
                v = [v]
                setattr(self, name, v)
            _check_type(k, name, v, (list, tuple))
            for item in v:
                _check_type(k, f"{name}[]", item, (str,))
            setattr(self, name, list(v))
        _check_type(k, "params", self.params, (dict,))
        _check_type(k, "seed", self.seed, (int,))
        _check_type(k, "head_seed", self.head_seed, (int,))
        _check_type(k, "include_head", self.include_head, (bool,))
        _check_type(k, "recalibrate_bn", self.recalibrate_bn, (bool,))
        _check_type(k, "bn_batches", self.bn_batches, (int,))
        if self.bn_batches < 1:
            raise ConfigError(f"{k}.bn_batches: must be >= 1, got {self.bn_batches}")
        _check_type(k, "metric_versions", self.metric_versions, (dict,))
        _check_type(k, "skipped_layers", self.skipped_layers, (dict,))
        for name, why in self.skipped_layers.items():
            _check_type(k, "skipped_layers[]", name, (str,))
            _check_type(k, f"skipped_layers[{name!r}]", why, (str,))
        self.validate()

    def validate(self) -> None:
        """Check ``strategy`` and ``params`` against the strategy registry (unknown keys, types, ranges)."""
        from plasticity_core.reinit import STRATEGIES

        try:
            info = STRATEGIES.get(self.strategy)
        except KeyError as e:
            raise ConfigError(f"{self.kind}.strategy: {e.args[0]}") from None
        self.params = info.validate_params(self.params)


@dataclass
class FinetuneConfig(SerializableConfig):
    """One fine-tuning run: optimisation, schedule, evaluation and device settings."""

    kind: ClassVar[str] = "FinetuneConfig"

    steps: int = 200
    epochs: float | None = None  # when set, overrides ``steps`` (epochs over the train split)
    batch_size: int = 64
    optimizer: str = "sgd"  # "sgd" (momentum) | "adamw"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 10
    schedule: str = "cosine"  # "cosine" (to zero) | "constant"
    head_lr_scale: float = 1.0  # head LR = lr * head_lr_scale (layer-wise LR for backbone vs head)
    backbone_lr_scale: float = 1.0
    grad_clip: float | None = None
    augment: bool = False
    image_size: int = 64
    seed: int = 0
    device: str = "auto"  # "auto" picks CUDA when present
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # on CUDA
    eval_every: int = 25
    eval_batches: int | None = None  # None: the whole val split
    diagnose_every: int = 0  # 0: never
    diagnose_metrics: list[str] = field(default_factory=lambda: ["dormant", "saturation"])
    time_limit_s: float | None = None
    num_workers: int = 0  # DataLoader workers (loader path; the device path decodes folder images with them once)
    data_path: str = "auto"  # "auto" | "device" (uint8 splits on the training device) | "loader" (a DataLoader)
    data_memory_mb: float = 2048  # the device path's budget for both splits as uint8; over it "auto" takes the loader
    compile: bool = False  # torch.compile the model for training and evaluation
    checkpoint: str = "none"  # "none" | "final" (model.safetensors at the end) | "best" (also best.safetensors)
    save_optimizer: bool = False  # keep the optimizer state in the checkpoint (needed for an exact resume)
    checkpoint_every: int = 0  # steps between resumable checkpoints (preemption); 0: none during the run
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        k = self.kind
        for name in ("steps", "batch_size", "warmup_steps", "image_size", "seed", "eval_every", "diagnose_every", "num_workers",
                     "checkpoint_every"):
            _check_type(k, name, getattr(self, name), (int,))
        for name in ("lr", "momentum", "weight_decay", "head_lr_scale", "backbone_lr_scale"):
            v = getattr(self, name)
            _check_type(k, name, v, (int, float))
            setattr(self, name, float(v))
        _check_type(k, "epochs", self.epochs, (int, float), allow_none=True)
        _check_type(k, "grad_clip", self.grad_clip, (int, float), allow_none=True)
        _check_type(k, "time_limit_s", self.time_limit_s, (int, float), allow_none=True)
        _check_type(k, "eval_batches", self.eval_batches, (int,), allow_none=True)
        _check_type(k, "augment", self.augment, (bool,))
        _check_type(k, "amp", self.amp, (bool,))
        _check_type(k, "channels_last", self.channels_last, (bool,))
        _check_type(k, "compile", self.compile, (bool,))
        _check_type(k, "save_optimizer", self.save_optimizer, (bool,))
        _check_type(k, "data_memory_mb", self.data_memory_mb, (int, float))
        if self.data_path not in ("auto", "device", "loader"):
            raise ConfigError(f"{k}.data_path: must be 'auto', 'device' or 'loader', got {self.data_path!r}")
        if self.checkpoint not in ("none", "final", "best"):
            raise ConfigError(f"{k}.checkpoint: must be 'none', 'final' or 'best', got {self.checkpoint!r}")
        self.data_memory_mb = float(self.data_memory_mb)
        if not self.data_memory_mb >= 0 or self.checkpoint_every < 0:
            raise ConfigError(f"{k}: data_memory_mb and checkpoint_every must be >= 0")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"{k}.optimizer: must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"{k}.schedule: must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not str(self.device).startswith("cuda:"):
            raise ConfigError(f"{k}.device: must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}")
        for name in ("steps", "batch_size", "image_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{k}.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "momentum", "weight_decay", "head_lr_scale", "backbone_lr_scale", "epochs", "grad_clip",
                     "time_limit_s"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise ConfigError(f"{k}.{name}: must be a finite number, got {v}")
        if self.lr <= 0:
            raise ConfigError(f"{k}.lr: must be > 0, got {self.lr}; a typical fine-tuning lr is 0.01 (sgd) or 1e-3 (adamw)")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"{k}.momentum: must be in [0, 1), got {self.momentum}; 0.9 is usual")
        if self.weight_decay < 0:
            raise ConfigError(f"{k}.weight_decay: must be >= 0, got {self.weight_decay}")
        for name in ("head_lr_scale", "backbone_lr_scale"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{k}.{name}: must be >= 0 (0 freezes those weights), got {getattr(self, name)}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"{k}.grad_clip: must be > 0, or null for no clipping; got {self.grad_clip}")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise ConfigError(f"{k}.time_limit_s: must be > 0 seconds, or null for no limit; got {self.time_limit_s}")
        if self.eval_batches is not None and self.eval_batches < 1:
            raise ConfigError(f"{k}.eval_batches: must be >= 1, or null for the whole val split; got {self.eval_batches}")
        if self.warmup_steps < 0 or self.diagnose_every < 0 or self.num_workers < 0:
            raise ConfigError(f"{k}: warmup_steps, diagnose_every and num_workers must be >= 0")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"{k}.epochs: must be > 0, got {self.epochs}")
        self.diagnose_metrics = list(self.diagnose_metrics)


@dataclass
class LaunchConfig(SerializableConfig):
    """How an experiment's runs get workers: the executor, how many runs at once, resources, liveness, trackers.

    ``executor`` names an entry of ``plasticity_core.runs.EXECUTORS`` (``process``, ``ray``, ``slurm``);
    ``parallel`` is the number of runs at once (process pool size, Ray tasks in flight, Slurm array parallelism).
    A worker writes a heartbeat into its run folder every ``heartbeat_s``; a reader that sees none for
    ``heartbeat_timeout_s`` reports the run ``failed`` (worker killed or its host lost). ``sinks`` are the
    tracker sinks fed from the event stream besides ``metrics.jsonl`` (``tensorboard``, ``mlflow``).
    ``memory_gb_per_run`` is the memory a Slurm task asks for (``--mem``). ``address`` is a Ray cluster address (default ``$RAY_ADDRESS`` or a local Ray runtime); ``slurm`` holds
    submitit parameters (``slurm_partition``, ``timeout_min``, ``gpus_per_node``, ``cluster: local`` for tests).
    """

    kind: ClassVar[str] = "LaunchConfig"

    executor: str = "process"
    parallel: int = 1
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    memory_gb_per_run: float = 8.0  # the Slurm memory request of one run (--mem; launch.slurm mem_gb etc. win)
    address: str | None = None
    slurm: dict[str, Any] = field(default_factory=dict)
    sinks: list[str] = field(default_factory=lambda: ["tensorboard"])
    heartbeat_s: float = 5.0
    heartbeat_timeout_s: float = 60.0
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        k = self.kind
        _check_type(k, "executor", self.executor, (str,))
        _check_type(k, "parallel", self.parallel, (int,))
        if self.parallel < 1:
            raise ConfigError(f"{k}.parallel: must be >= 1 (runs at once), got {self.parallel}")
        for name in ("cpus_per_run", "gpus_per_run", "memory_gb_per_run", "heartbeat_s", "heartbeat_timeout_s"):
            v = getattr(self, name)
            _check_type(k, name, v, (int, float))
            setattr(self, name, float(v))
        if self.cpus_per_run <= 0 or self.gpus_per_run < 0:
            raise ConfigError(f"{k}: cpus_per_run must be > 0 and gpus_per_run >= 0")
        if not 0 < self.memory_gb_per_run < 1e6:
            raise ConfigError(f"{k}.memory_gb_per_run: must be a number of GB above 0, got {self.memory_gb_per_run:g}")
        if self.heartbeat_s <= 0 or self.heartbeat_timeout_s < 2 * self.heartbeat_s:
            raise ConfigError(f"{k}.heartbeat_timeout_s: must be at least twice heartbeat_s ({self.heartbeat_s:g}), "
                              f"got {self.heartbeat_timeout_s:g}")
        _check_type(k, "address", self.address, (str,), allow_none=True)
        _check_type(k, "slurm", self.slurm, (dict,))
        if isinstance(self.sinks, str):
            self.sinks = [self.sinks]
        _check_type(k, "sinks", self.sinks, (list, tuple))
        self.sinks = list(self.sinks)
        from plasticity_core.runs.executors import EXECUTORS
        from plasticity_core.runs.sinks import SINKS

        try:
            EXECUTORS.get(self.executor)
            for sink in self.sinks:
                SINKS.get(sink)
        except KeyError as e:
            raise ConfigError(f"{k}: {e.args[0]}") from None


@dataclass
class ExperimentConfig(SerializableConfig):
    """Backbone + data + one fine-tune config, run for every arm x seed.

    ``arms`` maps an arm name to a ``ReinitConfig`` or ``None`` (the baseline: plain fine-tuning).
    """

    kind: ClassVar[str] = "ExperimentConfig"

    name: str = "experiment"
    backbone: str = "bundled:mobilenetv2_100"
    arch: str | None = None  # architecture for file: checkpoints, e.g. "timm:resnet18"
    pretrained: bool = True
    data: str = "bundled:animal-silhouettes"
    val_fraction: float = 0.2
    data_limit: int | None = None
    train_per_class: int | None = None  # keep N train images per class (low-data runs); the val split is unchanged
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    arms: dict[str, ReinitConfig | None] = field(default_factory=lambda: {"baseline": None})
    seeds: list[int] = field(default_factory=lambda: [0])
    launch: LaunchConfig = field(default_factory=LaunchConfig)  # executor, runs at once, heartbeat, trackers
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        k = self.kind
        _check_type(k, "name", self.name, (str,))
        _check_type(k, "backbone", self.backbone, (str,))
        _check_type(k, "arch", self.arch, (str,), allow_none=True)
        if self.backbone.startswith("file:") and not self.arch:
            raise ConfigError(f"{k}.arch: a file: backbone needs its architecture, e.g. arch: timm:resnet18")
        _check_type(k, "data", self.data, (str,))
        _check_type(k, "pretrained", self.pretrained, (bool,))
        _check_type(k, "val_fraction", self.val_fraction, (int, float))
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"{k}.val_fraction: must be in (0, 1), got {self.val_fraction}")
        _check_type(k, "data_limit", self.data_limit, (int,), allow_none=True)
        _check_type(k, "train_per_class", self.train_per_class, (int,), allow_none=True)
        if self.train_per_class is not None and self.train_per_class < 1:
            raise ConfigError(f"{k}.train_per_class: must be >= 1, got {self.train_per_class}")
        _check_type(k, "finetune", self.finetune, (FinetuneConfig,))
        _check_type(k, "arms", self.arms, (dict,))
        if not self.arms:
            raise ConfigError(f"{k}.arms: at least one arm is needed")
        for name, arm in self.arms.items():
            _check_type(k, f"arms[{name!r}]", arm, (ReinitConfig,), allow_none=True)
        _check_type(k, "seeds", self.seeds, (list, tuple))
        if not self.seeds:
            raise ConfigError(f"{k}.seeds: at least one seed is needed")
        for s in self.seeds:
            _check_type(k, "seeds[]", s, (int,))
        self.seeds = list(self.seeds)
        _check_type(k, "launch", self.launch, (LaunchConfig,))

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["arms"] = {name: (arm.to_dict() if arm is not None else None) for name, arm in self.arms.items()}
        return d

    @classmethod
    def _convert_nested(cls, d: dict[str, Any]) -> dict[str, Any]:
        if isinstance(d.get("finetune"), dict):
            d["finetune"] = FinetuneConfig.from_dict(d["finetune"])
        if isinstance(d.get("launch"), dict):
            d["launch"] = LaunchConfig.from_dict(d["launch"])
        if isinstance(d.get("arms"), dict):
            d["arms"] = {
                name: (ReinitConfig.from_dict(arm) if isinstance(arm, dict) else arm) for name, arm in d["arms"].items()
            }
        return d
