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
from typing import Any, ClassVar, Sequence

import yaml

from plasticity_core.errors import UserError
from plasticity_core.registry import registry

SCHEMA_VERSION = 1


class ConfigError(UserError):
    """A config field is missing, unknown, of the wrong type or out of range."""


MAX_DEPTH = 8  # nesting of any config document or free-form mapping (slurm, params, metric_versions)
MAX_NODES = 10_000  # values in one config document or one free-form mapping
SEED_MAX = 2**32 - 1  # numpy's legacy seeding and every framework accept 0 .. 2^32-1
MAX_IMAGE_SIZE = 4096  # px per side
MAX_INPUT_BATCH_BYTES = 16 * 2**30  # one float32 input batch (batch_size x 3 x image_size^2)
MAX_NAME = 120  # characters of an experiment or arm name (run folder names derive from them)


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (a 5,000-character input is named, not echoed whole)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}...({len(text)} chars)"


class Refused(Exception):
    """Raised inside the YAML loader; ``from_yaml`` words it as a ConfigError of the config's kind."""


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``: the "billion laughs" expansion), duplicate keys
    (YAML would keep the last one silently) and documents nested deeper than ``MAX_DEPTH`` or larger than
    ``MAX_NODES`` values. Anchors alone (``&name`` without a use) are harmless and read."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise Refused(f"line {event.start_mark.line + 1}: the alias *{event.anchor} is not read (anchors and "
                           f"aliases can expand a few bytes into billions of values); write the values out")
        self._depth += 1
        self._nodes += 1
        if self._depth > MAX_DEPTH:
            raise Refused(f"nested deeper than {MAX_DEPTH} levels (line {self.peek_event().start_mark.line + 1})")
        if self._nodes > MAX_NODES:
            raise Refused(f"more than {MAX_NODES} values; a config is far smaller")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen: dict[Any, int] = {}
        if isinstance(node, yaml.MappingNode):
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    key = (key_node.tag, key_node.value)
                    if key in seen:
                        raise Refused(f"line {key_node.start_mark.line + 1}: the key {short(key_node.value)} appears "
                                       f"twice in one mapping (first on line {seen[key]}); keep one")
                    seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


class _PlainDumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:  # never write anchors: StrictLoader would refuse them
        return True


