"""The ``plasticity`` command: the same library calls the dashboard makes, from a shell or a cluster job.

    plasticity assets fetch|list
    plasticity layers   --model SPEC
    plasticity diagnose --model SPEC --data SPEC [--metrics M ...] --out FILE.parquet
    plasticity reinit   --config reinit.yaml --model SPEC [--data SPEC] --out model.safetensors
    plasticity finetune --config experiment.yaml [KEY=VALUE ...] [--executor process|ray|slurm] [--store runs]
    plasticity runs     [--store runs]
    plasticity compare  RUN_DIR ...
    plasticity dashboard [streamlit options, e.g. --server.port 8600]

A user error (a bad spec, a missing file, an unwritable --out, ...) is one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _progress(label: str):
    """A tqdm bar on stderr driven by ``callback(done, total)`` (the library's progress hook), like the run bars."""
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, bar_format=f"{label} [{{bar:30}}] {{n_fmt}}/{{total_fmt}}", ascii=" #", file=sys.stderr)
        bar.total, bar.n = total, done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def _backbone(args, num_classes: int | None = None, head_seed: int = 0):
    from plasticity_core.models import load_backbone

    return load_backbone(args.model, pretrained=not args.random_init, num_classes=num_classes, arch=args.arch,
                         seed=head_seed)


def _data(args, backbone):
    import warnings

    from plasticity_core.data import SkippedFilesWarning, load_dataset
    from plasticity_core.models import check_image_size

    if backbone is not None:
        check_image_size(backbone, args.image_size)
    with warnings.catch_warnings():  # said once below, as a note, instead of a Python warning
        warnings.simplefilter("ignore", SkippedFilesWarning)
        data = load_dataset(args.data, image_size=args.image_size, val_fraction=args.val_fraction, seed=args.seed,
                            limit=args.limit, data_config=backbone.data_config if backbone else None)
    skipped = data.info.get("skipped")
    if skipped:
        print(f"note: {skipped}", file=sys.stderr)
    return data


def _writable(path: str, flag: str = "--out") -> Path:
    """``path`` as a Path once it is known to be writable: checked before any computation, not after it."""
    from plasticity_core.errors import UserError

    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{flag} {p} is a folder; give a file name inside it")
    if p.exists() and not p.is_file():  # /dev/full, a FIFO: a write would vanish or block, and "saved" would be a lie
        raise UserError(f"{flag} {p} is a device, not a file (a FIFO, socket or device); give a file path")
    blocker = next((a for a in p.parents if a.exists() and not a.is_dir()), None)
    if blocker is not None:
        raise UserError(f"{flag} {p} cannot be written: {blocker} is a file, not a folder; choose another path")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        existed = p.exists()
        with open(p, "ab"):
            pass
        if not existed:
            p.unlink()
    except OSError as e:
        raise UserError(f"{flag} {p} cannot be written ({e.strerror or type(e).__name__}); choose a path you can write") from None
    try:
        st = os.statvfs(p.parent)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    if free is not None and free < 1 << 20:  # refused now, not after the computation
        raise UserError(f"{flag} {p} cannot be written: the disk is full ({free // 1024} KiB free); free space or "
                        f"choose another folder")
    return p


def _table(df) -> str:
    """A table for the terminal: floats to 6 significant digits (a fixed number of decimals printed a 1e-11 weight
    norm as 0)."""
    return df.to_string(float_format=lambda v: f"{v:.6g}")


def _device(name: str | None) -> str | None:
    """``--device`` checked before any work (``finetune.resolve_device``: a device this machine has)."""
    if name is not None:
        from plasticity_core.finetune import resolve_device

        resolve_device(name)
    return name


def cmd_assets(args) -> int:
    from plasticity_core import assets

    if args.action == "fetch":
        assets.fetch_assets(force=args.force)
    for row in assets.status():
        print(f"{'ok     ' if row['cached'] else 'missing'} {row['key']:<20} {row['package']:<42} {row['path']}")
    return 0


def cmd_layers(args) -> int:
    import pandas as pd

    from plasticity_core.layers import layer_table

    df = layer_table(_backbone(args).model)
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(df[["name", "kind", "shape", "params", "group", "act_type", "grouped", "patch_embed", "head"]].to_string())
    for name, aliases in df.loc[df["aliases"] != "", ["name", "aliases"]].itertuples(index=False):
        print(f"note: {name} is tied to {aliases} (one weight, listed once; changing it changes all)", file=sys.stderr)
    for name, why in df.attrs.get("uncovered", []):
        print(f"note: not in the layer map: {name}: {why}", file=sys.stderr)
    return 0


