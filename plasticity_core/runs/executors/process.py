"""``process``: a local pool running up to ``launch.parallel`` runs at once, each pool worker its own fresh Python
process (``python -m plasticity_core.runs serve``) that executes the run folders it reads from stdin."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from plasticity_core.runs.executors.base import Launch, _describe_exit, _env, register_executor
from plasticity_core.runs.store import Run
from plasticity_core.train.events import FINAL


class _Worker:
    """One pool process (``python -m plasticity_core.runs serve``): reads run folders from stdin, one per line, and
    executes them in turn, so torch is imported once per slot rather than once per run."""

    def __init__(self, log_path: Path) -> None:
        try:
            log = open(log_path, "ab")
        except OSError:  # the experiment folder deleted or unwritable: the runs still get a worker
            log = open(os.devnull, "ab")
        with log:
            self.proc = subprocess.Popen([sys.executable, "-m", "plasticity_core.runs", "serve"], stdin=subprocess.PIPE,
                                         stdout=log, stderr=subprocess.STDOUT, env=_env(), text=True)
        self.run: Run | None = None

    def give(self, run: Run | None) -> None:
        """Hand over the next run (``None``: no more work, the worker exits)."""
        self.run = run
        if self.proc.stdin.closed:
            return
        try:
            if run is None:
                self.proc.stdin.close()
            else:
                self.proc.stdin.write(str(run.path.resolve()) + "\n")
                self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the worker is gone; poll() reports it

    def idle(self, ctx: Launch) -> bool:
        return self.run is None or ctx.vanished(self.run) or self.run.raw_summary().get("status") in FINAL


@register_executor("process", "local pool: up to launch.parallel runs at once, each pool worker its own Python process")
def _run_process(ctx: Launch) -> None:
    queue = ctx.pending()
    exp_dir = queue[0].path.parent if queue else None
    workers: list[_Worker] = []
    try:
        while queue or any(w.run is not None for w in workers):
            while queue and len(workers) < ctx.config.parallel:
                workers.append(_Worker(exp_dir / f"worker-{len(workers)}.log"))
            for w in list(workers):
                rc = w.proc.poll()
                if rc is not None:  # died: its run cannot say so itself; a fresh worker takes the slot
                    workers.remove(w)
                    if w.run is not None and not ctx.vanished(w.run) and w.run.raw_summary().get("status") not in FINAL:
                        step = ctx.last_step(w.run)
                        w.run.finalise("failed", f"worker process {w.proc.pid} ended with {_describe_exit(rc)} before "
                                                 f"writing a final status (killed, out of memory, a full disk, or a "
                                                 f"crash below Python)" + (f" at step {step}" if step is not None else "")
                                                 + f"; see {exp_dir / 'worker-*.log'}", steps=step)
                    continue
                if w.idle(ctx):
                    w.give(queue.pop(0) if queue else None)
            ctx.wait(0.2)
    finally:
        if sys.exc_info()[0] is not None:  # an interrupted launcher (KeyboardInterrupt in a notebook, an abort):
            for w in workers:  # its workers ignore the terminal's SIGINT; STOP files end their runs at the next step
                if w.run is not None:
                    w.run.request_stop()
        for w in workers:
            w.give(None)
            try:
                w.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.proc.kill()
