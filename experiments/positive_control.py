"""Positive control: a small backbone that has lost plasticity by a published mechanism, and what the tool sees in it.

Mechanism: a sequence of random-label tasks (Lyle et al. 2022 / 2023; Kumar et al. 2023): timm ``test_resnet``
(0.37 M parameters, BatchNorm + ReLU) from a seeded random init learns ``--tasks`` tasks on the same 1,000 MNIST
images, each with fresh uniformly random labels (abrupt switches, no augmentation), ``--steps`` Adam steps of 64 per
task (lr ``--lr``, one optimizer for the whole sequence). The control ("normal") is the same architecture, init,
images, optimizer and number of steps with the true labels. Both are stored as float16 safetensors (the damaged one
ships in the repository: ``results/positive_control/damaged.safetensors``, with ``recipe.json`` and its sha256).

Then, on the target (MNIST with its true labels, a 1,500 / 1,500 split of 3,000 bundled images at 32 px):
(a) ``pc.diagnose`` of both backbones: dead / dormant fraction and feature effective rank per layer;
(b) ``Diagnosis.recommend`` on the damaged one: which layers and strategy it proposes;
(c) fine-tuning through ``plasticity_core.runs.run_experiment`` (file: backbones): the damaged backbone plain
    vs with the recommended re-init vs a fresh init (and the normally trained backbone as a reference), several
    seeds; arm - plain of the same seed is a paired difference (same head init, data and batch order).

    python experiments/positive_control.py           # full: ~10 CPU-minutes on one thread
    python experiments/positive_control.py --quick   # smoke test of the whole path
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import plasticity_core as pc  # noqa: E402
from plasticity_core.config import ExperimentConfig, FinetuneConfig  # noqa: E402

STUDY = "positive_control"
ARCH = "timm:test_resnet"
DATA = "bundled:mnist-5k"
BASELINE = "plain"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pretrain(labels_kind: str, a: argparse.Namespace, x: torch.Tensor, y: torch.Tensor, probe) -> tuple[torch.nn.Module, list[dict]]:
    """The recipe: ``a.tasks`` tasks x ``a.steps`` Adam steps on ``x``; random labels per task or the true ``y``."""
    import timm

    torch.manual_seed(a.pretrain_seed)
    model = timm.create_model(ARCH.partition(":")[2], num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    gen = torch.Generator().manual_seed(a.pretrain_seed)
    log = []
    for task in range(a.tasks):
        labels = torch.randint(0, 10, (len(x),), generator=gen) if labels_kind == "random" else y
        model.train()
        for _ in range(a.steps):
            idx = torch.randint(0, len(x), (64,), generator=gen)
            loss = F.cross_entropy(model(x[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            fit = float((model(x).argmax(1) == labels).float().mean())
        dead = pc.diagnose(model, probe, metrics=["dead"], max_batches=4).wide()["dead"]
        log.append({"labels": labels_kind, "task": task, "fit": round(fit, 4), "dead_mean": round(float(dead.mean()), 4)})
        print(f"  {labels_kind} labels, task {task}: fits {fit:.2f} of its labels, mean dead fraction {dead.mean():.3f}",
              flush=True)
    return model.eval(), log


def load(path: Path, digest: str) -> torch.nn.Module:
    """A stored backbone back as float32, after checking its sha256."""
    import timm
    from safetensors.torch import load_file

    if sha256(path) != digest:
        raise SystemExit(f"{path}: sha256 differs from the recorded one; run without --reuse")
    model = timm.create_model(ARCH.partition(":")[2], num_classes=10)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()})
    return model.eval()


def finished(out: Path, exp: ExperimentConfig) -> list[common.Run]:
    """Finished runs of ``exp`` (same name, arms and fine-tune config) already under ``out/runs``, one per arm x seed."""
    from plasticity_core.runs import Run

    found: dict[tuple[str, int], common.Run] = {}
    for folder in sorted((out / "runs").glob(f"{exp.name}-*/*-seed*")):
        f = Run(folder)
        try:
            if f.summary().get("status") != "finished" or f.arm not in exp.arms or f.seed not in exp.seeds:
                continue
            if f.config.finetune.to_dict() != exp.finetune.to_dict() or f.config.backbone != exp.backbone:
                continue
        except Exception:  # noqa: BLE001 - a half-written folder is not a finished run
            continue
        found.setdefault((f.arm, f.seed), common.read_run(f))
    complete = {s for s in exp.seeds if all((arm, s) in found for arm in exp.arms)}
    return [r for (arm, s), r in found.items() if s in complete]


def save(model: torch.nn.Module, path: Path) -> str:
    """float16 safetensors (floating tensors; integer BN counters kept), then the model is reloaded from it, so
    every number below is of the stored weights. Returns its sha256."""
    from safetensors.torch import load_file, save_file

    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()})
    return sha256(path)


def network_dead(d: pc.Diagnosis) -> float:
    """Dead units / units over the layers that have the metric (per position: docs/methods.md)."""
    w = d.wide()["dead"]
    units = {i["name"]: i["units"] for i in d.meta["layers"]}
    have = w.dropna()
    return float(np.average(have.to_numpy(), weights=[units[n] for n in have.index]))


def diagnosis_table(damaged: pc.Diagnosis, normal: pc.Diagnosis) -> pd.DataFrame:
    cols = {}
    for name, d in (("damaged", damaged), ("normal", normal)):
        w = d.wide()
        for m in ("dead", "dormant", "feature_erank"):
            cols[f"{m} ({name})"] = w[m]
    t = pd.DataFrame(cols)
    t.index.name = "layer"
    return t


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test (tiny scale; numbers mean nothing)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--tasks", type=int, default=8, help="random-label tasks in the pretraining sequence")
    p.add_argument("--steps", type=int, default=250, help="Adam steps of 64 per task")
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate of the pretraining")
    p.add_argument("--images", type=int, default=1000, help="MNIST images of the pretraining tasks")
    p.add_argument("--pretrain-seed", type=int, default=0)
    p.add_argument("--ft-steps", type=int, default=120)
    p.add_argument("--reuse", action="store_true",
                   help="reuse the stored backbones (sha256 checked) and the finished runs under OUT/runs")
    p.add_argument("--only", nargs="+", choices=("damaged", "fresh", "normal"),
                   help="run only these experiments (no report); then --reuse writes the report")
    a = p.parse_args(argv)
    if a.quick:
        a.tasks, a.steps, a.images, a.ft_steps, a.seeds = 2, 5, 128, 6, a.seeds[:1]
    out = common.out_dir(a, STUDY)
    t0, c0 = time.time(), time.process_time()
    torch.manual_seed(0)
    cfg = pc.load_backbone(ARCH, pretrained=False).data_config  # the normalisation the runner will use (mean = std = 0.5)
    src = pc.load_dataset(DATA, image_size=32, val_fraction=0.2, seed=0, data_config=cfg)
    x = torch.stack([src.train[i][0] for i in range(a.images)])
    y = torch.tensor([int(src.train[i][1]) for i in range(a.images)])
    target = pc.load_dataset(DATA, image_size=32, val_fraction=0.5, seed=common.SPLIT_SEED, limit=3000, data_config=cfg)

    paths = {"damaged": out / "damaged.safetensors", "normal": out / "runs" / "normal.safetensors"}
    paths["normal"].parent.mkdir(parents=True, exist_ok=True)
    done = out / "runs" / "pretrain.json"
    if a.reuse and done.is_file() and all(p.is_file() for p in paths.values()):
        kept = json.loads(done.read_text())
        damaged, normal = load(paths["damaged"], kept["sha256"]["damaged"]), load(paths["normal"], kept["sha256"]["normal"])
        log_d, log_n, digests, pretrain_cpu = kept["log_random"], kept["log_true"], kept["sha256"], kept["cpu_s"]
        print(f"  reusing the backbones of {done} (sha256 checked)")
    else:
        damaged, log_d = pretrain("random", a, x, y, target.val)
        normal, log_n = pretrain("true", a, x, y, target.val)
        digests = {k: save(m, paths[k]) for k, m in (("damaged", damaged), ("normal", normal))}
        pretrain_cpu = time.process_time() - c0
        done.write_text(json.dumps({"sha256": digests, "log_random": log_d, "log_true": log_n, "cpu_s": pretrain_cpu}))

    # (a) + (b): the diagnosis on the target's val images, and the recommendation
    metrics = ["dead", "dormant", "feature_erank", "saturation", "grad_dormant"]
    d_dmg = pc.diagnose(damaged, target.val, metrics=metrics, max_batches=16)
    d_nrm = pc.diagnose(normal, target.val, metrics=metrics, max_batches=16)
    table = diagnosis_table(d_dmg, d_nrm)
    rec, rec_normal = d_dmg.recommend(), d_nrm.recommend()
    gap = (table["dead (damaged)"] - table["dead (normal)"]).sort_values(ascending=False)
    worst = list(gap.index[: len(rec.layers)])

    # (c): fine-tuning on the true labels through the library's runner
    ft = FinetuneConfig(steps=a.ft_steps, batch_size=64, lr=0.05, warmup_steps=max(1, a.ft_steps // 10),
                        eval_every=max(1, a.ft_steps // 10), image_size=32, device="cpu")
    common_kw = dict(data=DATA, data_limit=3000, val_fraction=0.5, finetune=ft, seeds=list(a.seeds))
    exps = [
        ExperimentConfig(name="damaged", backbone=f"file:{paths['damaged']}", arch=ARCH, **common_kw,
                         arms={BASELINE: None, "recommended": rec.to_config()}),
        ExperimentConfig(name="fresh", backbone=ARCH, pretrained=False, **common_kw, arms={"fresh": None}),
        ExperimentConfig(name="normal", backbone=f"file:{paths['normal']}", arch=ARCH, **common_kw,
                         arms={"normal_plain": None}),
    ]
    runs = []
    for exp in exps:
        if a.only and exp.name not in a.only:
            continue
        kept = finished(out, exp) if a.reuse else []
        missing = [s for s in exp.seeds if not any(r.seed == s for r in kept)]
        runs += kept
        if missing:
            runs += common.run(dataclasses.replace(exp, seeds=missing), out)
    if a.only:
        return out
    common.save_runs(runs, out)
    summary = common.summarise(runs, BASELINE)
    size_kb = paths["damaged"].stat().st_size / 1024
    recipe = {"mechanism": "random-label task sequence (Lyle et al. 2022/2023; Kumar et al. 2023)", "arch": ARCH,
              "data": f"{DATA}: the first {a.images} images of the train split (val_fraction 0.2, split seed 0) at 32 px, "
                      f"normalised with mean {cfg['mean']} std {cfg['std']} (the architecture's data config)",
              "tasks": a.tasks, "steps_per_task": a.steps, "batch_size": 64, "optimizer": "Adam", "lr": a.lr,
              "labels": "uniformly random per task, drawn from torch.Generator(seed)", "seed": a.pretrain_seed,
              "augmentation": None, "dtype": "float16 (floating tensors)", "file": paths["damaged"].name,
              "sha256": digests["damaged"], "bytes": paths["damaged"].stat().st_size,
              "normal_control_sha256": digests["normal"], "torch": torch.__version__,
              "pretraining_log": log_d + log_n, "quick": a.quick}
    (out / "recipe.json").write_text(json.dumps(recipe, indent=1) + "\n")
    (out / "damaged.safetensors.sha256").write_text(f"{digests['damaged']}  damaged.safetensors\n")
    (out / "diagnosis.csv").write_text(table.to_csv())

    cmd = "python experiments/positive_control.py " + " ".join(shlex.quote(s) for s in (argv if argv is not None else sys.argv[1:]))
    base = summary.set_index("arm").at[BASELINE, "final_mean"]
    fresh = summary.set_index("arm").at["fresh", "final_mean"]
    d_rec, se_rec, _ = common.paired(runs, "recommended", BASELINE)
    d_fr, se_fr, _ = common.paired(runs, "fresh", BASELINE)
    recovered = d_rec / d_fr if d_fr else math.nan
    md_table = table.dropna(how="all")  # layers without an activation of their own (downsample BN, head): no unit data
    md = [
        "# Positive control: a backbone that has lost plasticity (random-label task sequence)\n",
        f"Command: `{cmd.strip()}`\n",
        f"{'--quick (smoke test: numbers mean nothing). ' if a.quick else ''}{time.process_time() - c0:.0f} CPU s "
        f"({(time.time() - t0) / 60:.1f} min wall, {torch.get_num_threads()} thread(s)); pretraining of both backbones "
        + (f"{pretrain_cpu:.0f} CPU s" if pretrain_cpu is not None else "not recorded (reused)") + ".\n",
        f"Backbone: `{ARCH}` from a seeded random init, {a.tasks} tasks x {a.steps} Adam steps of 64 (lr {a.lr}) on "
        f"{a.images} MNIST images, each task with new random labels. Stored as `damaged.safetensors` "
        f"({size_kb:.0f} KB, float16, sha256 `{digests['damaged']}`, recipe in `recipe.json`). The normal control: "
        f"same init, images, optimizer and steps, true labels.\n",
        "## Pretraining: how well each task's labels were fitted at its end\n",
        "| task | random labels: fit | random labels: mean dead | true labels: fit | true labels: mean dead |",
        "|---|---|---|---|---|",
        *[f"| {r['task']} | {r['fit']:.2f} | {r['dead_mean']:.3f} | {n['fit']:.2f} | {n['dead_mean']:.3f} |"
          for r, n in zip(log_d, log_n)],
        "",
        "## (a) Diagnosis on the target (1,500 MNIST val images, true-label task)\n",
        f"Dead units over all layers with an activation (weighted by units): damaged {network_dead(d_dmg) * 100:.1f} %, "
        f"normal {network_dead(d_nrm) * 100:.1f} %. Per layer (fractions of units; feature_erank = effective rank of "
        f"the pooled features):\n",
        common.frame_markdown(md_table),
        "",
        "## (b) What `Diagnosis.recommend` proposes\n",
        f"- damaged backbone: **{rec.strategy}** {rec.params} on {rec.layers}. {rec.reason}",
        f"- the {len(rec.layers)} layers whose dead fraction rose most over the normal control: {worst}; overlap with "
        f"the recommendation: {len(set(worst) & set(rec.layers))} of {len(rec.layers)}.",
        f"- normal backbone (for comparison): **{rec_normal.strategy}** on {rec_normal.layers}. {rec_normal.reason}",
        "",
        "## (c) Fine-tuning on the true labels\n",
        f"{a.ft_steps} SGD steps of 64 (lr 0.05, momentum 0.9, warm-up + cosine), 1,500 train / 1,500 val images, "
        f"32 px, seeds {a.seeds}, through `plasticity_core.runs.run_experiment`.\n",
        common.markdown_table(summary),
        "",
        "Paired differences to the damaged backbone's plain fine-tune (same seed):\n",
        common.paired_markdown(runs, BASELINE),
        "",
        f"Gap (fresh - plain): {d_fr * 100:+.1f} ± {se_fr * 100:.1f} points; the recommended re-init: "
        f"{d_rec * 100:+.1f} ± {se_rec * 100:.1f} points, i.e. {recovered * 100:.0f} % of the gap "
        f"(plain {base * 100:.1f} %, fresh {fresh * 100:.1f} %).",
    ]
    if common.plot_curves(runs, out / "curves.png", "positive control: fine-tuning on MNIST true labels"):
        md.append("\n![val accuracy over fine-tuning](curves.png)")
    (out / "results.md").write_text("\n".join(md) + "\n")
    print((out / "results.md").read_text())
    return out


if __name__ == "__main__":
    main()
