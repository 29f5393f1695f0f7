"""Issue 22: experiments/continual.py (permuted MNIST, the library's cbp / shrink_perturb / redo) runs its whole path."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))


@pytest.mark.assets
def test_continual_quick(tmp_path):
    import continual

    out = continual.main(["--quick", "--out", str(tmp_path)])
    rows = [json.loads(line) for line in (out / "tasks.jsonl").read_text().splitlines()]
    assert {r["arm"] for r in rows} == {"sgd", "cbp", "shrink_perturb", "redo"}
    assert all(0.0 <= r["online_acc"] <= 1.0 for r in rows)
    last = [r for r in rows if r["task"] == 2]
    assert all(0.0 <= r["dead"] <= 1.0 and len(r["dead_per_layer"]) == 3 for r in last)
    # the arms share permutations, data order and init: the first task is identical until an intervention acts
    first = {r["arm"]: r["online_acc"] for r in rows if r["task"] == 0}
    assert first["sgd"] == first["shrink_perturb"] == first["redo"]
    assert "| sgd | 1 |" in (out / "results.md").read_text()
