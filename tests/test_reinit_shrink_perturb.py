"""shrink_perturb: both named forms against their formulas."""
import torch
from torch import nn

import plasticity_core as pc


def net():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    return m


def snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_lam_one_sigma_zero_is_the_identity():
    m = net()
    before = snapshot(m)
    r = pc.apply_reinit(m, pc.ReinitConfig(strategy="shrink_perturb", params={"lam": 1.0, "sigma": 0.0}))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert (r.table.sfe == 0).all() and len(r.table) == 2


def test_shrink_scales_and_noise_has_sigma():
    m = net()
    before = snapshot(m)
    pc.apply_reinit(m, pc.ReinitConfig(strategy="shrink_perturb", layers=["0"], params={"lam": 0.5, "sigma": 0.0}))
    torch.testing.assert_close(m[0].weight, 0.5 * before["0.weight"], rtol=0, atol=0)
    m = net()
    pc.apply_reinit(m, pc.ReinitConfig(strategy="shrink_perturb", layers=["2"], params={"lam": 0.8, "sigma": 0.05}))
    noise = (m[2].weight - 0.8 * before["2.weight"]).detach()
    assert abs(noise.std().item() - 0.05) < 0.005 and abs(noise.mean().item()) < 0.005
    assert torch.equal(m[0].weight, before["0.weight"])  # unselected layer untouched


def test_interpolate_endpoints():
    m = net()
    before = snapshot(m)
    pc.apply_reinit(m, pc.ReinitConfig(strategy="shrink_perturb", params={"form": "interpolate", "alpha": 0.0}))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    a, b = net(), net()
    pc.apply_reinit(a, pc.ReinitConfig(strategy="shrink_perturb", seed=3, params={"form": "interpolate", "alpha": 1.0}))
    pc.apply_reinit(b, pc.ReinitConfig(strategy="reset", seed=3))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=0, atol=1e-7, msg=k)
    half = net()
    pc.apply_reinit(half, pc.ReinitConfig(strategy="shrink_perturb", seed=3, params={"form": "interpolate", "alpha": 0.25}))
    torch.testing.assert_close(half[2].weight, 0.75 * before["2.weight"] + 0.25 * b[2].weight, rtol=0, atol=1e-6)
