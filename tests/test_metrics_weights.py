"""Weight metrics against closed forms and hand loops (numpy, float64)."""
import math

import numpy as np
import pytest
import torch

from plasticity_core.metrics import METRICS, dfi, dfi_si, fro_norm, sfe, sfe_rel, spectral_norm, stable_rank
from plasticity_core.metrics.weights import weight_metrics


def orthogonal(m: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(max(m, n), min(m, n), generator=g, dtype=torch.float64))
    return q if m >= n else q.T


def hand_tap_metrics(w: np.ndarray) -> dict[str, float]:
    """Per-tap loop in numpy: tall X, singular values from SVD, then the docs/methods.md formulas; mean over taps."""
    taps = [w] if w.ndim == 2 else [w[:, :, i, j] for i in range(w.shape[2]) for j in range(w.shape[3])]
    out = {"dfi": [], "dfi_si": [], "spectral_norm": [], "stable_rank": []}
    for x in taps:
        x = x.T if x.shape[1] > x.shape[0] else x
        n = x.shape[1]
        s = np.linalg.svd(x, compute_uv=False)
        out["dfi"].append(np.sum((s ** 2 - 1) ** 2) + 0.0 * n)
        out["dfi_si"].append(n * np.sum(s ** 4) / np.sum(s ** 2) ** 2 - 1)
        out["spectral_norm"].append(s[0])
        out["stable_rank"].append(np.sum(s ** 2) / s[0] ** 2)
    return {k: float(np.mean(v)) for k, v in out.items()}


@pytest.mark.parametrize("shape", [(8, 8), (12, 5), (5, 12)])
def test_orthogonal_has_zero_dfi(shape):
    q = orthogonal(*shape)
    assert dfi(q) == pytest.approx(0.0, abs=1e-10)
    assert dfi_si(q) == pytest.approx(0.0, abs=1e-10)


def test_scaled_orthogonal_is_scale_invariant_zero_but_dfi_positive():
    q = 3.0 * orthogonal(10, 6)
    assert dfi_si(q) == pytest.approx(0.0, abs=1e-10)
    assert dfi(q) == pytest.approx(6 * (9.0 - 1.0) ** 2)  # n (c^2 - 1)^2


def test_closed_forms_on_a_diagonal_matrix():
    w = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    assert spectral_norm(w) == pytest.approx(3.0)
    assert stable_rank(w) == pytest.approx(14.0 / 9.0)
    assert fro_norm(w) == pytest.approx(math.sqrt(14.0))
    assert dfi(w) == pytest.approx(8.0 ** 2 + 3.0 ** 2 + 0.0)
    assert dfi_si(w) == pytest.approx(3 * (81 + 16 + 1) / 14.0 ** 2 - 1)


@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (4, 9, 3, 1), (16, 3, 1, 1)])
def test_conv_per_tap_matches_hand_loop(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    hand = hand_tap_metrics(w.numpy())
    assert dfi(w) == pytest.approx(hand["dfi"], rel=1e-9)
    assert dfi_si(w) == pytest.approx(hand["dfi_si"], rel=1e-9)
    assert spectral_norm(w) == pytest.approx(hand["spectral_norm"], rel=1e-9)
    assert stable_rank(w) == pytest.approx(hand["stable_rank"], rel=1e-9)


def test_fp32_engine_path_agrees_with_float64_functions():
    w = torch.randn(32, 16, 3, 3, generator=torch.Generator().manual_seed(2))
    w0 = w + 0.1 * torch.randn(w.shape, generator=torch.Generator().manual_seed(3))
    fast = {k: float(v) for k, v in weight_metrics(w, w0, set(METRICS.names())).items()}
    exact = {"sfe": sfe(w, w0), "sfe_rel": sfe_rel(w, w0), "dfi": dfi(w), "dfi_si": dfi_si(w), "fro_norm": fro_norm(w),
             "spectral_norm": spectral_norm(w), "stable_rank": stable_rank(w)}
    assert set(fast) == set(exact)
    for k in exact:
        assert fast[k] == pytest.approx(exact[k], rel=1e-4), k


def test_known_sfe_and_sfe_rel():
    w0 = torch.ones(4, 5)
    w = w0.clone()
    w[1, 2] += 3.0
    w[3, 0] -= 1.0
    assert sfe(w, w0) == pytest.approx(10.0)
    assert sfe_rel(w, w0) == pytest.approx(10.0 / 20.0)
    conv0 = torch.zeros(2, 2, 3, 3)
    conv = conv0.clone()
    conv[0, 1, 2, 2] = 2.0
    assert sfe(conv, conv0) == pytest.approx(4.0)
    assert sfe_rel(conv, conv0) == pytest.approx(4.0 / 1e-12)  # max(||w0||^2, 1e-12): finite, no NaN


def test_zero_matrix_never_gives_nan():
    z = torch.zeros(5, 3)
    assert dfi_si(z) == 0.0
    assert stable_rank(z) == 0.0
    assert spectral_norm(z) == 0.0
    assert dfi(z) == pytest.approx(3.0)
    values = weight_metrics(torch.zeros(4, 4, 3, 3), torch.zeros(4, 4, 3, 3), set(METRICS.names()))
    assert all(math.isfinite(float(v)) for v in values.values())


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="shapes differ"):
        sfe(torch.zeros(3, 4), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="2-D weight"):
        dfi(torch.zeros(7))


