"""A run of the user's own training loop, written into the run store like ours: ``pc.track`` and ``Tracker``.

``Tracker`` is what every integration writes through (the Lightning and Hugging Face callbacks hold one): it checks
its inputs before anything trains, applies an exported ``ReinitConfig`` where no stale optimizer state can survive
(before the optimizer exists, or with the optimizer so the touched slices' state is zeroed), arms ``cbp`` on the
optimizer's own step (a step post-hook, so it runs after every real update), claims the run folder
``<store>/<name>/<arm>-seed<seed>/`` and writes the run contract through ``train.events.RunWriter``: a ``start``
event, the ``reinit`` event, ``step`` / ``eval`` / ``diagnosis`` events as the loop logs them, a heartbeat while it
trains and a final status with its reason. The run then shows in ``plasticity runs`` / ``compare`` and the
dashboard's Fine-tune page, and a baseline tracked the same way under the same name compares with it.
"""
from __future__ import annotations

import atexit
import fnmatch
import math
import numbers
import os
import time
import uuid
import weakref
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from plasticity_core.config import ExperimentConfig, FinetuneConfig, LaunchConfig, ReinitConfig
from plasticity_core.errors import UserError, user_message
from plasticity_core.hooks import kept_modes
from plasticity_core.layers import layer_map
from plasticity_core.metrics import METRICS, diagnose
from plasticity_core.reinit.apply import apply_reinit
from plasticity_core.reinit.report import ReinitReport
from plasticity_core.runs.sinks import SINKS
from plasticity_core.runs.spec import LaunchError, RunExistsError, slug
from plasticity_core.runs.store import Run, RunStore, check_name
from plasticity_core.train.events import FINAL, SUMMARY_FILE, RunWriter, write_json

DIAGNOSE_METRICS = ("dormant", "saturation")  # what the fine-tune loop's snapshots measure by default
_OPEN: "weakref.WeakSet[Tracker]" = weakref.WeakSet()  # trackers still active, finished as failed at interpreter exit


def is_global_zero() -> bool:
    """Whether this process is the one that writes (rank 0 of a torchrun / Lightning / accelerate launch, or alone)."""
    if os.environ.get("RANK") is not None:
        return os.environ["RANK"].strip() in ("", "0")
    return all(os.environ.get(k, "0").strip() in ("", "0") for k in ("LOCAL_RANK", "NODE_RANK"))


def world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


class IntegrationError(UserError):
    """An integration input the tool refuses before anything trains; the message says what to do instead."""


def load_reinit(reinit: ReinitConfig | str | os.PathLike | None) -> ReinitConfig | None:
    """An exported ``ReinitConfig``: the object itself or the path of its YAML/JSON file (None: a baseline)."""
    if reinit is None or isinstance(reinit, ReinitConfig):
        return reinit
    if isinstance(reinit, (str, os.PathLike)):
        return ReinitConfig.load(reinit)
    raise IntegrationError(f"reinit must be a ReinitConfig or the path of an exported reinit.yaml, got "
                           f"{type(reinit).__name__}")


