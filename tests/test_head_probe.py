"""probe_head: trains only the head, from a recorded seed, bit-identically; the diagnosis and the config say so."""
import pytest
import torch

import plasticity_core as pc

DATA = "synthetic:classes=4,n=128,size=32"


def _probed(steps: int, seed: int = 0):
    bb = pc.load_backbone("timm:test_resnet", pretrained=False, num_classes=4, seed=seed)
    data = pc.load_dataset(DATA, image_size=32, data_config=bb.data_config)  # as the CLI loads it
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    record = pc.probe_head(bb, data.train, steps=steps, seed=seed)
    return bb, data, before, record


def test_probe_trains_only_the_head_and_repeats_exactly():
    bb, data, before, record = _probed(5)
    after = bb.model.state_dict()
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert moved == {"fc.weight", "fc.bias"}  # backbone and BatchNorm statistics untouched
    assert record["steps"] == 5 and record["seed"] == 0 and bb.head_probe == record
    assert all(torch.equal(bb.reference[k], after[k]) for k in moved)  # SFE keeps measuring the backbone only
    again, *_ = _probed(5)
    assert all(torch.equal(again.model.state_dict()[k], after[k]) for k in after)
    d = pc.diagnose(bb, data.val, metrics=["grad_norm"], max_batches=1)
    assert d.meta["head"]["probe"]["steps"] == 5 and "linear-probed for 5 steps" in d.meta["head"]["text"]
    assert pc.diagnose(again, data.val, metrics=["grad_norm"], max_batches=1).wide().equals(d.wide())


def test_zero_steps_is_the_untrained_head_and_bad_steps_are_refused():
    bb, _, before, record = _probed(0)
    assert record == {} and bb.head_probe is None
    assert all(torch.equal(v, before[k]) for k, v in bb.model.state_dict().items())
    with pytest.raises(pc.UserError, match="head probe steps"):
        pc.probe_head(bb, None, steps=-1)


def test_cli_reinit_repeats_the_probe_the_config_records(tmp_path, capsys):
    from safetensors.torch import load_file

    from plasticity_core.cli import _table, main

    bb, data, _, _ = _probed(3)
    cfg = pc.ReinitConfig(strategy="targeted", layers=["layer3*"], params={"criterion": "grad", "fraction": 0.25},
                          head_probe_steps=3)
    report = pc.apply_reinit(bb.model, cfg, data=data.train)
    cfg.save(tmp_path / "r.yaml")
    argv = ["reinit", "--config", str(tmp_path / "r.yaml"), "--model", "timm:test_resnet", "--random-init",
            "--num-classes", "4", "--data", DATA, "--image-size", "32", "--out", str(tmp_path / "w.safetensors")]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "linear-probed for 3 steps" in out.err and _table(report.table) in out.out
    w = load_file(tmp_path / "w.safetensors")
    assert all(torch.equal(v, w[k]) for k, v in bb.model.state_dict().items() if k in w)
    assert main(argv[:-6] + ["--out", str(tmp_path / "x.safetensors")]) == 2  # no --data: the probe cannot be repeated
    assert "give --data" in capsys.readouterr().err