def test_weight_metrics_are_registered_with_definitions():
    for name in ("sfe", "sfe_rel", "dfi", "dfi_si", "fro_norm", "spectral_norm", "stable_rank"):
        info = METRICS.get(name)
        assert info.needs == "weights" and info.family == "weights" and info.definition and info.version >= 1
    assert METRICS.get("sfe_rel").defaults == {"eps": 1e-12}
    with pytest.raises(KeyError, match="did you mean"):
        METRICS.get("dfi_sii")


@pytest.mark.parametrize("shape", [(512, 512), (3072, 768), (256, 128, 3, 3), (64, 3, 7, 7), (10, 2048), (2048, 512),
                                   (1536, 384), (384, 1536), (384, 384), (100, 40)])
@pytest.mark.parametrize("batched", [False, True])
def test_gkl_spectral_norm_matches_torch_linalg(shape, batched):
    """Gram-free Golub-Kahan-Lanczos (CPU tap by tap, and the batched device path) against the exact sigma_1 of
    torch.linalg, float64, per tap: within 1e-5 and never above it by more than that."""
    from plasticity_core.metrics.weights import tall_taps, top_singular

    w = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    exact = torch.linalg.matrix_norm(tall_taps64(w), ord=2)  # per tap
    top, slow = top_singular(tall_taps(w), batched=batched)
    rel = top.double() / exact - 1
    assert float(rel.abs().max()) <= 1e-5 and float(rel.max()) <= 1e-5
    assert not slow.any()
    assert spectral_norm(w) == pytest.approx(float(exact.mean()), rel=1e-9)


def test_gkl_on_real_layer_shapes_and_no_gram_without_dfi(monkeypatch):
    """ResNet-50 / ViT-S layer shapes (random init): every tap within 1e-5, and no Gram formed unless dfi/dfi_si."""
    import timm

    import plasticity_core.metrics.weights as weights
    from plasticity_core.metrics import diagnose
    from plasticity_core.layers import layer_map

    calls = []
    original = weights.gram_norms
    monkeypatch.setattr(weights, "gram_norms", lambda x: calls.append(1) or original(x))
    torch.manual_seed(0)
    for name in ("resnet50", "vit_small_patch16_224"):
        m = timm.create_model(name, pretrained=False, num_classes=10)
        layers = layer_map(m)
        picks = [l for l in layers if l.name.startswith(("layer4.0", "layer3.0.conv2", "blocks.0.", "head", "fc"))]
        d = diagnose(m, [], metrics=["spectral_norm", "stable_rank", "fro_norm"])
        assert calls == []
        assert d.meta["weights_slow_path"] == {"layers": [], "count": 0}
        for layer in picks:
            w = layer.weight(m).detach()
            s = torch.linalg.matrix_norm(tall_taps64(w), ord=2)
            assert d.wide().at[layer.name, "spectral_norm"] == pytest.approx(float(s.mean()), rel=1e-5), layer.name
    diagnose(m, [], metrics=["dfi"])
    assert calls  # the Gram is formed for dfi


