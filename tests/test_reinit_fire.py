"""FIRE: orthogonalize against hand-written SVD / Newton-Schulz, Procrustes optimality, layer targeting."""
import math

import pytest
import timm
import torch

import plasticity_core as pc
from plasticity_core.reinit import orthogonalize
from plasticity_core.reinit.fire import fire_scale


def taps(w):
    return [w[:, :, i, j] for i in range(w.shape[2]) for j in range(w.shape[3])]


def gram_dev(x):
    x = x.T if x.shape[1] > x.shape[0] else x
    return float((x.T @ x - torch.eye(x.shape[1], dtype=x.dtype)).pow(2).sum())


@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (4, 6, 3, 3), (7, 7), (3, 9)])
def test_svd_factor_is_u_vt_per_tap(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q = orthogonalize(w, method="svd")
    assert q.shape == w.shape and q.dtype == w.dtype
    for wt, qt in zip(taps(w) if w.dim() == 4 else [w], taps(q) if w.dim() == 4 else [q]):
        u, _, vh = torch.linalg.svd(wt, full_matrices=False)
        torch.testing.assert_close(qt, u @ vh, atol=1e-10, rtol=0)
        assert gram_dev(qt) < 1e-20


def hand_newton_schulz(x, steps):
    x = x.clone()
    wide = x.shape[1] > x.shape[0]
    if wide:
        x = x.T
    x = x / x.norm()
    for _ in range(steps):
        x = 1.5 * x - 0.5 * x @ x.T @ x
    return x.T if wide else x


@pytest.mark.parametrize("steps", [1, 3, 10])
@pytest.mark.parametrize("shape", [(5, 3, 3, 3), (3, 5, 1, 1), (8, 8), (4, 12)])
def test_newton_schulz_equals_hand_cubic_iteration(shape, steps):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    q = orthogonalize(w, method="newton_schulz", steps=steps)
    if w.dim() == 4:
        for wt, qt in zip(taps(w), taps(q)):
            torch.testing.assert_close(qt, hand_newton_schulz(wt, steps), atol=1e-12, rtol=0)
    else:
        torch.testing.assert_close(q, hand_newton_schulz(w, steps), atol=1e-12, rtol=0)


def test_newton_schulz_converges_to_polar_factor_for_well_conditioned_tall_matrix():
    w = torch.randn(64, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(orthogonalize(w, "newton_schulz", steps=40), orthogonalize(w, "svd"), atol=1e-8, rtol=0)


def test_svd_factor_beats_random_orthogonal_matrices_in_sfe():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(12, 7, generator=g, dtype=torch.float64)
    best = float((w - orthogonalize(w, "svd")).pow(2).sum())
    for _ in range(50):
        q, _ = torch.linalg.qr(torch.randn(12, 7, generator=g, dtype=torch.float64))
        assert best < float((w - q).pow(2).sum())


def test_zero_tap_gives_zero_not_nan():
    w = torch.randn(4, 4, 3, 3)
    w[:, :, 1, 1] = 0
    for method in ("svd", "newton_schulz"):
        q = orthogonalize(w, method)
        assert torch.isfinite(q).all() and q[:, :, 1, 1].abs().max() == 0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="method"):
        orthogonalize(torch.randn(3, 3), method="qr")
    with pytest.raises(ValueError, match="2-D"):
        orthogonalize(torch.randn(3))


def test_fire_on_resnet_gives_scaled_isometric_taps_and_keeps_biases_and_bn():
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    cfg = pc.ReinitConfig(strategy="fire", layers=["layer2.*"], params={"method": "svd"})
    r = pc.apply_reinit(m, cfg)
    assert sorted(r.table.layer) == ["layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.1"]
    for name in r.table.layer:
        w = m.get_submodule(name).weight.detach().double()
        c = fire_scale(w)
        assert c == pytest.approx(math.sqrt(w.shape[0] / w.shape[1]) / (w.shape[2] * w.shape[3]))
        for t in taps(w):
            assert gram_dev(t / c) < 1e-8
    changed = {k for k in before if not torch.equal(before[k], m.state_dict()[k])}
    assert changed == {f"{n}.weight" for n in r.table.layer}
    assert (r.table.dfi_si_after < 1e-6).all()


def test_fire_on_vit_touches_only_q_and_k_rows_by_default():
    torch.manual_seed(0)
    m = timm.create_model("test_vit", pretrained=False, num_classes=4)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    r = pc.apply_reinit(m, pc.ReinitConfig(strategy="fire", layers=["blocks.0.*"], params={"method": "svd"}))
    assert sorted(r.table.layer) == ["blocks.0.attn.qkv.k", "blocks.0.attn.qkv.q"]
    after = m.state_dict()
    d = m.embed_dim
    qkv_b, qkv_a = before["blocks.0.attn.qkv.weight"], after["blocks.0.attn.qkv.weight"]
    assert torch.equal(qkv_b[2 * d:], qkv_a[2 * d:])  # v rows untouched
    for part in (qkv_a[:d], qkv_a[d:2 * d]):  # square blocks: c = 1, exactly orthogonal
        assert gram_dev(part.double()) < 1e-8
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"blocks.0.attn.qkv.weight"}
    assert any("targets='qk'" in reason for reason in r.skipped.reason)


def test_fire_targets_all_and_norm_scale_keep_frobenius_norm():
    torch.manual_seed(0)
    m = timm.create_model("test_vit", pretrained=False, num_classes=4)
    norms = {n: m.get_submodule(n).weight.detach().norm().item() for n in ("blocks.1.mlp.fc1", "blocks.1.attn.proj")}
    r = pc.apply_reinit(m, pc.ReinitConfig(strategy="fire", layers=["blocks.1.*"], params={"targets": "all", "scale": "norm"}))
    assert len(r.table) == 6  # q, k, v, proj, fc1, fc2
    for n, v in norms.items():
        assert m.get_submodule(n).weight.detach().norm().item() == pytest.approx(v, rel=1e-5)
    assert r.table.norm_after.to_numpy() == pytest.approx(r.table.norm_before.to_numpy(), rel=1e-5)
