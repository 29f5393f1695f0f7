"""Gradient metrics against autograd computed by hand on the whole probe set at once."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plasticity_core.metrics import diagnose


class WithSideBranch(nn.Module):
    """``side`` runs in the forward but its output never reaches the logits: cut off from the loss."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.side = nn.Conv2d(6, 4, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = self.act(self.conv(x))
        self.side(h)
        return self.fc(h.mean((2, 3)))


def data(n_batches=3, bs=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 3, 8, 8, generator=g), torch.randint(0, 3, (bs,), generator=g)) for _ in range(n_batches)]


def test_layer_cut_off_from_the_loss_has_zero_grad_norm():
    torch.manual_seed(0)
    net = WithSideBranch()
    d = diagnose(net, data(), metrics=["grad_norm", "grad_dormant"])
    w = d.wide()
    assert w.at["side", "grad_norm"] == 0.0
    assert w.at["side", "grad_dormant"] == 1.0  # no unit receives any gradient
    assert w.at["conv", "grad_norm"] > 0 and w.at["fc", "grad_norm"] > 0


def test_grad_norm_and_grad_dormant_match_autograd_by_hand():
    torch.manual_seed(0)
    net = WithSideBranch()
    batches = data()
    d = diagnose(net, batches, metrics=["grad_norm", "grad_dormant"], params={"grad_dormant": {"tau": 0.5}})
    x = torch.cat([b[0] for b in batches]).double()
    y = torch.cat([b[1] for b in batches])
    ref = WithSideBranch().double()
    ref.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    h = ref.conv(x)
    h.retain_grad()
    logits = ref.fc(ref.act(h).mean((2, 3)))
    F.cross_entropy(logits, y, reduction="mean").backward()
    assert d.wide().at["conv", "grad_norm"] == pytest.approx(float(ref.conv.weight.grad.norm()), rel=1e-5)
    assert d.wide().at["fc", "grad_norm"] == pytest.approx(float(ref.fc.weight.grad.norm()), rel=1e-5)
    g = h.grad * len(y)  # per-sample loss gradients: d(sum of CE)/dh
    mean_abs = g.abs().mean(dim=(0, 2, 3))
    score = mean_abs / mean_abs.mean()
    np.testing.assert_allclose(d.units("conv", "grad_dormant"), score.numpy(), rtol=1e-5)
    assert d.wide().at["conv", "grad_dormant"] == pytest.approx(float((score <= 0.5).double().mean()))


def test_flags_mode_and_grads_are_restored():
    torch.manual_seed(0)
    net = WithSideBranch().train()
    for p in net.parameters():
        p.requires_grad_(False)
    net.fc.weight.requires_grad_(True)
    net.fc.weight.grad = torch.full_like(net.fc.weight, 7.0)
    diagnose(net, data(1), metrics=["grad_norm", "grad_dormant"])
    assert net.training
    assert [p.requires_grad for p in net.parameters()] == [False, False, False, False, True, False]
    assert torch.equal(net.fc.weight.grad, torch.full_like(net.fc.weight, 7.0))  # user's .grad untouched
    assert all(p.grad is None for n, p in net.named_parameters() if n != "fc.weight")


def test_gradient_metrics_need_labels():
    net = WithSideBranch()
    with pytest.raises(ValueError, match="labels"):
        diagnose(net, [torch.randn(2, 3, 8, 8)], metrics=["grad_norm"])
    d = diagnose(net, [torch.randn(2, 3, 8, 8)], metrics=["dead"])  # activation metrics do not
    assert d.wide().at["conv", "dead"] >= 0


class FrozenUnderNoGrad(nn.Module):
    """A frozen feature extractor run under ``torch.no_grad`` inside the model: no gradient is computed for it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        with torch.no_grad():
            h = self.act(self.stem(x))
        return self.fc(h.mean((2, 3)))


def test_a_layer_no_gradient_is_computed_for_reads_n_a_not_zero():
    torch.manual_seed(0)
    d = diagnose(FrozenUnderNoGrad(), data(), metrics=["grad_norm", "grad_dormant", "dormant"])
    w = d.wide()
    assert np.isnan(w.at["stem", "grad_norm"]) and np.isnan(w.at["stem", "grad_dormant"])  # n/a, not 0.0
    assert w.at["fc", "grad_norm"] > 0 and not np.isnan(w.at["stem", "dormant"])
    assert d.meta["no_gradient"] == ["stem"]
    side = diagnose(WithSideBranch(), data(), metrics=["grad_norm"])
    assert side.meta["no_gradient"] == [] and side.wide().at["side", "grad_norm"] == 0.0  # a real zero stays 0


def test_grad_norm_of_a_large_layer_is_exact_to_float32_rounding():
    """An 8.4M-entry gradient (a 4096 -> 2048 layer): the norm is taken in float64. float32's ``Tensor.norm`` was off
    by ~1e-4 here (2e-4 at 1e7 entries), the error fro_norm had before it moved to float64 sums."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(192, 4096), nn.ReLU(), nn.Linear(4096, 2048), nn.ReLU(),
                        nn.Linear(2048, 3))
    batches = data(2)
    d = diagnose(net, batches, metrics=["grad_norm"])
    x = torch.cat([b[0] for b in batches]).double()
    y = torch.cat([b[1] for b in batches])
    ref = nn.Sequential(*[m for m in net]).double()  # the same modules, converted: ``net`` is not used after this
    F.cross_entropy(ref(x), y, reduction="mean").backward()
    assert d.wide().at["3", "grad_norm"] == pytest.approx(float(ref[3].weight.grad.norm()), rel=2e-6)