def read_yaml(text: str) -> Any:
    """``yaml.safe_load`` through ``StrictLoader`` (raises ``Refused`` or ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def check_plain(kind: str, name: str, value: Any) -> None:
    """A free-form value (``launch.slurm``, ``params``, ``metric_versions``) is plain data: str/int/finite float/bool/
    None, lists and str-keyed mappings, at most ``MAX_DEPTH`` deep and ``MAX_NODES`` values (shared references count
    each time, so a self-similar structure built in Python is refused before ``asdict`` would expand it)."""
    budget = [MAX_NODES]

    def walk(v: Any, depth: int, where: str) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise ConfigError(f"{kind}.{name}: more than {MAX_NODES} values; a config holds far fewer")
        if depth > MAX_DEPTH:
            raise ConfigError(f"{kind}.{name}: nested deeper than {MAX_DEPTH} levels at {short(where)}")
        if isinstance(v, dict):
            for key, item in v.items():
                if not isinstance(key, str):
                    raise ConfigError(f"{kind}.{where}: keys must be text, got {type(key).__name__} {short(key)}")
                walk(item, depth + 1, f"{where}.{key}")
        elif isinstance(v, (list, tuple)):
            for i, item in enumerate(v):
                walk(item, depth + 1, f"{where}[{i}]")
        elif isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{kind}.{where}: must be a finite number, got {v}")
        elif v is not None and not isinstance(v, (str, int, float, bool)):
            raise ConfigError(f"{kind}.{where}: expected plain data (text, numbers, lists, mappings), "
                              f"got {type(v).__name__}")

    walk(value, 0, name)


def _check_seed(kind: str, name: str, value: int) -> None:
    if not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{kind}.{name}: must be in 0..{SEED_MAX} (2^32-1), got {short(value)}")


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
        return yaml.dump(self.to_dict(), Dumper=_PlainDumper, sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str):
        try:
            data = read_yaml(text)
        except Refused as e:
            raise ConfigError(f"{cls.kind}: {e}") from None
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
        except RecursionError:
            raise ConfigError(f"{cls.kind}: nested deeper than {MAX_DEPTH} levels") from None
        check_plain(cls.kind, "(document)", data)
        return cls.from_dict(data)

    def save(self, path) -> None:
        from pathlib import Path

        p = Path(path)
        p.write_text(self.to_json() if p.suffix == ".json" else self.to_yaml())

    @classmethod
    def load(cls, path):
        """Read a YAML (or ``.json``) file; a folder, a FIFO, binary bytes or a huge file is one ConfigError naming it."""
        import stat
        from pathlib import Path

        p = Path(path)
        where = str(p) if len(str(p)) <= 160 else f"{str(p)[:140]}...({len(str(p))} chars)"
        mode = p.stat().st_mode  # FileNotFoundError names the path
        if stat.S_ISDIR(mode):
            raise ConfigError(f"{where} is a folder, not a config file; give the YAML file inside it")
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{where} is not a regular file (a FIFO, socket or device); give a YAML file")
        if p.stat().st_size > 1 << 20:
            raise ConfigError(f"{where}: {p.stat().st_size} bytes is not a config (they are a few KB)")
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{where} is not a text (UTF-8) file (byte {e.start} is 0x{e.object[e.start]:02x}); "
                              f"give the YAML config") from None
        if "\x00" in text:
            raise ConfigError(f"{where} holds NUL bytes: a binary file, not a YAML config")
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
        raise ConfigError(f"{kind}.{name}: expected {'/'.join(t.__name__ for t in types)}, got {type(value).__name__} "
                          f"{short(value)}")


def _check_finite(kind: str, obj: Any, names: Sequence[str]) -> None:
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{kind}.{name}: must be a finite number, got {v}")


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
    same seed to reproduce the preview. ``head_probe_steps`` > 0: that head was linear-probed for so many steps
    (``pc.probe_head(bb, data.train, steps, seed=head_seed)``) before the units were scored; the CLI repeats it.
    """

    kind: ClassVar[str] = "ReinitConfig"

    strategy: str = "fire"
    layers: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    head_seed: int = 0
    head_probe_steps: int = 0
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
        _check_seed(k, "seed", self.seed)
        _check_type(k, "head_seed", self.head_seed, (int,))
        _check_seed(k, "head_seed", self.head_seed)
        _check_type(k, "head_probe_steps", self.head_probe_steps, (int,))
        if not 0 <= self.head_probe_steps <= 100_000:
            raise ConfigError(f"{k}.head_probe_steps: must be in 0..100000 (0: no probe of the head), "
                              f"got {self.head_probe_steps}")
        _check_type(k, "include_head", self.include_head, (bool,))
        _check_type(k, "recalibrate_bn", self.recalibrate_bn, (bool,))
        _check_type(k, "bn_batches", self.bn_batches, (int,))
        if self.bn_batches < 1:
            raise ConfigError(f"{k}.bn_batches: must be >= 1, got {self.bn_batches}")
        _check_type(k, "metric_versions", self.metric_versions, (dict,))
        check_plain(k, "metric_versions", self.metric_versions)
        for name, version in self.metric_versions.items():
            _check_type(k, f"metric_versions[{short(name)}]", version, (int,))
        _check_type(k, "skipped_layers", self.skipped_layers, (dict,))
        check_plain(k, "skipped_layers", self.skipped_layers)
        for name, why in self.skipped_layers.items():
            _check_type(k, "skipped_layers[]", name, (str,))
            _check_type(k, f"skipped_layers[{name!r}]", why, (str,))
        self.validate()  # the strategy's own check first: it names the parameter, its range and why
        check_plain(k, "params", self.params)

    def validate(self) -> None:
        """Check ``strategy`` and ``params`` against the strategy registry (unknown keys, types, ranges)."""
        try:
            info = registry("re-init strategy").get(self.strategy)
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
        _check_seed(k, "seed", self.seed)
        if isinstance(self.diagnose_metrics, str):
            raise ConfigError(f"{k}.diagnose_metrics: expected a list of metric names, got the text "
                              f"{short(self.diagnose_metrics)}; write a list, e.g. [{self.diagnose_metrics[:40]}]")
        _check_type(k, "diagnose_metrics", self.diagnose_metrics, (list, tuple))
        for name in self.diagnose_metrics:
            _check_type(k, "diagnose_metrics[]", name, (str,))
        if self.data_path not in ("auto", "device", "loader"):
            raise ConfigError(f"{k}.data_path: must be 'auto', 'device' or 'loader', got {self.data_path!r}")
        if self.checkpoint not in ("none", "final", "best"):
            raise ConfigError(f"{k}.checkpoint: must be 'none', 'final' or 'best', got {self.checkpoint!r}")
        self.data_memory_mb = float(self.data_memory_mb)
        _check_finite(k, self, ("data_memory_mb",))
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
        if self.image_size > MAX_IMAGE_SIZE:
            raise ConfigError(f"{k}.image_size: at most {MAX_IMAGE_SIZE} px, got {short(self.image_size)}")
        batch_bytes = self.batch_size * 3 * self.image_size ** 2 * 4
        if batch_bytes > MAX_INPUT_BATCH_BYTES:
            raise ConfigError(f"{k}: one batch of {self.batch_size} images at {self.image_size} px is "
                              f"{batch_bytes / 2**30:.0f} GiB of input alone (limit {MAX_INPUT_BATCH_BYTES // 2**30} GiB); "
                              f"lower batch_size or image_size")
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
        _check_finite(k, self, ("cpus_per_run", "gpus_per_run", "heartbeat_s", "heartbeat_timeout_s"))
        if self.cpus_per_run <= 0 or self.gpus_per_run < 0:
            raise ConfigError(f"{k}: cpus_per_run must be > 0 and gpus_per_run >= 0")
        if not 0 < self.memory_gb_per_run < 1e6:
            raise ConfigError(f"{k}.memory_gb_per_run: must be a number of GB above 0, got {self.memory_gb_per_run:g}")
        if self.heartbeat_s <= 0 or self.heartbeat_timeout_s < 2 * self.heartbeat_s:
            raise ConfigError(f"{k}.heartbeat_timeout_s: must be at least twice heartbeat_s ({self.heartbeat_s:g}), "
                              f"got {self.heartbeat_timeout_s:g}")
        _check_type(k, "address", self.address, (str,), allow_none=True)
        _check_type(k, "slurm", self.slurm, (dict,))
        check_plain(k, "slurm", self.slurm)
        if isinstance(self.sinks, str):
            self.sinks = [self.sinks]
        _check_type(k, "sinks", self.sinks, (list, tuple))
        for sink in self.sinks:
            _check_type(k, "sinks[]", sink, (str,))
        self.sinks = list(self.sinks)
        try:
            registry("executor").get(self.executor)
            for sink in self.sinks:
                registry("tracker sink").get(sink)
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
        if not self.name.strip() or len(self.name) > MAX_NAME:
            raise ConfigError(f"{k}.name: must be 1..{MAX_NAME} characters, got {len(self.name)} ({short(self.name, 60)})")
        _check_type(k, "backbone", self.backbone, (str,))
        if not self.backbone.strip():
            raise ConfigError(f"{k}.backbone: empty; name a model, e.g. timm:resnet18 or bundled:mobilenetv2_100")
        _check_type(k, "arch", self.arch, (str,), allow_none=True)
        if self.backbone.startswith("file:") and not self.arch:
            raise ConfigError(f"{k}.arch: a file: backbone needs its architecture, e.g. arch: timm:resnet18")
        _check_type(k, "data", self.data, (str,))
        if not self.data.strip():
            raise ConfigError(f"{k}.data: empty; name a dataset, e.g. folder:PATH or bundled:animal-silhouettes")
        _check_type(k, "pretrained", self.pretrained, (bool,))
        _check_type(k, "val_fraction", self.val_fraction, (int, float))
        if not 0 < self.val_fraction < 1:  # NaN fails too
            raise ConfigError(f"{k}.val_fraction: must be in (0, 1), got {self.val_fraction}")
        _check_type(k, "data_limit", self.data_limit, (int,), allow_none=True)
        if self.data_limit is not None and self.data_limit < 1:
            raise ConfigError(f"{k}.data_limit: must be >= 1 (images to keep), or null for all; got {self.data_limit}")
        _check_type(k, "train_per_class", self.train_per_class, (int,), allow_none=True)
        if self.train_per_class is not None and self.train_per_class < 1:
            raise ConfigError(f"{k}.train_per_class: must be >= 1, got {self.train_per_class}")
        _check_type(k, "finetune", self.finetune, (FinetuneConfig,))
        _check_type(k, "arms", self.arms, (dict,))
        if not self.arms:
            raise ConfigError(f"{k}.arms: at least one arm is needed")
        for name, arm in self.arms.items():
            _check_type(k, "arms (names)", name, (str,))
            if not name.strip() or len(name) > MAX_NAME:
                raise ConfigError(f"{k}.arms: an arm name must be 1..{MAX_NAME} characters, got {len(name)} "
                                  f"({short(name, 60)})")
            _check_type(k, f"arms[{short(name)}]", arm, (ReinitConfig,), allow_none=True)
        _check_type(k, "seeds", self.seeds, (list, tuple))
        if not self.seeds:
            raise ConfigError(f"{k}.seeds: at least one seed is needed")
        for s in self.seeds:
            _check_type(k, "seeds[]", s, (int,))
            _check_seed(k, "seeds[]", s)
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
            for name, arm in d["arms"].items():
                if arm == {}:
                    raise ConfigError(f"ExperimentConfig.arms[{short(name)}]: empty; write `{name[:40]}: null` "
                                      f"for plain fine-tuning, or give its strategy, e.g. strategy: fire")
            d["arms"] = {
                name: (ReinitConfig.from_dict(arm) if isinstance(arm, dict) else arm) for name, arm in d["arms"].items()
            }
        return d
