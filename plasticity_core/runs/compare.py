"""Comparing runs: per arm over seeds, final and best accuracy, steps to a target, wall time."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable

import pandas as pd

from plasticity_core.errors import UserError
from plasticity_core.runs.store import Run


COLUMNS = ["arm", "strategy", "n_seeds", "n_failed", "n_stopped", "n_unfinished", "final_acc_mean", "final_acc_std", "best_acc_mean", "best_acc_std",
           "steps_to_target_mean", "reached_target", "target_acc", "wall_time_s_mean", "final_acc", "best_acc",
           "steps_to_target"]


def _steps_to(evals: list[dict[str, Any]], threshold: float) -> float:
    for e in evals:
        acc = e.get("val_acc")
        if isinstance(acc, (int, float)) and acc >= threshold:
            return float(e["step"])
    return math.nan


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else math.nan
    return mean, std


def _pm(mean: float, std: float, n: int) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.4f} ± {std:.4f}" if n > 1 and not math.isnan(std) else f"{mean:.4f} (1 seed)"


def compare_runs(runs: Iterable[Run | str | os.PathLike], baseline: str | None = None, fraction: float = 0.9) -> pd.DataFrame:
    """One row per arm over its *finished* seeds: final and best val accuracy (mean, sample std), steps to reach
    ``fraction`` of the baseline's best accuracy (mean best over the baseline's finished seeds; first eval at or above
    it, mean over the seeds that reached it, ``never`` when none did), wall time.

    Only runs whose final status is ``finished`` (with at least one eval) enter the means, the target and
    ``n_seeds``: a stopped run's last accuracy is from the middle of its schedule, so it is counted apart in
    ``n_stopped``, failed/cancelled runs and runs without an eval in ``n_failed``, queued/running ones in
    ``n_unfinished``. ``baseline``: the arm name; default the arm called ``baseline``, else the first arm without a
    re-init. A folder that cannot be read (corrupt config.yaml, not a run) is skipped and named in
    ``table.attrs["skipped"]`` (``{folder: reason}``), which the CLI and the dashboard print.
    """
    items = [r if isinstance(r, Run) else Run(r) for r in runs]
    per_arm: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    notes: dict[str, str] = {}
    setups: dict[str, tuple[str, str]] = {}  # setup key -> (an experiment that has it, its words)
    for r in items:
        if not r.path.is_dir():
            skipped[str(r.path)] = "its run folder was deleted"
            continue
        try:
            s, evals, arm, reinit, seed = r.summary(), r.events("eval"), r.arm, r.config.arms[r.arm], r.seed
            ok = [e for e in evals if isinstance(e.get("val_acc"), (int, float)) and isinstance(e.get("step"), (int, float))]
        except Exception as e:  # noqa: BLE001 - one broken folder must not hide the others
            skipped[str(r.path)] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            continue
        if r.event_notes:
            notes[str(r.path)] = r.event_notes
        key = _setup_key(r)
        setups.setdefault(key[0], (r.experiment, key[1]))
        entry = per_arm.setdefault(arm, {"reinit": reinit, "ok": [], "failed": 0, "stopped": 0, "unfinished": 0})
        status = s.get("status")
        if status == "stopped":
            entry["stopped"] += 1
            continue
        if status != "finished" and status not in ("failed", "cancelled"):
            entry["unfinished"] += 1
            continue
        if status != "finished" or not ok:
            entry["failed"] += 1
            continue
        entry["ok"].append({"seed": seed, "final": ok[-1]["val_acc"], "best": max(e["val_acc"] for e in ok),
                            "evals": ok, "wall": s.get("wall_time_s") or math.nan})
    if len(setups) > 1:
        shown = "; ".join(f"{exp}: {words}" for exp, words in list(setups.values())[:3])
        raise CompareError(f"these runs were trained on {len(setups)} different setups ({shown}): their arms and "
                           f"baselines cannot be pooled; compare one experiment at a time")
    if baseline is None:
        plain = [a for a, e in per_arm.items() if e["reinit"] is None]
        baseline = "baseline" if "baseline" in per_arm else (plain[0] if plain else None)
    elif baseline not in per_arm:
        raise KeyError(f"baseline arm {baseline!r} is not among the runs' arms {sorted(per_arm)}")
    base_best = _mean_std([o["best"] for o in per_arm[baseline]["ok"]])[0] if baseline else math.nan
    threshold = fraction * base_best
    rows = []
    for arm, e in per_arm.items():
        ok, n = e["ok"], len(e["ok"])
        final, best = _mean_std([o["final"] for o in ok]), _mean_std([o["best"] for o in ok])
        steps = [_steps_to(o["evals"], threshold) for o in ok] if not math.isnan(threshold) else []
        reached = [s for s in steps if not math.isnan(s)]
        steps_mean = sum(reached) / len(reached) if reached else math.nan
        rows.append({
            "arm": arm, "strategy": "none" if e["reinit"] is None else e["reinit"].strategy, "n_seeds": n,
            "n_failed": e["failed"], "n_stopped": e["stopped"], "n_unfinished": e["unfinished"],
            "final_acc_mean": final[0], "final_acc_std": final[1], "best_acc_mean": best[0],
            "best_acc_std": best[1], "steps_to_target_mean": steps_mean, "reached_target": f"{len(reached)}/{n}",
            "target_acc": threshold, "wall_time_s_mean": _mean_std([o["wall"] for o in ok])[0],
            "final_acc": _pm(*final, n), "best_acc": _pm(*best, n),
            "steps_to_target": ("n/a: no finished baseline run" if math.isnan(threshold)
                                else "never" if not reached else f"{steps_mean:.0f}"),
        })
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs["skipped"] = skipped
    table.attrs["notes"] = notes
    return table


class CompareError(UserError):
    """Runs that cannot be compared in one table (different backbones, data or fine-tune settings)."""


def _setup_key(run: Run) -> tuple[str, str]:
    """What must be equal for two runs to be pooled: backbone, data and fine-tune settings (not the seed, the arm's
    re-init, the launch or the experiment's name), as a comparable key and a few words."""
    cfg = run.config
    d = cfg.to_dict()
    ft = {k: v for k, v in d["finetune"].items() if k not in ("seed", "device", "num_workers", "compile", "data_path",
                                                                "data_memory_mb", "checkpoint", "checkpoint_every",
                                                                "save_optimizer")}
    key = json.dumps({k: d[k] for k in ("backbone", "arch", "pretrained", "data", "val_fraction", "data_limit",
                                        "train_per_class")} | {"finetune": ft}, sort_keys=True, default=str)
    return key, f"{cfg.backbone} on {cfg.data}, {cfg.finetune.steps} steps"