def cmd_diagnose(args) -> int:
    from plasticity_core.metrics import diagnose

    out = _writable(args.out)
    device = _device(args.device)
    from plasticity_core.setup import load_setup

    bb = _backbone(args, head_seed=args.head_seed)
    data = _data(args, bb)
    if bb.num_classes != data.num_classes:
        print(f"note: the model's head has {bb.num_classes} outputs and the data {data.num_classes} classes: "
              f"diagnosing with a fresh {data.num_classes}-class head drawn from seed {args.head_seed} "
              f"(--head-seed; gradient metrics use it)", file=sys.stderr)
    bb, data = load_setup(bb, data, head_seed=args.head_seed)  # the setup's order; the weights were loaded once
    if args.head_probe_steps:
        from plasticity_core.head_probe import probe_head

        probe = probe_head(bb, data.train, steps=args.head_probe_steps, seed=args.head_seed)
        print(f"note: head linear-probed for {probe['steps']} steps (seed {probe['seed']}, last train acc "
              f"{probe['last_acc']:.0%})", file=sys.stderr)
    d = diagnose(bb, data.val, metrics=args.metrics, max_batches=args.batches, device=device,
                 progress=_progress("diagnose"))
    d.save(out)
    print(_table(d.wide()))
    if d.meta.get("no_gradient"):
        print(f"note: gradient metrics are n/a for {len(d.meta['no_gradient'])} layer(s) whose output never joined the "
              f"autograd graph (run under no_grad or detached): {', '.join(d.meta['no_gradient'][:8])}", file=sys.stderr)
    for name, why in d.meta.get("uncovered", []):
        print(f"note: not diagnosed: {name}: {why}", file=sys.stderr)
    if note := d.slow_path_note():
        print(f"note: {note}", file=sys.stderr)
    print(f"saved {out}", file=sys.stderr)
    return 0


def cmd_reinit(args) -> int:
    from plasticity_core.config import ReinitConfig
    from plasticity_core.finetune import save_weights
    from plasticity_core.models import check_head
    from plasticity_core.reinit import apply_reinit

    out = _writable(args.out)
    cfg = ReinitConfig.load(args.config)
    head_seed = cfg.head_seed if args.head_seed is None else args.head_seed
    bb = _backbone(args, num_classes=args.num_classes, head_seed=head_seed)
    if bb.head_seed is not None:
        print(f"note: fresh {bb.num_classes}-class head drawn from seed {head_seed} "
              f"({'--head-seed' if args.head_seed is not None else 'the config' + chr(39) + 's head_seed'})", file=sys.stderr)
    data = None
    if args.data:
        bundle = _data(args, bb)
        check_head(bb, bundle, fix="num_classes=")
        data = bundle.train
    if cfg.head_probe_steps:
        from plasticity_core.errors import UserError
        from plasticity_core.head_probe import probe_head

        if data is None:
            raise UserError(f"the config's head was linear-probed for {cfg.head_probe_steps} steps before scoring: "
                            f"give --data to repeat that probe")
        probe_head(bb, data, steps=cfg.head_probe_steps, seed=head_seed)
        print(f"note: head linear-probed for {cfg.head_probe_steps} steps (seed {head_seed}), as the config records",
              file=sys.stderr)
    report = apply_reinit(bb.model, cfg, data=data)
    print(_table(report.table))
    for note in getattr(report, "notes", []):
        print(f"note: {note}", file=sys.stderr)
    save_weights(bb.model, out)
    print(f"saved re-initialised weights to {out}", file=sys.stderr)
    return 0


