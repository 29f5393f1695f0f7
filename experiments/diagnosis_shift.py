"""Study 3, the diagnosis behind the transfer study: what the pretrained units do on different data, and
what each strategy changes.

(a) The bundled ImageNet MobileNetV2 is diagnosed, layer by layer, on three probe sets at the same size:
procedural colour gratings (``synthetic:``), MNIST digits and the animal silhouettes. No ImageNet-like
photos ship offline, so there is no in-distribution reference here: the comparison is between three
out-of-distribution probes, from "textured colour images" to "binary shapes on black". Weight metrics (DfI)
do not depend on the data and are reported once.
(b) Each strategy of the transfer study is applied (through ``apply_reinit``, BatchNorm recalibrated on the
target train split) to the layers ``Diagnosis.recommend`` picks, and the model is diagnosed again on the
target val split, before any fine-tuning.
(c) The diagnosis after fine-tuning comes from the transfer study (``results/transfer/diagnosis_after.csv``)
and is quoted when present.

    python experiments/diagnosis_shift.py            # full CPU scale
    python experiments/diagnosis_shift.py --quick    # smoke test of the whole path
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import transfer  # noqa: E402

STUDY = "diagnosis_shift"
ACT = ["dormant", "dead", "saturation", "feature_erank"]
AFTER = ["dormant", "dead", "saturation", "dfi_si", "sfe_rel"]


def settings(quick: bool) -> dict:
    if quick:
        return dict(image_size=32, limit=200, batches=1, transfer=transfer.settings(True))
    return dict(image_size=64, limit=2000, batches=8, transfer=transfer.settings(False))


def probes(size: int, limit: int) -> dict[str, str]:
    return {"synthetic gratings": f"synthetic:classes=10,n={limit},size={size},seed=0",
            "mnist-5k": "bundled:mnist-5k", "animal silhouettes": "bundled:animal-silhouettes"}


def by_dataset(s: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Layer means per probe set, the per-layer saturation profile, and the per-layer dormancy profile."""
    torch.manual_seed(0)
    bb = common.pc.load_backbone("bundled:mobilenetv2_100", pretrained=True, num_classes=10)
    means, sat, dorm = {}, {}, {}
    for name, spec in probes(s["image_size"], s["limit"]).items():
        data = common.pc.load_dataset(spec, image_size=s["image_size"], limit=s["limit"], seed=common.SPLIT_SEED,
                                      data_config=bb.data_config)
        d = common.pc.diagnose(bb, data.val, metrics=ACT, max_batches=s["batches"])
        wide = d.wide()
        means[name] = wide[ACT].mean()
        sat[name], dorm[name] = wide["saturation"], wide["dormant"]
    return pd.DataFrame(means).T.rename_axis("probe"), pd.DataFrame(sat).dropna(), pd.DataFrame(dorm).dropna()


def after_reinit(s: dict) -> tuple[pd.DataFrame, object]:
    """Layer means right after each strategy (BN recalibrated on shuffled target data), before fine-tuning."""
    t = s["transfer"]
    exp = transfer.base_experiment(t)
    rec, data = transfer.recommend(exp, t)
    arms = {"pretrained": None, **{k: v for k, v in transfer.arms(rec, t).items() if k != transfer.BASELINE}}
    arms["fire (svd)"] = common.reinit_arm("fire", list(rec.layers), method="svd")
    rows = {}
    for name, cfg in arms.items():
        if cfg is not None and common.pc.STRATEGIES.get(cfg.strategy).during_training:
            continue  # e.g. cbp: changes nothing before training
        torch.manual_seed(0)
        bb = common.pc.load_backbone(exp.backbone, pretrained=True, num_classes=data.num_classes)
        touched = "-"
        if cfg is not None:
            report = common.pc.apply_reinit(bb.model, cfg, data=data.train)
            touched = f"{report.summary()['units']} units in {report.summary()['layers']} layers"
        d = common.pc.diagnose(bb, data.val, metrics=AFTER, max_batches=s["batches"])
        rows[name] = {"touched": touched, **common.layer_means(d, list(rec.layers), AFTER)}
    return pd.DataFrame(rows).T.rename_axis("arm"), rec


def main(argv: list[str] | None = None) -> Path:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    out = common.out_dir(args, STUDY)
    s = settings(args.quick)
    t0 = time.perf_counter()
    means, sat, dorm = by_dataset(s)
    after, rec = after_reinit(s)
    means.to_csv(out / "by_dataset.csv")
    sat.to_csv(out / "saturation_per_layer.csv")
    dorm.to_csv(out / "dormant_per_layer.csv")
    after.to_csv(out / "after_reinit.csv")
    plotted = common.plot_lines(sat, out / "saturation_per_layer.png", "MobileNetV2 (ImageNet): saturation per layer",
                                "layer (network order)", "saturated fraction")
    common.plot_lines(dorm, out / "dormant_per_layer.png", "MobileNetV2 (ImageNet): dormant units per layer",
                      "layer (network order)", "dormant fraction (tau 0.025)")
    ft_after = common.RESULTS / transfer.STUDY / "diagnosis_after.csv"
    quoted = (common.frame_markdown(pd.read_csv(ft_after, index_col=0))
              if ft_after.exists() and not args.quick else "(run `python experiments/transfer.py` first)")
    lines = [
        "# Study 3: the diagnosis behind the transfer study", "",
        f"Command: `python experiments/diagnosis_shift.py{' --quick' if args.quick else ''}`. "
        f"{common.scale_note(args, time.perf_counter() - t0)}",
        f"`bundled:mobilenetv2_100` at {s['image_size']} px, {s['batches']} shuffled probe batches of 32 from each "
        "val split. There is no ImageNet-like probe offline: the three probes are all out of distribution.", "",
        "## (a) Pretrained backbone, mean over layers, per probe set", "", common.frame_markdown(means), "",
        "![saturation](saturation_per_layer.png)" if plotted else "(No PNG: matplotlib is not installed.)",
        "![dormant](dormant_per_layer.png)" if plotted else "", "",
        f"## (b) Right after each strategy on the recommended layers ({', '.join(f'`{l}`' for l in rec.layers)}), "
        "target val split, before fine-tuning", "",
        "`sel_` = mean over the recommended layers, `all_` = over every layer with the metric.", "",
        common.frame_markdown(after), "",
        "## (c) After fine-tuning (from the transfer study)", "", quoted, "",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print((out / "results.md").read_text())
    return out


if __name__ == "__main__":
    main()