@pytest.mark.parametrize("shape", [(300, 256), (256, 256, 3, 3), (100, 40), (64, 64)])
def test_blocked_gram_norms_match_the_full_gram(shape):
    """dfi / dfi_si from the upper block triangle agree with the float64 definitions; near an isometry too."""
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(6)) / math.sqrt(shape[0])
    got = {k: float(v) for k, v in weight_metrics(w, None, {"dfi", "dfi_si"}).items()}
    assert got["dfi"] == pytest.approx(dfi(w), rel=1e-5) and got["dfi_si"] == pytest.approx(dfi_si(w), rel=1e-5)
    q = orthogonal(shape[0], shape[1]).float() if len(shape) == 2 else None
    if q is not None:
        near = {k: float(v) for k, v in weight_metrics(q, None, {"dfi"}).items()}
        assert near["dfi"] == pytest.approx(dfi(q), abs=1e-8)


@pytest.mark.parametrize("shape", [(300, 256), (256, 300), (256, 256, 3, 3), (1000, 512)])
def test_gram_norms_cpu_triangle_and_device_blocks_agree_with_float64(shape):
    """The CPU path (upper triangle by syrk, conv taps, transposed and plain weights) and the device path (column
    half blocks, run here on the CPU) both give ||X^T X - I||_F^2 and ||X^T X||_F^2 of the float64 Gram."""
    from plasticity_core.metrics.weights import _gram_norms_blocks, gram_norms, tall_taps

    x = tall_taps(torch.randn(*shape, generator=torch.Generator().manual_seed(8)) / math.sqrt(shape[0]))
    g = x.double().transpose(1, 2) @ x.double()
    want = (((g - torch.eye(g.shape[-1], dtype=g.dtype)) ** 2).sum((1, 2)), (g ** 2).sum((1, 2)))
    for got in (gram_norms(x), _gram_norms_blocks(x)):
        for a, b in zip(got, want):
            assert a.dtype == torch.float32 and torch.allclose(a.double(), b, rtol=2e-6, atol=0)


def test_edge_taps_give_todays_values():
    """All-zero, 1-row, 1-column and depthwise taps: the definitions' values; non-finite taps give NaN."""
    from plasticity_core.metrics.weights import tall_taps, top_singular

    z = torch.zeros(64, 64)
    values = {k: float(v) for k, v in weight_metrics(z, None, {"spectral_norm", "stable_rank", "fro_norm"}).items()}
    assert values == {"spectral_norm": 0.0, "stable_rank": 0.0, "fro_norm": 0.0}
    row, col = torch.randn(1, 300), torch.randn(300, 1)
    for w in (row, col):
        v = weight_metrics(w, None, {"spectral_norm", "stable_rank"})
        assert float(v["spectral_norm"]) == pytest.approx(float(w.norm()), rel=1e-6)
        assert float(v["stable_rank"]) == pytest.approx(1.0, rel=1e-6)
    dw = torch.randn(32, 1, 3, 3, generator=torch.Generator().manual_seed(4))  # depthwise: 9 taps of 32 x 1
    v = weight_metrics(dw, None, {"spectral_norm", "stable_rank"})
    assert float(v["spectral_norm"]) == pytest.approx(float(dw.flatten(2).norm(dim=0).mean()), rel=1e-6)
    assert float(v["stable_rank"]) == pytest.approx(1.0, rel=1e-6)
    for w in (dw, col, row):  # one singular value per tap: scale-invariant deviation from isometry exactly 0
        assert float(weight_metrics(w, None, {"dfi_si"})["dfi_si"]) == 0.0 == dfi_si(w)
    bad = torch.randn(3, 80, 70)
    bad[1, 5, 5] = float("nan")
    bad[2, 0, 0] = float("inf")
    top, slow = top_singular(tall_taps(bad.permute(1, 2, 0)))  # 3 taps
    assert math.isfinite(float(top[0])) and math.isnan(float(top[1])) and math.isnan(float(top[2]))
    assert not slow.any()


def test_fro_norm_is_exact_on_ten_million_entries():
    w = torch.randn(4096, 2560, generator=torch.Generator().manual_seed(5)) + 0.5  # 1.05e7 entries
    exact = float(w.double().square().sum().sqrt())
    got = float(weight_metrics(w, None, {"fro_norm"})["fro_norm"])
    assert got == pytest.approx(exact, rel=2e-7)
    assert fro_norm(w) == pytest.approx(exact, rel=1e-12)


