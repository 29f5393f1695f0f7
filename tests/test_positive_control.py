"""Issue 22: the positive-control backbone (bundled:positive_control_resnet) and the two studies' quick modes."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import plasticity_core as pc
from plasticity_core import models
from plasticity_core.assets import sha256

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))


def test_bundled_positive_control_loads_the_recorded_file():
    rel, digest, _ = models.REPO_WEIGHTS["positive_control_resnet"]
    path = ROOT / rel
    assert path.stat().st_size < 1_000_000  # ships in the repository: keep it small
    recipe = json.loads((path.parent / "recipe.json").read_text())
    assert sha256(path) == digest == recipe["sha256"]  # the registry, the file and its recipe agree
    bb = pc.load_backbone("bundled:positive_control_resnet", num_classes=10)
    assert bb.data_config["mean"] == (0.5, 0.5, 0.5) and "positive_control_resnet" in models.BUNDLED_ABOUT
    from safetensors.torch import load_file

    stored = load_file(str(path))
    for k, v in bb.model.state_dict().items():
        if k.startswith("fc."):
            continue  # the head is new (num_classes)
        assert torch.equal(v, stored[k].to(v.dtype)), k
    assert bb.model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_bundled_positive_control_refuses_another_file(monkeypatch):
    rel, digest, cmd = models.REPO_WEIGHTS["positive_control_resnet"]
    monkeypatch.setitem(models.REPO_WEIGHTS, "positive_control_resnet", (rel, "0" * 64, cmd))
    with pytest.raises(pc.BackboneError, match="not the recorded"):
        pc.load_backbone("bundled:positive_control_resnet")
    monkeypatch.setitem(models.REPO_WEIGHTS, "positive_control_resnet", ("experiments/results/none.safetensors", digest, cmd))
    with pytest.raises(pc.BackboneError, match="positive_control.py"):
        pc.load_backbone("bundled:positive_control_resnet")


@pytest.mark.assets
def test_positive_control_quick(tmp_path):
    import positive_control

    out = positive_control.main(["--quick", "--out", str(tmp_path)])
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["sha256"] == sha256(out / "damaged.safetensors") and recipe["quick"]
    text = (out / "results.md").read_text()
    for part in ("## (a)", "## (b)", "## (c)", "| plain | 1 |", "| recommended | 1 |", "| fresh | 1 |", "Gap (fresh - plain)"):
        assert part in text, part
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert {r["arm"] for r in runs} == {"plain", "recommended", "fresh", "normal_plain"}
    assert all(r["status"] == "finished" for r in runs)
