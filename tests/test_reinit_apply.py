"""apply_reinit / preview_reinit plumbing: preview leaves the model bit-identical, optimizer state of touched
slices is zeroed, BatchNorm statistics are recalibrated to the hand-computed values."""
import pytest
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import plasticity_core as pc
from plasticity_core.reinit.report import COLUMNS


def images(n=16, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.zeros(n, dtype=torch.long))


def test_preview_leaves_parameters_and_buffers_bit_identical():
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    for strategy in ("fire", "reset", "shrink_perturb", "redo", "targeted"):
        r = pc.preview_reinit(m, pc.ReinitConfig(strategy=strategy, layers=["layer2.*", "layer3.*"], bn_batches=2), data=images())
        assert list(r.table.columns) == COLUMNS
        assert r.resolved_layers
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert m.training  # mode restored too
    fire = pc.preview_reinit(m, pc.ReinitConfig(strategy="fire", layers=["layer2.*"]), data=images())
    assert (fire.table.sfe > 0).all() and any("recalibrated" in n for n in fire.notes)


def train_step(model, opt, x):
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()


def test_optimizer_moments_of_touched_slices_are_zero_afterwards():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    train_step(m, opt, torch.randn(32, 8))
    cfg = pc.ReinitConfig(strategy="targeted", layers=["0"], params={"criterion": "magnitude", "fraction": 0.25, "outgoing": "zero"})
    before = m[0].weight.detach().clone()
    pc.apply_reinit(m, cfg, optimizer=opt)
    rows = (before != m[0].weight).any(dim=1)
    s0, s2 = opt.state[m[0].weight], opt.state[m[2].weight]
    for key in ("exp_avg", "exp_avg_sq"):
        assert (s0[key][rows] == 0).all() and (s0[key][~rows] != 0).any()
        assert (opt.state[m[0].bias][key][rows] == 0).all()
        assert (s2[key][:, rows] == 0).all() and (s2[key][:, ~rows] != 0).any()
    assert float(s0["step"]) == 1  # partial reset keeps the per-tensor step (docs/methods.md, Safeguards: optimizer state)
    # whole-layer strategies reset the whole tensor, step included
    pc.apply_reinit(m, pc.ReinitConfig(strategy="reset", layers=["2"]), optimizer=opt)
    assert all((opt.state[m[2].weight][k] == 0).all() for k in ("exp_avg", "exp_avg_sq"))
    assert float(opt.state[m[2].weight]["step"]) == 0


def test_sgd_momentum_of_touched_layer_is_zeroed():
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    train_step(m, opt, torch.randn(4, 3, 32, 32))
    stem = dict(m.named_parameters())  # block convs get no gradient at init (timm's zero_init_last): use the stem
    assert (opt.state[stem["conv1.3.weight"]]["momentum_buffer"] != 0).any()
    pc.apply_reinit(m, pc.ReinitConfig(strategy="fire", layers=["conv1.3"]), optimizer=opt)
    assert (opt.state[stem["conv1.3.weight"]]["momentum_buffer"] == 0).all()
    assert (opt.state[stem["conv1.6.weight"]]["momentum_buffer"] != 0).any()


def test_recalibrate_batchnorm_matches_hand_computed_statistics():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    m = nn.Sequential(conv, nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU())
    m.eval()
    ds = images(n=16, size=8)
    n = pc.recalibrate_batchnorm(m, DataLoader(ds, batch_size=8), batches=5)
    assert n == 2 and not m.training and not m[1].training and m[1].momentum == 0.1
    with torch.no_grad():
        outs = [conv(ds.tensors[0][i:i + 8]) for i in (0, 8)]
    mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for o in outs]).mean(0)
    torch.testing.assert_close(m[1].running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m[1].running_var, var, rtol=1e-5, atol=1e-6)


def test_no_data_note_and_bad_cfg_type():
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    r = pc.apply_reinit(m, pc.ReinitConfig(strategy="fire", layers=["layer4.*"]))
    assert "BatchNorm not recalibrated: no data given" in " ".join(r.notes)
    try:
        pc.apply_reinit(m, {"strategy": "fire"})
    except TypeError as e:
        assert "ReinitConfig" in str(e)
    else:
        raise AssertionError("a dict config must be refused")