def test_non_converged_tap_falls_back_to_exact_svd_and_is_counted(monkeypatch):
    """A tap whose Lanczos estimate does not meet the tolerance in GKL_MAX_STEPS steps gets an exact SVD, counted."""
    import plasticity_core.metrics.weights as weights
    from plasticity_core.metrics import diagnose

    monkeypatch.setattr(weights, "GKL_MAX_STEPS", 4)
    monkeypatch.setattr(weights, "GKL_TOL", 1e-12)
    m = torch.nn.Sequential(torch.nn.Linear(200, 100), torch.nn.ReLU(), torch.nn.Linear(100, 3))
    d = diagnose(m, [], metrics=["spectral_norm"])
    assert d.meta["weights_slow_path"]["count"] == 1 and d.meta["weights_slow_path"]["layers"] == ["0"]
    s = torch.linalg.matrix_norm(m[0].weight.detach().double(), ord=2)
    assert d.wide().at["0", "spectral_norm"] == pytest.approx(float(s), rel=1e-6)


def tall_taps64(w: torch.Tensor) -> torch.Tensor:
    taps = w.unsqueeze(0) if w.dim() == 2 else w.flatten(2).permute(2, 0, 1)
    return taps.double()


def test_engine_spectral_values_on_a_real_timm_model_match_exact():
    import timm

    from plasticity_core.metrics import diagnose

    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    d = diagnose(m, [], metrics=["spectral_norm", "stable_rank"])
    for layer in pc_layers(m):
        w = layer.weight(m).detach()
        s = torch.linalg.matrix_norm(tall_taps64(w), ord=2)
        fro2 = tall_taps64(w).square().sum((1, 2))
        assert d.wide().at[layer.name, "spectral_norm"] == pytest.approx(float(s.mean()), rel=1e-5)
        assert d.wide().at[layer.name, "stable_rank"] == pytest.approx(float((fro2 / s.square()).mean()), rel=1e-4)


def pc_layers(m):
    from plasticity_core.layers import layer_map

    return layer_map(m)


def test_sfe_is_cached_per_reference_tensor_and_recomputed_when_it_changes(monkeypatch):
    import plasticity_core.metrics.weights as weights
    from plasticity_core.metrics import diagnose

    m = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    ref = {k: v.clone() + 0.1 for k, v in m.state_dict().items()}
    calls = []
    original = weights.sfe_t
    monkeypatch.setattr(weights, "sfe_t", lambda *a, **k: calls.append(1) or original(*a, **k))
    a = diagnose(m, [], reference=ref, metrics=["sfe", "sfe_rel"])
    first = len(calls)
    b = diagnose(m, [], reference=ref, metrics=["sfe", "sfe_rel"])
    assert first > 0 and len(calls) == first and a.wide().equals(b.wide())
    ref["0.weight"].add_(1.0)  # the reference changes in place: its version moves
    c = diagnose(m, [], reference=ref, metrics=["sfe"])
    assert len(calls) > first and c.wide().at["0", "sfe"] > a.wide().at["0", "sfe"]
    assert c.wide().at["2", "sfe"] == pytest.approx(a.wide().at["2", "sfe"])
    other = {k: v.clone() for k, v in m.state_dict().items()}  # another reference (equal to the weights)
    d = diagnose(m, [], reference=other, metrics=["sfe"])
    assert (d.wide()["sfe"] == 0).all()


@pytest.mark.parametrize("compiled", [True, False])
def test_stopping_rule_never_stops_before_the_top_value_arrived(monkeypatch, compiled):
    """The error estimate alone (r^2 / gap) can pass before sigma_1 enters the Krylov space; the rule also waits
    for the Ritz value to stop moving. Even at a 10x looser tolerance every value stays within 1e-5 (the compiled
    Lanczos kernel and the BLAS path)."""
    import plasticity_core.metrics.weights as weights
    from plasticity_core.metrics import weight_kernels

    if compiled and not weight_kernels.ready():
        pytest.skip("numba not installed (the [fast] extra)")
    monkeypatch.setattr(weight_kernels, "ENABLED", compiled)
    monkeypatch.setattr(weights, "GKL_TOL", 1e-5)
    for shape in [(64, 64), (384, 384), (1536, 384), (512, 512), (256, 256), (128, 128), (100, 40)]:
        for seed in range(6):
            w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
            exact = torch.linalg.matrix_norm(w.double(), ord=2)
            top, _ = weights.top_singular(weights.tall_taps(w))
            assert abs(float(top[0]) / float(exact) - 1) <= 1e-5, (shape, seed)