class _RunBars:
    """One tqdm bar per run, fed from the run folders' event streams (whatever executor runs them)."""

    def __init__(self) -> None:
        self.bars: dict[str, object] = {}

    def __call__(self, run, event: dict) -> None:
        from tqdm import tqdm

        from plasticity_core.train.events import FINAL

        kind, key = event.get("type"), f"{run.experiment}/{run.name}"
        if kind == "start":
            self.bars[key] = tqdm(total=int(event.get("total_steps") or 0), desc=f"{run.name:<24}", unit="step",
                                  position=len(self.bars), leave=True, file=sys.stderr, dynamic_ncols=True)
        bar = self.bars.get(key)
        if bar is not None and kind in ("step", "eval") and isinstance(event.get("step"), int):
            bar.update(max(0, event["step"] - bar.n))
            if kind == "eval":
                bar.set_postfix(val_acc=f"{event['val_acc']:.4f}")
        if kind in FINAL:
            if bar is not None:
                bar.close()
            tqdm.write(f"{run.name:<24} {kind} at step {event.get('step')}: {event.get('reason') or ''}", file=sys.stderr)


def _preflight(config) -> None:
    """Refuse a config that cannot run before any run folder is made: unreadable or out of range (ConfigError),
    or batch_size 1 on a model with BatchNorm."""
    from plasticity_core.finetune import check_batch_size
    from plasticity_core.models import load_backbone

    if config.finetune.batch_size < 2:
        check_batch_size(load_backbone(config.backbone, pretrained=False, arch=config.arch).model, config.finetune.batch_size)


def cmd_finetune(args) -> int:
    import os

    from plasticity_core.config import ExperimentConfig
    from plasticity_core.errors import UserError
    from plasticity_core.runs import apply_overrides, compare_runs, run_experiment
    from plasticity_core.runs import resume_runs
    from plasticity_core.runs.interrupt import StopOnSignals

    if args.resume:  # argparse gives --resume's list the KEY=VALUE words that follow it
        moved = [a for a in args.resume if "=" in a and not Path(a).exists()]
        args.resume, args.overrides = [a for a in args.resume if a not in moved], [*moved, *args.overrides]
        extra = [o for o, v in (("--config", args.config), ("--tag", args.tag), ("--index", args.index)) if v is not None]
        if extra:
            raise UserError(f"--resume continues runs with the config in their folders; drop {', '.join(extra)}")
        with StopOnSignals() as stop:  # SIGINT / SIGTERM: every run stops at its next step, with its checkpoint
            runs = resume_runs(args.resume, args.store, executor=args.executor, parallel=args.parallel,
                               overrides=args.overrides, on_event=_RunBars(), stop=stop)
    else:
        if not args.config:
            raise UserError("plasticity finetune needs --config FILE (or --resume RUN_OR_EXPERIMENT_FOLDER)")
        index, resume = args.index, False
        if index is None and args.tag and os.environ.get("SLURM_ARRAY_TASK_ID"):
            index = int(os.environ["SLURM_ARRAY_TASK_ID"])
            resume = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0  # a requeued task takes its folder back
        config = apply_overrides(ExperimentConfig.load(args.config), args.overrides)
        _preflight(config)
        with StopOnSignals() as stop:  # SIGINT / SIGTERM: every run stops at its next step, with its checkpoint
            runs = run_experiment(config, args.store, on_event=_RunBars(), stop=stop, tag=args.tag,
                                  only=None if index is None else [index], executor=args.executor,
                                  parallel=args.parallel, allow_noop=args.allow_noop, resume=resume)
    _print_comparison(compare_runs(runs))
    for run in runs:
        s = run.summary()
        if s.get("status") != "finished":
            print(f"{run.name}: {s.get('status')}: {s.get('reason')}", file=sys.stderr)
    interrupted = sorted({str(r.path.parent) for r in runs if r.status in ("stopped", "cancelled", "failed")})
    if interrupted:
        import shlex

        print("resume with: plasticity finetune --resume " + " ".join(shlex.quote(p) for p in interrupted),
              file=sys.stderr)
    return 0 if all(r.status == "finished" for r in runs) else 1


def _print_comparison(table) -> None:
    print(table.to_string(index=False) if len(table) else "no readable runs to compare")
    for folder, why in table.attrs.get("skipped", {}).items():
        print(f"skipped {folder}: {why}", file=sys.stderr)
    for note in table.attrs.get("notes", {}).values():
        print(f"note: {note}", file=sys.stderr)


def cmd_runs(args) -> int:
    from plasticity_core.runs import RunStore

    df = RunStore(args.store).table()
    print(df.to_string(index=False) if len(df) else f"no runs in {RunStore(args.store).root}")
    return 0


