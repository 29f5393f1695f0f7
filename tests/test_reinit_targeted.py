"""targeted: the lowest-scoring fraction of units per layer is re-initialised, by each criterion."""
import torch
from torch import nn
from torch.utils.data import TensorDataset

import plasticity_core as pc


def net():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    return m


def data():
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g))


def changed_rows(before, after):
    return sorted(torch.nonzero((before != after).any(dim=1)).flatten().tolist())


def test_magnitude_reinitialises_the_smallest_rows_without_data():
    m = net()
    with torch.no_grad():
        m[0].weight[[1, 9, 12, 14]] *= 1e-3
    before = m[0].weight.detach().clone()
    out_before = m[2].weight.detach().clone()
    r = pc.apply_reinit(m, pc.ReinitConfig(strategy="targeted", layers=["0"], params={"criterion": "magnitude", "fraction": 0.25}))
    assert changed_rows(before, m[0].weight.detach()) == [1, 9, 12, 14]
    assert torch.equal(m[2].weight, out_before)  # outgoing="keep" by default
    assert r.table.units_touched.tolist() == [4]


def test_dormant_criterion_with_zeroed_outgoing_weights():
    m = net()
    with torch.no_grad():
        m[0].bias[[3, 4]] = -100.0
    before = m[0].weight.detach().clone()
    pc.apply_reinit(m, pc.ReinitConfig(strategy="targeted", layers=["0"],
                                       params={"criterion": "dormant", "fraction": 2 / 16, "outgoing": "zero"}), data=data())
    assert changed_rows(before, m[0].weight.detach()) == [3, 4]
    assert (m[2].weight[:, [3, 4]] == 0).all()


def test_saturation_reinitialises_the_most_saturated_units():
    m = net()
    with torch.no_grad():
        m[0].bias[[0, 6, 11]] = -100.0  # always in ReLU's flat region: saturation 1
    before = m[0].weight.detach().clone()
    pc.apply_reinit(m, pc.ReinitConfig(strategy="targeted", layers=["0"], params={"criterion": "saturation", "fraction": 3 / 16}),
                    data=data())
    assert changed_rows(before, m[0].weight.detach()) == [0, 6, 11]


def test_grad_criterion_picks_units_with_no_gradient_and_skips_unpaired_layers_for_zero():
    m = net()
    with torch.no_grad():
        m[2].weight[:, [5, 8]] = 0.0  # units 5 and 8 of layer 0 get exactly zero gradient
    before = m[0].weight.detach().clone()
    r = pc.apply_reinit(m, pc.ReinitConfig(strategy="targeted", layers=["0", "2"],
                                           params={"criterion": "grad", "fraction": 2 / 16, "outgoing": "zero"}), data=data())
    assert changed_rows(before, m[0].weight.detach()) == [5, 8]
    assert "2" in set(r.skipped.layer)  # layer 2 feeds the head: no unit pair to zero
    assert "grad_dormant" in r.metric_versions