def check_store(store: RunStore | str | os.PathLike | None) -> RunStore:
    """The run store, refused in one line when its folder cannot be created or written."""
    store = store if isinstance(store, RunStore) else RunStore(store)
    root = Path(store.root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise IntegrationError(f"run store {root}: cannot write there ({e.strerror or type(e).__name__}); pass a "
                               f"folder you can write (store='runs' or $PLASTICITY_RUNS)") from None
    return store


def find_module(model: nn.Module, cfg: ReinitConfig, module: str | None = None) -> tuple[nn.Module, str]:
    """The submodule the config's layer patterns name (``module`` as given, the model itself, or the one child module
    under which they match, e.g. ``model`` of a LightningModule wrapping a timm backbone) and its path ("" for the
    model). Refuses a config whose patterns match no layer."""
    if module:
        try:
            sub = model.get_submodule(module)
        except AttributeError:
            raise IntegrationError(f"module={module!r}: {type(model).__name__} has no submodule {module!r}; pass the "
                                   f"attribute path of the backbone inside it (e.g. module='model')") from None
        names = _layer_names(sub, module)
        if not _matching(names, cfg.layers):
            raise _no_match(cfg, sub, names, module)
        return sub, module
    names = _layer_names(model, None)
    if _matching(names, cfg.layers):
        return model, ""
    prefixes = sorted({n[:i] for n in names for i in range(len(n)) if n[i] == "."}, key=len)
    found = [p for p in prefixes if _matching([n[len(p) + 1:] for n in names if n.startswith(p + ".")], cfg.layers)]
    outer = [p for p in found if not any(p != q and p.startswith(q + ".") for q in found)]
    if len(outer) == 1:
        return model.get_submodule(outer[0]), outer[0]
    if len(outer) > 1:
        raise IntegrationError(f"ReinitConfig layers {cfg.layers} match layers inside several submodules of "
                               f"{type(model).__name__} ({', '.join(outer[:4])}); pass module= naming the backbone "
                               f"the config was exported for")
    raise _no_match(cfg, model, names, None)


def _layer_names(model: nn.Module, module: str | None) -> list[str]:
    try:
        return [layer.name for layer in layer_map(model)]
    except (RuntimeError, UserError) as e:  # no weight layer (yet), or a forward that cannot run on an image batch
        where = f"module={module!r}" if module else type(model).__name__
        raise IntegrationError(f"cannot map the layers of {where}: {e}; pass module= naming the image backbone "
                               f"inside it (e.g. module='model'); nothing was changed or trained") from None


def _matching(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _no_match(cfg: ReinitConfig, model: nn.Module, names: Sequence[str], module: str | None) -> IntegrationError:
    where = f"{module!r} ({type(model).__name__})" if module else type(model).__name__
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return IntegrationError(f"ReinitConfig layers {cfg.layers} match no layer of {where} (its layers: {shown}); export "
                            f"the config from this model's layer names (pc.layer_table(model)) or pass module= naming "
                            f"the backbone inside it; nothing was changed or trained")


def _number(key: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise IntegrationError(f"log: {key} is a tensor of {value.numel()} values; log one number per name "
                                   f"(e.g. {key}=loss.item() or loss.mean())")
        return float(value.detach())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise IntegrationError(f"log: {key}={value!r} is not a number; log numbers (or one-element tensors) only")
    return float(value)


def metric_key(metrics: Mapping[str, Any], wanted: str | None, prefixes: Sequence[str], word: str) -> str | None:
    """The logged metric to read: ``wanted`` if given, else the first name with one of ``prefixes`` containing ``word``
    (``val_acc``, ``val/accuracy``, ``eval_accuracy``, ...)."""
    if wanted is not None:
        return wanted if wanted in metrics else None
    for key in metrics:
        low = key.lower()
        if low.startswith(tuple(prefixes)) and word in low.rsplit("/", 1)[-1]:
            return key
    return None


def scalar(value: Any) -> float | None:
    """A logged value as a float (a one-element tensor or a number), else None."""
    if isinstance(value, torch.Tensor):
        return float(value.detach()) if value.numel() == 1 else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer behind a framework's wrapper (accelerate's AcceleratedOptimizer, Lightning's
    LightningOptimizer): the one that holds the state and runs the step hooks."""
    seen = 0
    while not type(optimizer).__module__.startswith("torch.optim") and hasattr(optimizer, "optimizer") and seen < 4:
        optimizer, seen = optimizer.optimizer, seen + 1
    return optimizer


class Tracker:
    """One tracked run of a training loop that is not ours (see the module docstring; ``pc.track`` makes one).

    Lifecycle: ``prepare(model, optimizers)`` applies the re-init (call it before the optimizer is built where you
    can), ``open(total_steps)`` claims the folder and starts the stream, ``log`` / ``eval`` / ``diagnose`` write
    events, ``finish(status, reason)`` ends it; ``with`` does ``prepare`` + ``open`` on entry and ends the run
    ``finished`` on a normal exit, ``stopped`` on Ctrl-C and ``failed`` with the exception's one-line reason otherwise.
    """

    def __init__(self, store: RunStore | str | os.PathLike | None, name: str, *, model: nn.Module | None = None,
                 reinit: ReinitConfig | str | os.PathLike | None = None, data: Any = None, optimizer: Any = None,
                 config: Mapping[str, Any] | FinetuneConfig | None = None, arm: str | None = None,
                 seed: int | None = None, total_steps: int | None = None, module: str | None = None,
                 diagnose_every: int = 0, diagnose_metrics: Sequence[str] = DIAGNOSE_METRICS,
                 heartbeat_s: float = 5.0, heartbeat_timeout_s: float = 60.0, sinks: Sequence[str] = (),
                 allow_noop: bool = False, source: str = "track") -> None:
        self.passive = not is_global_zero()  # another process of a distributed launch writes the run; this one re-inits
        self.store = store if self.passive and isinstance(store, RunStore) else \
            RunStore(store) if self.passive else check_store(store)
        self.name = check_name("run name", name) if isinstance(name, str) else check_name("run name", str(name))
        self.reinit = load_reinit(reinit)
        self.params, finetune = self._split_config(config)
        self.seed = int(seed if seed is not None else finetune.get("seed", 0))
        self.arm = arm or ("baseline" if self.reinit is None else self.reinit.strategy)
        check_name("arm", f"{slug(self.arm)}-seed{self.seed}")
        if not isinstance(diagnose_every, int) or isinstance(diagnose_every, bool) or diagnose_every < 0:
            raise IntegrationError(f"diagnose_every must be a whole number of steps >= 0 (0: never), got {diagnose_every!r}")
        if diagnose_every and data is None:
            raise IntegrationError(f"diagnose_every={diagnose_every} needs probe images: pass data= (a DataLoader or "
                                   f"Dataset of (image, label) items, e.g. a few batches of your validation set)")
        for metric in diagnose_metrics:
            METRICS.get(metric)  # an unknown metric fails now with close matches, not at the first snapshot
        for sink in sinks:
            SINKS.get(sink).check()
        self.launch = LaunchConfig(sinks=list(sinks), heartbeat_s=heartbeat_s, heartbeat_timeout_s=heartbeat_timeout_s)
        self.finetune = finetune
        self.data, self.module_path, self.source, self.allow_noop = data, module, source, allow_noop
        self.diagnose_every, self.diagnose_metrics = diagnose_every, list(diagnose_metrics)
        self.total_steps = total_steps
        self.model: nn.Module | None = model
        self.module: nn.Module | None = None  # the (sub)module re-initialised and diagnosed
        self.report: ReinitReport | None = None
        self.reinit_optimizers = 0  # optimizers that existed when the re-init was applied (0: built after it)
        self.optimizers: list[Any] = [] if optimizer is None else [optimizer]
        self.writer: RunWriter | None = None
        self.run: Run | None = None
        self.notes: list[str] = []
        self.steps = 0  # optimizer steps seen by the step hook (cbp numbering)
        self.last_step: int | None = None
        self.evals: list[dict[str, Any]] = []
        self.train_loss: float | None = None
        self._prepared = self._opened = False
        self._replaced = 0
        self._hooks: list[Any] = []
        self._reference: dict[str, torch.Tensor] | None = None
        self._last_diagnosis: int | None = None
        self._t0 = time.perf_counter()
        if not self.passive:
            self._check_free()

    # -- inputs
    @staticmethod
    def _split_config(config: Mapping[str, Any] | FinetuneConfig | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(every hyperparameter as given, the ones that are ``FinetuneConfig`` fields)."""
        if config is None:
            return {}, {}
        if isinstance(config, FinetuneConfig):
            d = config.to_dict()
            return d, d
        if not isinstance(config, Mapping):
            raise IntegrationError(f"config must be a dict of your hyperparameters (or a FinetuneConfig), got "
                                   f"{type(config).__name__}")
        known = set(FinetuneConfig().to_dict()) - {"schema_version"}
        params = {str(k): (v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else str(v))
                  for k, v in config.items()}
        finetune = {k: v for k, v in params.items() if k in known}
        try:
            FinetuneConfig.from_dict(finetune)
        except Exception:  # noqa: BLE001 - values FinetuneConfig would refuse stay in params only
            finetune = {k: v for k, v in finetune.items() if k in ("seed",) and isinstance(v, int)}
        return params, finetune

    def _folder(self) -> Path:
        return Path(self.store.root) / self.name / f"{slug(self.arm)}-seed{self.seed}"

    def _check_free(self) -> None:
        folder = self._folder()
        if folder.exists():
            raise RunExistsError(f"run {self.name}/{folder.name} exists already in {self.store.root}; pass another "
                                 f"name (or arm=/seed=) for a new run, nothing was trained")

    # -- before training
    def prepare(self, model: nn.Module | None = None, optimizers: Iterable[Any] = ()) -> ReinitReport | None:
        """Apply the re-init to ``model`` (zeroing the touched slices' state in ``optimizers`` that exist already).

        Refuses, before anything trains, a config whose layers match nothing in the model and one that touches no
        layer (``allow_noop`` runs it anyway). Idempotent: a second call does nothing.
        """
        if self._prepared:
            return self.report
        model = model if model is not None else self.model
        self.model = model
        self.optimizers.extend(o for o in optimizers if o is not None and o not in self.optimizers)
        if model is not None and (self.diagnose_every or self.reinit is not None):
            if self.reinit is not None:
                self.module, self.module_path = find_module(model, self.reinit, self.module_path)
            else:
                self.module = model.get_submodule(self.module_path) if self.module_path else model
            if self.diagnose_every and any(m in ("sfe", "sfe_rel") for m in self.diagnose_metrics):
                self._reference = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        if self.reinit is not None:
            if model is None:
                raise IntegrationError("reinit= needs the model to apply it to: pass model= (or call "
                                       "pc.apply_reinit(model, cfg) yourself and track without reinit=)")
            opt = self._holder(self.module)
            try:
                report = apply_reinit(self.module, self.reinit, data=self.data, optimizer=opt)
            except UserError:
                raise
            except (ValueError, TypeError) as e:
                raise IntegrationError(f"the re-init cannot be applied: {user_message(e) or e}; nothing was trained"
                                       + ("" if self.data is not None else " (pass data= with target images)")) from None
            self.reinit_optimizers = len(self.optimizers)
            if not report.resolved_layers and not self.allow_noop:
                _close(report.step_callback)
                raise IntegrationError(f"the {self.reinit.strategy} re-init touches no layer of {type(self.module).__name__}"
                                       f" ({'; '.join(report.notes) or 'nothing selected'}): this run would be a "
                                       f"baseline; fix the layers, or pass allow_noop=True to run it anyway")
            self.report = report
            self.notes.extend(n for n in report.notes if not n.startswith("no optimizer given"))
        self._prepared = True
        return self.report

    def _holder(self, module: nn.Module) -> Any:
        """The torch optimizer among the run's that updates most of ``module``'s parameters (None: none does, so none
        can hold state of them)."""
        params = {id(p) for p in module.parameters()}
        counts = []
        for o in (_unwrap_optimizer(o) for o in self.optimizers):
            held = sum(id(p) in params for g in getattr(o, "param_groups", []) for p in g["params"])
            if held:
                counts.append((held, o))
        if len(counts) > 1:
            self.notes.append(f"{len(counts)} optimizers update {type(module).__name__}: the re-init reset the state in "
                              f"the one holding most of its parameters")
        return max(counts, key=lambda c: c[0])[1] if counts else None

    def skip_reinit(self, model: nn.Module, note: str) -> None:
        """Prepared without applying the re-init (a run resumed from a checkpoint that holds it); ``note`` says so."""
        self.model, self._prepared = model, True
        self.notes.append(note)
        try:
            self.module = find_module(model, self.reinit, self.module_path)[0] if self.reinit is not None else model
        except IntegrationError:
            self.module = model

    def attach(self, *optimizers: Any) -> None:
        """The optimizers of the run (once they exist): a ``cbp`` re-init steps after each of their steps."""
        for o in optimizers:
            if o is not None and o not in self.optimizers:
                self.optimizers.append(o)

    def _arm_step_hook(self) -> None:
        callback = self.report.step_callback if self.report is not None else None
        if callback is None:
            return
        if world_size() > 1:
            _close(callback)
            raise IntegrationError(f"{self.reinit.strategy} under a distributed launch (WORLD_SIZE={world_size()}) would "
                                   f"replace different units in each process; run it in one process")
        inner = [_unwrap_optimizer(o) for o in self.optimizers]
        hookable = [o for o in inner if hasattr(o, "register_step_post_hook")]
        if not hookable:
            _close(callback)
            what = "there is no optimizer" if not inner else f"{type(inner[0]).__name__} has no step hooks"
            raise IntegrationError(f"{self.reinit.strategy} replaces units after every optimizer step but {what} to "
                                   f"step after: give it the torch.optim optimizer that trains the model (pc.track: "
                                   f"pass optimizer=; Lightning: return it from configure_optimizers; Hugging Face: "
                                   f"not under DeepSpeed); nothing was trained")
        params = {id(p) for p in self.module.parameters()}
        holder = next((o for o in hookable if any(id(p) in params for g in o.param_groups for p in g["params"])), None)
        if holder is None:
            _close(callback)
            raise IntegrationError(f"{self.reinit.strategy}: none of the given optimizers updates "
                                   f"{type(self.module).__name__}'s parameters; pass the optimizer that trains it")
        ref = weakref.ref(self)

        def after_step(optimizer: Any, args: Any, kwargs: Any) -> None:
            tracker = ref()
            if tracker is not None and tracker.writer is not None:
                tracker.steps += 1
                tracker._replaced += int(callback(tracker.module, optimizer, tracker.steps) or 0)

        self._hooks.append(holder.register_step_post_hook(after_step))

    # -- the stream
    def open(self, total_steps: int | None = None, **start_fields: Any) -> "Tracker":
        """Claim the run folder and start the stream (``start`` and ``reinit`` events, heartbeat, summary running)."""
        if self.writer is not None or (self.passive and self._opened):
            return self
        if not self._prepared:
            self.prepare()
        self.total_steps = int(total_steps) if total_steps else self.total_steps
        self._arm_step_hook()
        self._opened = True
        if self.passive:
            return self
        folder = self._claim()
        self.run = Run(folder)
        sinks = [SINKS.get(name).open(folder, self.run.config) for name in self.launch.sinks]
        self.writer = RunWriter.for_folder(folder, sinks=sinks, heartbeat_s=self.launch.heartbeat_s,
                                           source=self.source, arm=self.arm, seed=self.seed)
        self.writer.open()
        _OPEN.add(self)
        self._t0 = self.writer.t0
        model = self.model
        self.writer.event("start", 0, total_steps=self.total_steps, source=self.source, params=self.params,
                          model=None if model is None else type(model).__name__, module=self.module_path or None,
                          **start_fields)
        if self.report is not None:
            r = self.report
            self.writer.event("reinit", 0, strategy=r.strategy, table=r.table.to_dict("records"), notes=list(r.notes),
                              resolved_layers=list(r.resolved_layers), summary=r.summary(),
                              optimizers_at_reinit=self.reinit_optimizers, module=self.module_path or None)
        for note in self.notes:
            self.writer.event("warning", 0, message=note)
        return self

    def _claim(self) -> Path:
        folder = self._folder()
        root = Path(self.store.root).resolve()
        if not folder.resolve().is_relative_to(root):
            raise LaunchError(f"{folder} would leave the run store {root}")
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(folder)  # the atomic claim: exactly one creator wins
        except FileExistsError:
            raise RunExistsError(f"run {self.name}/{folder.name} exists already in {self.store.root}; pass another "
                                 f"name (or arm=/seed=) for a new run, nothing was trained") from None
        finetune = dict(self.finetune)
        finetune.setdefault("seed", self.seed)
        if self.total_steps:
            finetune["steps"] = int(self.total_steps)
        finetune.update(diagnose_every=self.diagnose_every, diagnose_metrics=self.diagnose_metrics)
        model = self.model
        config = ExperimentConfig(
            name=self.name, backbone=f"{self.source}:{type(model).__name__ if model is not None else 'model'}",
            data=f"{self.source}:data", finetune=FinetuneConfig.from_dict(finetune), arms={self.arm: self.reinit},
            seeds=[self.seed], launch=self.launch)
        config.save(folder / ".config.yaml.tmp")
        text = (folder / ".config.yaml.tmp").read_text()
        (folder / ".config.yaml.tmp").write_text(
            f"# Written by the {self.source} integration around a training script of the user's own: name, arms, seeds,\n"
            f"# finetune.steps / seed / diagnose_* and what `config=` gave describe this run; the other finetune fields\n"
            f"# are defaults, not the script's settings (those are in metrics.jsonl's start event, `params`).\n" + text)
        os.replace(folder / ".config.yaml.tmp", folder / "config.yaml")
        write_json(folder / SUMMARY_FILE, {
            "status": "queued", "reason": f"starting ({self.source})", "experiment": self.name, "arm": self.arm,
            "seed": self.seed, "created_at": time.time(), "heartbeat_timeout_s": self.launch.heartbeat_timeout_s})
        return folder

    @property
    def path(self) -> Path | None:
        """The run folder (None until the run is open)."""
        return None if self.run is None else self.run.path

    @property
    def stop_requested(self) -> bool:
        """Whether a stop was asked for (the dashboard's Stop button or ``plasticity``'s STOP file): end the loop."""
        return self.run is not None and self.run.stop_requested

    def log(self, step: int, **scalars: Any) -> None:
        """Training scalars at ``step`` (optimizer steps done): a ``step`` event (``loss``, ``lr``, any number);
        names starting ``val_`` (``val_acc``, ``val_loss``, ...) go into an ``eval`` event instead. Takes a
        diagnosis snapshot when ``diagnose_every`` divides ``step``."""
        step = self._step(step)
        values = {k: _number(k, v) for k, v in scalars.items()}
        train = {k: v for k, v in values.items() if not k.startswith("val_")}
        val = {k: v for k, v in values.items() if k.startswith("val_")}
        if train:
            if self.report is not None and self.report.step_callback is not None:
                train["replaced"], self._replaced = self._replaced, 0
            if "loss" in train:
                self.train_loss = train["loss"]
            self._write("step", step, **train)
        if val:
            self.eval(step, **val)
        if self.diagnose_every and step > 0 and step % self.diagnose_every == 0 and self._last_diagnosis != step:
            self.diagnose(step)

    def eval(self, step: int, val_acc: float | None = None, val_loss: float | None = None, **extra: Any) -> None:
        """An evaluation at ``step``: ``val_acc`` as a fraction in [0, 1] (the curves and ``compare`` read it),
        ``val_loss`` and any other numbers."""
        step = self._step(step)
        fields = {k: _number(k, v) for k, v in {"val_acc": val_acc, "val_loss": val_loss, **extra}.items()
                  if v is not None}
        acc = fields.get("val_acc")
        if acc is not None and not 0.0 <= acc <= 1.0 and math.isfinite(acc):
            raise IntegrationError(f"eval: val_acc={acc:g} is not a fraction in [0, 1] (a percentage? pass "
                                   f"val_acc={acc / 100:g})")
        event = {"type": "eval", "step": step, **fields}
        self.evals.append(event)
        self._write("eval", step, **fields)

    def diagnose(self, step: int, data: Any = None) -> None:
        """A per-layer diagnosis snapshot of the (sub)module on the probe data (``data`` or the tracker's)."""
        step = self._step(step)
        if self.passive:
            return
        data = data if data is not None else self.data
        module = self.module if self.module is not None else self.model
        if module is None or data is None:
            raise IntegrationError("diagnose needs the model and probe images: pass model= and data= to pc.track")
        with kept_modes(module):  # every submodule's own train/eval mode back (a frozen BatchNorm stays frozen)
            d = diagnose(module, data, reference=self._reference, metrics=self.diagnose_metrics, max_batches=2)
        self._last_diagnosis = step
        rows = [{"layer": r.layer, "metric": r.metric, "value": float(r.value)} for r in d.table.itertuples()]
        self._write("diagnosis", step, rows=rows)

    def warn(self, message: str, step: int | None = None) -> None:
        """A ``warning`` event: something the user should know; the run goes on."""
        self._write("warning", self.last_step if step is None else step, message=message)

    def _step(self, step: Any) -> int:
        if isinstance(step, torch.Tensor):
            step = int(step)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise IntegrationError(f"step must be a whole number >= 0 (optimizer steps done), got {step!r}")
        if self.writer is None:
            self.open()
        self.last_step = step if self.last_step is None else max(self.last_step, step)
        return step

    def _write(self, kind: str, step: int | None, **fields: Any) -> None:
        if self.passive:
            return
        if self.writer is None:
            self.open()
        if self.writer.summary is not None:
            raise IntegrationError(f"run {self.name}/{self.arm} has ended ({self.writer.summary['status']}); start a "
                                   f"new pc.track for more")
        self.writer.event(kind, step, **fields)

    # -- the end
    def finish(self, status: str = "finished", reason: str | None = None) -> dict[str, Any]:
        """End the run with a final status (``finished``, ``stopped``, ``failed``) and its reason; returns the summary."""
        if self.writer is not None and self.writer.summary is not None:
            return self.writer.summary
        if self.passive:
            self.close_hooks()
            return {}
        if status not in FINAL:
            raise IntegrationError(f"finish: status must be one of {FINAL}, got {status!r}")
        if self.writer is None:
            self.open()
        steps = self.last_step or 0
        if status == "finished" and self.stop_requested:
            status = "stopped"
            reason = reason or f"stop requested; stopped after {steps} steps"
        reason = reason or {"finished": f"completed {steps} steps ({self.source})", "stopped": f"stopped after {steps} steps",
                            "failed": "failed"}[status]
        callback = self.report.step_callback if self.report is not None else None
        if callback is not None and hasattr(callback, "replaced"):
            try:
                self.writer.event("cbp", steps, replaced=callback.replaced())
            except Exception:  # noqa: BLE001 - the final status matters more
                pass
        self.close_hooks()
        accs = [e["val_acc"] for e in self.evals if isinstance(e.get("val_acc"), float) and math.isfinite(e["val_acc"])]
        final = self.evals[-1] if self.evals else {}
        summary = self.writer.finish(status, reason, steps=steps, total_steps=self.total_steps,
                                     best_val_acc=max(accs) if accs else None, final_val_acc=final.get("val_acc"),
                                     final_val_loss=final.get("val_loss"), train_loss=self.train_loss,
                                     wall_time_s=round(time.perf_counter() - self._t0, 3), source=self.source)
        _OPEN.discard(self)
        return summary

    def fail(self, exc: BaseException) -> dict[str, Any]:
        """End the run from the exception that ended the loop: ``stopped`` for Ctrl-C, else ``failed`` with its line."""
        if isinstance(exc, KeyboardInterrupt):
            return self.finish("stopped", f"interrupted (KeyboardInterrupt / Ctrl-C) after {self.last_step or 0} steps")
        line = user_message(exc) or f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        if self.path is not None:
            try:
                import traceback

                (self.path / "error.txt").write_text("".join(traceback.format_exception(exc)))
            except OSError:
                pass
        return self.finish("failed", line)

    def close_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        callback = self.report.step_callback if self.report is not None else None
        _close(callback)

    def start(self) -> "Tracker":
        """``prepare`` + ``open`` without a ``with`` block (then call ``finish``; a process that exits before it
        leaves the run ``failed``)."""
        self.prepare()
        return self.open()

    def __enter__(self) -> "Tracker":
        return self.start()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.finish()
        elif self.writer is not None:
            self.fail(exc)

    def __repr__(self) -> str:
        where = self.path or self._folder()
        status = self.writer.summary["status"] if self.writer is not None and self.writer.summary else \
            ("running" if self.writer is not None else "not started")
        return f"Tracker({where}: {status})"


def _close(callback: Any) -> None:
    close = getattr(callback, "close", None)
    if callable(close):
        close()


def track(store: RunStore | str | os.PathLike | None, name: str, *, model: nn.Module | None = None,
          reinit: ReinitConfig | str | os.PathLike | None = None, data: Any = None, optimizer: Any = None,
          config: Mapping[str, Any] | FinetuneConfig | None = None, arm: str | None = None, seed: int | None = None,
          total_steps: int | None = None, module: str | None = None, diagnose_every: int = 0,
          diagnose_metrics: Sequence[str] = DIAGNOSE_METRICS, heartbeat_s: float = 5.0,
          heartbeat_timeout_s: float = 60.0, sinks: Sequence[str] = (), allow_noop: bool = False) -> Tracker:
    """Track a training loop of your own as a run in ``store`` (a ``RunStore``, a folder, or None: ``./runs``).

    The run folder is ``<store>/<name>/<arm>-seed<seed>``: ``arm`` defaults to the re-init's strategy (``baseline``
    without one), so a baseline and a re-init tracked under one ``name`` compare in ``plasticity compare`` and the
    dashboard. ``reinit`` (a ``ReinitConfig`` or an exported YAML path) is applied to ``model`` on entry: build the
    optimizer after it (or pass ``optimizer=`` and its touched state is zeroed); ``cbp`` needs ``optimizer=`` and
    runs after each of its steps. ``data``: probe/target images (BatchNorm recalibration, unit scoring, diagnosis
    snapshots every ``diagnose_every`` steps). ``config``: your hyperparameters (recorded; ``FinetuneConfig`` fields
    such as ``lr``, ``batch_size``, ``seed`` also go into ``config.yaml``).

    ``with pc.track("runs", "my-exp", model=model, reinit="reinit.yaml") as run:`` then ``run.log(step, loss=...)``
    and ``run.log(step, val_acc=..., val_loss=...)``; the run ends ``finished``, ``stopped`` (Ctrl-C or
    ``run.stop_requested``) or ``failed`` with the reason. Bad inputs are refused here, before anything trains.
    """
    return Tracker(store, name, model=model, reinit=reinit, data=data, optimizer=optimizer, config=config, arm=arm,
                   seed=seed, total_steps=total_steps, module=module, diagnose_every=diagnose_every,
                   diagnose_metrics=diagnose_metrics, heartbeat_s=heartbeat_s, heartbeat_timeout_s=heartbeat_timeout_s,
                   sinks=sinks, allow_noop=allow_noop, source="track")


@atexit.register
def _finish_open_runs() -> None:
    """At interpreter exit, a run still open (no ``with``, no ``finish``) ends ``failed`` with the reason."""
    for tracker in list(_OPEN):
        try:
            tracker.finish("failed", f"the process exited at step {tracker.last_step or 0} before the run was finished "
                                     "(use `with pc.track(...) as run:` or call run.finish())")
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