def cmd_compare(args) -> int:
    from plasticity_core.runs import RunStore, compare_runs

    store = RunStore(args.store)
    if args.runs:
        _print_comparison(compare_runs([store.get(ref) for ref in args.runs]))
        return 0
    experiments = store.experiments()  # without refs: one table per experiment, never baselines pooled across them
    if not experiments:
        print(f"no runs in {store.root}")
    for i, experiment in enumerate(experiments):
        print(("\n" if i else "") + f"== {experiment}")
        _print_comparison(compare_runs(store.runs(experiment)))
    return 0


# The project's dashboard settings, passed on the command line so that they hold from any folder (Streamlit reads
# .streamlit/config.toml only from the current one); the same values as the checkout's .streamlit/config.toml
# (a test compares them). Options the user adds come later and win, e.g. --server.port 8600.
STREAMLIT_OPTIONS = {
    "server.address": "127.0.0.1",  # local only; --server.address 0.0.0.0 exposes it
    "server.headless": "true",
    "server.fileWatcherType": "none",  # the watcher crashes on torch.classes (streamlit#10992)
    "server.runOnSave": "false",
    "server.maxUploadSize": "1024",
    "browser.gatherUsageStats": "false",
    "runner.fastReruns": "true",
    "client.toolbarMode": "minimal",
    "theme.base": "light",
    "theme.primaryColor": "#2f6f4f",
    "theme.backgroundColor": "#fbfbf8",
    "theme.secondaryBackgroundColor": "#eef1ea",
    "theme.textColor": "#1d2420",
    "theme.font": "sans serif",
}


def dashboard_app() -> Path:
    """The dashboard's ``app.py``: inside the installed package, or the checkout's ``dashboard/`` folder."""
    import importlib.util

    spec = importlib.util.find_spec("plasticity_core.dashboard")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            if (Path(folder) / "app.py").is_file():
                return Path(folder) / "app.py"
    return Path(__file__).resolve().parent.parent / "dashboard" / "app.py"


def dashboard_command(extra: list[str]) -> list[str]:
    """The ``streamlit run`` command line ``plasticity dashboard`` executes: ``serve.py`` beside ``app.py``, the same
    app as an ``st.App`` whose middleware forbids framing the page elsewhere (frame-ancestors / X-Frame-Options)."""
    import importlib.util

    options = [arg for key, value in STREAMLIT_OPTIONS.items() for arg in (f"--{key}", value)]
    script = dashboard_app()
    if importlib.util.find_spec("streamlit.web.server.starlette") is not None:  # st.App (ASGI) exists
        script = script.parent / "serve.py"
    else:
        print("note: this Streamlit has no st.App: the page is served without frame-ancestors / X-Frame-Options; "
              "pip install -U streamlit to forbid framing it", file=sys.stderr)
    return [sys.executable, "-m", "streamlit", "run", str(script), *options, *extra]