def test_an_optimizer_that_does_not_hold_the_layers_is_refused():
    import timm

    from plasticity_core.config import ReinitConfig
    from plasticity_core.errors import UserError, user_message
    from plasticity_core.reinit import apply_reinit

    torch.manual_seed(0)
    model, other = timm.create_model("test_resnet", num_classes=3), timm.create_model("test_resnet", num_classes=3)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(UserError) as e:
        apply_reinit(model, ReinitConfig(strategy="fire", layers=["layer1*"]), optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    assert "holds none of the" in user_message(e.value) and "layer1" in user_message(e.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # refused before any change
    head_only = torch.optim.SGD([p for n, p in model.named_parameters() if not n.startswith("layer1.0")], lr=0.1)
    report = apply_reinit(model, ReinitConfig(strategy="fire", layers=["layer*"]), optimizer=head_only)
    assert any("does not hold" in n and "layer1.0" in n for n in report.notes)


def test_an_empty_dataset_is_our_message():
    import timm
    from torch.utils.data import TensorDataset

    from plasticity_core.config import ReinitConfig
    from plasticity_core.errors import user_message
    from plasticity_core.metrics import diagnose
    from plasticity_core.reinit import apply_reinit

    model = timm.create_model("test_resnet", num_classes=3)
    empty = TensorDataset(torch.zeros(0, 3, 32, 32), torch.zeros(0, dtype=torch.long))
    for call in (lambda: diagnose(model, empty, metrics=["dormant"]),
                 lambda: apply_reinit(model, ReinitConfig(strategy="redo"), data=empty)):
        with pytest.raises(ValueError) as e:
            call()
        assert "TensorDataset given as data is empty (0 items)" in (user_message(e.value) or "")


def test_redo_without_data_is_spelled_per_entry_point():
    import timm

    from plasticity_core.config import ReinitConfig
    from plasticity_core.errors import user_message
    from plasticity_core.reinit import apply_reinit

    with pytest.raises(ValueError) as e:
        apply_reinit(timm.create_model("test_resnet", num_classes=3), ReinitConfig(strategy="redo"))
    assert "pass --data SPEC" in user_message(e.value, "cli") and "data=" not in user_message(e.value, "cli")
    assert "load a dataset in Setup" in user_message(e.value, "dashboard")


def test_progress_reports_the_waits_in_their_own_units(tiny_resnet, synthetic):
    """The preview's waits (unit scoring, BatchNorm recalibration) report done/total in their own units."""
    import plasticity_core as pc

    seen = []
    cfg = pc.ReinitConfig(strategy="targeted", layers=["layer1.*"], params={"criterion": "dormant", "max_batches": 3},
                          bn_batches=4)
    report = pc.preview_reinit(tiny_resnet, cfg, data=synthetic.train, progress=lambda *a: seen.append(a))
    scored = [a for a in seen if a[0] == "batches scored"]
    bn = [a for a in seen if a[0] == "BatchNorm batches"]
    assert [d for _, d, _ in scored] == [1, 2, 3] and scored[-1][2] == 3
    assert [d for _, d, _ in bn] == [1, 2, 3, 4] and {t for _, _, t in bn} == {4}
    assert any("recalibrated on 4 batches" in n for n in report.notes)


def test_report_norms_are_the_diagnosis_fro_norm():
    """The Re-init table's norm_before / norm_after are the diagnosis' fro_norm of the same weight (float64 sums):
    float32's ``Tensor.norm`` made them differ in the 4th-5th digit on large layers (MobileNetV2's conv_head read
    19.5866 in the preview and 19.5867 in the diagnosis)."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 2048),
                            torch.nn.ReLU(), torch.nn.Linear(2048, 3))
    before = pc.diagnose(m, [], metrics=["fro_norm"]).wide().at["3", "fro_norm"]
    row = pc.apply_reinit(m, pc.ReinitConfig(strategy="shrink_perturb", layers=["3"])).table.iloc[0]
    after = pc.diagnose(m, [], metrics=["fro_norm"]).wide().at["3", "fro_norm"]
    exact = float(m[3].weight.detach().double().norm())
    assert row["layer"] == "3" and after == pytest.approx(exact, rel=1e-7)
    assert row["norm_before"] == pytest.approx(before, rel=1e-7) and row["norm_after"] == pytest.approx(after, rel=1e-7)
