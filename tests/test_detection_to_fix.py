"""End to end, detection to fix: units killed in known layers are found, proposed, recycled, and the fix trains better.

The chain (issue 22): a small real net (timm ``test_resnet``) is trained briefly on real MNIST, then 3/4 of the
units of three known layers are killed the way BatchNorm nets lose units (the BN entry's gamma -> 0, beta -> -1, so
the ReLU never fires and no gradient reaches the unit again) and the BatchNorm statistics are re-estimated (as
continued training would). Then
  1. ``pc.diagnose`` flags exactly those layers as dead and dormant,
  2. ``Diagnosis.recommend`` proposes exactly those layers,
  3. ``redo`` through ``pc.apply_reinit`` on the proposed layers brings their dead fraction to 0, and
  4. the same fine-tune (same seed, same data, same batches) ends higher after the fix than without it.
If any link breaks (metric, recommendation, strategy, BatchNorm handling, training), this test fails.
"""
from __future__ import annotations

import copy

import pytest
import torch

import plasticity_core as pc

DAMAGED = {"conv1.0": "conv1.1", "layer2.0.conv1": "layer2.0.bn1", "layer3.0.conv2": "layer3.0.bn2"}  # layer -> its BN
KILLED = 0.75  # fraction of each damaged layer's units


@pytest.fixture(scope="module")
def damaged():
    """A healthy test_resnet after 60 steps on MNIST, then 3/4 of the units of the DAMAGED layers killed."""
    data = pc.load_dataset("bundled:mnist-5k", image_size=32, limit=1500, val_fraction=0.3, seed=0)
    torch.manual_seed(0)
    import timm

    model = timm.create_model("test_resnet", num_classes=10)
    healthy = pc.finetune(model, data, pc.FinetuneConfig(steps=60, batch_size=32, lr=0.05, warmup_steps=5, image_size=32,
                                                         eval_every=60, seed=0, device="cpu"))
    assert healthy.status == "finished" and healthy.final_val_acc > 0.5, healthy
    with torch.no_grad():
        for bn_name in DAMAGED.values():
            bn = model.get_submodule(bn_name)
            k = int(bn.weight.shape[0] * KILLED)
            bn.weight[:k] = 0.0
            bn.bias[:k] = -1.0
    pc.recalibrate_batchnorm(model, data.train)
    return model, data


def test_detection_to_fix(damaged):
    model, data = damaged
    d = pc.diagnose(model, data.val, metrics=["dead", "dormant"], max_batches=4)
    wide = d.wide()
    # 1. the diagnosis flags exactly the damaged layers (and the fraction killed), no other layer
    for metric in ("dead", "dormant"):
        flagged = set(wide.index[wide[metric] > 0.05])
        assert flagged == set(DAMAGED), (metric, wide[metric].to_dict())
        assert wide.loc[list(DAMAGED), metric].tolist() == pytest.approx([KILLED] * len(DAMAGED))
    # 2. the recommendation proposes exactly those layers
    rec = d.recommend(budget=len(DAMAGED))
    assert set(rec.layers) == set(DAMAGED), rec.reason
    # 3. redo on the proposed layers revives every killed unit (incoming weights and the BN entry reset)
    fixed = copy.deepcopy(model)
    report = pc.apply_reinit(fixed, pc.ReinitConfig(strategy="redo", layers=rec.layers, params={"tau": 0.0}, seed=0),
                             data=data.train)
    touched = report.table.set_index("layer")["units_touched"]
    for layer, bn_name in DAMAGED.items():
        assert touched[layer] == int(model.get_submodule(bn_name).weight.shape[0] * KILLED)
    after = pc.diagnose(fixed, data.val, metrics=["dead"], max_batches=4).wide()["dead"]
    assert (after.loc[list(DAMAGED)] == 0).all(), after.to_dict()
    # 4. the same fine-tune from the fixed net ends above the damaged net's plain fine-tune
    cfg = pc.FinetuneConfig(steps=40, batch_size=32, lr=0.05, warmup_steps=4, image_size=32, eval_every=40, seed=1,
                            device="cpu")
    plain_net = copy.deepcopy(model)
    plain = pc.finetune(plain_net, data, cfg)
    redo = pc.finetune(fixed, data, cfg)
    assert plain.status == redo.status == "finished"
    assert redo.final_val_acc > plain.final_val_acc + 0.01, (plain.final_val_acc, redo.final_val_acc)
    # the plain fine-tune never revives them: gradient does not reach a unit whose ReLU never fires
    still = pc.diagnose(plain_net, data.val, metrics=["dead"], max_batches=4).wide()["dead"]
    assert still.loc[list(DAMAGED)].tolist() == pytest.approx([KILLED] * len(DAMAGED))