def cmd_dashboard(args) -> int:
    import subprocess

    from plasticity_core.errors import UserError

    if not dashboard_app().is_file():
        raise UserError(f"the dashboard is not installed at {dashboard_app()}; reinstall plasticity-lab")
    import signal

    server = subprocess.Popen(dashboard_command(args.streamlit_args))

    def forward(signum, frame) -> None:  # the server ends with us: no Streamlit left holding the port
        if server.poll() is None:
            server.send_signal(signum)

    handled = [sig for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)) if sig is not None]
    previous = {sig: signal.signal(sig, forward) for sig in handled}
    try:
        while True:
            try:
                code = server.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server.poll() is None:  # we are leaving for another reason (an error): take the server with us
            server.terminate()
            server.wait(timeout=10)
    return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plasticity", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp, data: bool = True, data_required: bool = True) -> None:
        sp.add_argument("--model", required=True, help="backbone spec: bundled:mobilenetv2_100, timm:NAME, torchvision:NAME, file:PATH")
        sp.add_argument("--arch", help="architecture for file: checkpoints, e.g. timm:resnet18")
        sp.add_argument("--random-init", action="store_true", help="do not load pretrained weights")
        if data:
            sp.add_argument("--data", required=data_required, help="dataset spec: bundled:animal-silhouettes, folder:PATH, ...")
            sp.add_argument("--image-size", type=int, default=64)
            sp.add_argument("--val-fraction", type=float, default=0.2)
            sp.add_argument("--limit", type=int, default=None, help="use at most this many images")
            sp.add_argument("--seed", type=int, default=0)

    sp = sub.add_parser("assets", help="fetch or list the offline weights and datasets")
    sp.add_argument("action", choices=["fetch", "list"])
    sp.add_argument("--force", action="store_true")
    sp.set_defaults(fn=cmd_assets)

    sp = sub.add_parser("layers", help="print a model's layer table")
    model_args(sp, data=False)
    sp.set_defaults(fn=cmd_layers)

    sp = sub.add_parser("diagnose", help="per-layer saturation, dormancy, SFE, DfI ... to a parquet file")
    model_args(sp)
    sp.add_argument("--metrics", nargs="*", default=None, help="metric names (default: all)")
    sp.add_argument("--batches", type=int, default=8, help="probe batches")
    sp.add_argument("--head-seed", type=int, default=0,
                    help="seed of the fresh classifier head when the data's classes differ from the model's (default 0)")
    sp.add_argument("--head-probe-steps", type=int, default=0,
                    help="linear-probe the head for N steps on the train split before the gradient metrics (default 0)")
    sp.add_argument("--device", default=None)
    sp.add_argument("--out", required=True)
    sp.set_defaults(fn=cmd_diagnose)

    sp = sub.add_parser("reinit", help="apply a ReinitConfig to a model and save the weights")
    sp.add_argument("--config", required=True)
    model_args(sp, data_required=False)
    sp.add_argument("--num-classes", type=int, default=None, help="fresh head with this many classes")
    sp.add_argument("--head-seed", type=int, default=None,
                    help="seed of that fresh head (default: the config's head_seed, the head it was previewed with)")
    sp.add_argument("--out", required=True)
    sp.set_defaults(fn=cmd_reinit)

    sp = sub.add_parser("finetune", help="run an ExperimentConfig (arms x seeds) through an executor, writing run folders")
    sp.add_argument("--config", help="ExperimentConfig YAML/JSON (required unless --resume)")
    sp.add_argument("--resume", nargs="+", metavar="FOLDER", default=None,
                    help="resume the stopped, cancelled or failed runs of these run or experiment folders from their "
                         "last checkpoint (--executor / --parallel may differ from the first launch)")
    sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="dotted overrides of the config, e.g. finetune.lr=0.02 seeds=[0,1,2] launch.parallel=2")
    sp.add_argument("--executor", default=None, help="process (default), ray or slurm (overrides launch.executor)")
    sp.add_argument("--parallel", type=int, default=None, help="runs at once (overrides launch.parallel)")
    sp.add_argument("--store", "--root", dest="store", default=None, help="run store root (default $PLASTICITY_RUNS or ./runs)")
    sp.add_argument("--tag", default=None, help="experiment folder suffix, shared by cluster array tasks (default: a timestamp)")
    sp.add_argument("--index", type=int, default=None,
                    help="run only this expanded run (a cluster array task; default $SLURM_ARRAY_TASK_ID with --tag)")
    sp.add_argument("--allow-noop", action="store_true", help="launch arms whose re-init would do nothing")
    sp.set_defaults(fn=cmd_finetune)

    sp = sub.add_parser("runs", help="list run folders")
    sp.add_argument("--store", default=None, help="run store root (default $PLASTICITY_RUNS or ./runs)")
    sp.set_defaults(fn=cmd_runs)

    sp = sub.add_parser("compare", help="compare runs per arm (mean ± std over seeds)")
    sp.add_argument("runs", nargs="*", help="run folders, EXPERIMENT/RUN or unique suffixes (default: all)")
    sp.add_argument("--store", default=None, help="run store root (default $PLASTICITY_RUNS or ./runs)")
    sp.set_defaults(fn=cmd_compare)

    sp = sub.add_parser("dashboard", help="start the Streamlit dashboard (extra options go to streamlit run)",
                        description="Start the dashboard on http://127.0.0.1:8501. Streamlit options such as "
                                    "--server.port 8600 are passed on to `streamlit run`.")
    sp.set_defaults(fn=cmd_dashboard)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; an expected failure is one line ``error: ...`` on stderr and exit code 2."""
    from plasticity_core.errors import user_message

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "dashboard":
        args.streamlit_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = user_message(e, entry="cli")
        if message is None:
            raise  # a bug: its traceback is what a report needs
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