def test_batched_and_one_by_one_cpu_paths_agree(monkeypatch):
    """Without the compiled kernel, small taps step together, large ones run one by one: both exact to 1e-6, and a
    small tap's value is the same bit for bit whichever taps it is computed with (a layer recomputed alone, all
    layers at once, any entry point)."""
    import numpy as np

    from plasticity_core.metrics import weight_kernels
    from plasticity_core.metrics.weights import _gkl_tap, gkl_top

    monkeypatch.setattr(weight_kernels, "ENABLED", False)

    g = torch.Generator().manual_seed(11)
    x = torch.randn(5, 200, 96, generator=g)
    x[2] *= 0.0  # an all-zero tap in the batch leaves it at once with 0
    x[3, :, 1:] = 0.0  # rank one: the Krylov space closes at the second step (alpha = 0 there)
    x[4] = torch.randn(200, 3, generator=g) @ torch.randn(3, 96, generator=g)  # rank three
    taps = np.ascontiguousarray(x.numpy())
    batch, ok = gkl_top(taps)
    alone = np.array([gkl_top(taps[i:i + 1])[0][0] for i in range(5)])
    pairs = np.concatenate([gkl_top(taps[i:i + 2])[0] for i in range(0, 5, 2)])
    one = np.array([_gkl_tap(t, 1e-6, None)[0] for t in taps])  # the loop large taps take
    one_f = np.array([_gkl_tap(np.asfortranarray(t), 1e-6, None)[0] for t in taps])  # a transposed weight's tap
    exact = torch.linalg.matrix_norm(x.double(), ord=2).numpy()
    assert ok.all() and batch[2] == 0.0 and one[2] == 0.0 and one_f[2] == 0.0
    assert np.allclose(one_f, exact, rtol=1e-6, atol=0)
    assert np.array_equal(batch, alone) and np.array_equal(batch, pairs)
    assert np.allclose(batch, exact, rtol=1e-6, atol=0) and np.allclose(one, exact, rtol=1e-6, atol=0)


@pytest.mark.parametrize("batched", [False, True])
def test_a_start_vector_in_the_null_space_is_not_taken_for_a_zero_matrix(batched):
    """X v0 = 0 for a nonzero X says nothing about sigma_1: the exact SVD decides, and the tap is counted."""
    from plasticity_core.metrics.weights import start_vector, top_singular

    v0 = start_vector(64).float()
    w = torch.randn(80, 64, generator=torch.Generator().manual_seed(2))
    w = w - (w @ v0)[:, None] * v0[None, :]  # every row orthogonal to the start vector
    top, slow = top_singular(w[None], batched=batched)
    assert float(top[0]) == pytest.approx(float(torch.linalg.matrix_norm(w.double(), ord=2)), rel=1e-6)
    assert bool(slow[0])


@pytest.mark.gpu
def test_device_path_value_does_not_depend_on_the_batch():
    """On a GPU the taps of one shape run as one batch (``gkl_top_batched``): a tap's value must not depend on
    which taps share its batch (a layer recomputed alone after a re-init, or with the whole model), and it agrees
    with the CPU path to 1e-6."""
    from plasticity_core.metrics.weights import top_singular

    x = torch.randn(6, 300, 200, generator=torch.Generator().manual_seed(0))
    cpu, _ = top_singular(x, batched=False)
    xd = x.cuda()
    together, _ = top_singular(xd, batched=True)
    alone = torch.cat([top_singular(xd[i:i + 1], batched=True)[0] for i in range(6)])
    pairs = torch.cat([top_singular(xd[i:i + 2], batched=True)[0] for i in range(0, 6, 2)])
    assert torch.equal(together, alone) and torch.equal(together, pairs)
    assert torch.allclose(together.cpu().double(), cpu.double(), rtol=1e-6, atol=0)


def test_weight_kernels_run_blas_on_one_thread_and_give_the_setting_back(monkeypatch):
    """The CPU kernels issue many small BLAS calls (the Lanczos products, one syrk per tap): inside them numpy's
    and SciPy's BLAS run on one thread (on two threads resnet50's weight set took 3x the wall time, and a forward
    running beside the dashboard's background weight job slowed by half); the caller's setting is back after."""
    from scipy.linalg import blas
    from threadpoolctl import threadpool_info, threadpool_limits

    def pools() -> dict:
        return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    seen = []
    real = blas.get_blas_funcs

    def spy(*args, **kwargs):
        seen.append(pools())
        return real(*args, **kwargs)

    monkeypatch.setattr(blas, "get_blas_funcs", spy)
    w = torch.randn(1536, 384, generator=torch.Generator().manual_seed(4))  # one large tap: the vector loop, syrk
    with threadpool_limits(limits=2, user_api="blas"):
        before = pools()
        got = {k: float(v) for k, v in weight_metrics(w, None, {"spectral_norm", "dfi"}).items()}
        after = pools()
    from plasticity_core.metrics import weight_kernels

    calls = 1 if weight_kernels.ready() else 2  # gram_norms' syrk, and gkl_top's products unless compiled (no BLAS there)
    assert len(seen) == calls and all(set(s.values()) == {1} for s in seen)
    assert before and set(before.values()) == {2} and after == before
    assert got["spectral_norm"] == pytest.approx(spectral_norm(w), rel=1e-5) and got["dfi"] == pytest.approx(dfi(w), rel=1e-5)


@pytest.mark.parametrize("path", ["compiled", "blas", "device-like"])
def test_tiny_and_huge_weights_give_the_definitions_values(path, monkeypatch):
    """Layers of a real timm model scaled to 1e-30, 1e-12, 1e12 and 1e30 (a dead branch, a diverged run): every
    weight metric equals the float64 definition, with no non-finite warning. Before, X^T X and its squares left
    float32's range: dfi_si read 0 ("a flat spectrum") at 1e-12, stable_rank 0 and spectral_norm inf on a conv at
    1e12, fro_norm / sfe inf at 1e20. "device-like": what a GPU runs, here on the CPU: the units as a tensor (1 for
    the taps in range, no host read), the batched Golub-Kahan-Lanczos, the Gram norms by column-half blocks."""
    import warnings

    import timm

    import plasticity_core.metrics.weights as weights
    from plasticity_core.metrics import diagnose, weight_kernels
    from plasticity_core.metrics.diagnose import clear_weight_cache

    if path == "compiled" and not weight_kernels.ready():
        pytest.skip("numba not installed")
    monkeypatch.setattr(weight_kernels, "ENABLED", path == "compiled")
    if path == "device-like":
        monkeypatch.setattr(weights, "tap_units", weights.powers_of_two)
        top_finite = weights._top_finite
        monkeypatch.setattr(weights, "_top_finite", lambda x, batched: top_finite(x, True))
        monkeypatch.setattr(weights, "_gram_norms_syrk", lambda a: weights._gram_norms_blocks(torch.from_numpy(a)))
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    reference = {k: v.clone() for k, v in m.state_dict().items()}
    layers = pc_layers(m)
    scaled = dict(zip([l.name for l in layers[1:9:2]], (1e-30, 1e-12, 1e12, 1e30)))
    with torch.no_grad():
        for layer in layers:
            if layer.name in scaled:
                w = layer.weight(m)
                w.copy_((w.double() * scaled[layer.name]).float())
    names = ["dfi", "dfi_si", "fro_norm", "spectral_norm", "stable_rank", "sfe", "sfe_rel"]
    clear_weight_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = diagnose(m, [], metrics=names, reference=reference).wide()
    clear_weight_cache()
    pure = {"dfi": dfi, "dfi_si": dfi_si, "fro_norm": fro_norm, "spectral_norm": spectral_norm,
            "stable_rank": stable_rank}
    for layer in layers:
        w = layer.weight(m).detach()
        w0 = reference[f"{layer.module_name}.weight"]
        want = {k: f(w) for k, f in pure.items()} | {"sfe": sfe(w, w0), "sfe_rel": sfe_rel(w, w0)}
        for k, v in want.items():
            assert d.at[layer.name, k] == pytest.approx(v, rel=1e-5, abs=1e-6 if k == "dfi_si" else 0), \
                (layer.name, scaled.get(layer.name, 1.0), k)
    assert len(scaled) == 4
    base = torch.randn(400, 256, generator=torch.Generator().manual_seed(3)) / 20  # n >= GRAM_SPLIT_N: split Grams
    for scale in (1e-30, 1e-12, 1.0, 1e12, 1e30):
        w = (base.double() * scale).float()
        got = weight_metrics(w, base, set(names))
        want = {k: f(w) for k, f in pure.items()} | {"sfe": sfe(w, base), "sfe_rel": sfe_rel(w, base)}
        for k, v in want.items():
            assert float(got[k]) == pytest.approx(v, rel=1e-5), (scale, k)
