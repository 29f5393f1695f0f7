"""The compiled weight kernels (``metrics/weight_kernels.py``, numba): sigma_1 against exact SVDs and the BLAS path,
sums of squares against float64."""
import numpy as np
import pytest
import timm
import torch

from plasticity_core.metrics import diagnose, jit, weight_kernels
from plasticity_core.metrics import weights as W

NEEDS_NUMBA = pytest.mark.skipif(not jit.AVAILABLE, reason="numba not installed (the [fast] extra)")


def with_spectrum(m: int, n: int, s: list[float], seed: int) -> torch.Tensor:
    """An m x n float32 matrix with the given leading singular values (the rest 0), from float64 factors."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, len(s), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=torch.float64))
    return (u * torch.tensor(s, dtype=torch.float64)) @ v.T


def weights_under_test() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "mlp (1536 x 384)": torch.randn(1536, 384, generator=g) * 0.02,
        "transposed (384 x 1536)": torch.randn(384, 1536, generator=g) * 0.02,  # F-contiguous taps: q = 1536
        "conv 3x3 (128 x 96)": torch.randn(128, 96, 3, 3, generator=g),  # strided taps: copied to rows
        "square (64 x 64)": torch.randn(64, 64, generator=g),
        "rank one": torch.randn(200, 1, generator=g) @ torch.randn(1, 96, generator=g),
        "rank three": torch.randn(200, 3, generator=g) @ torch.randn(3, 96, generator=g),
        "top two equal": with_spectrum(300, 120, [2.0, 2.0, 1.0, 0.5], seed=1).float(),
        "top two within 1e-4": with_spectrum(300, 120, [1.0, 1.0 - 1e-4] + [0.9] * 40, seed=2).float(),
        "one large value": with_spectrum(100, 80, [100.0] + [1e-3] * 60, seed=3).float(),
    }


@NEEDS_NUMBA
@pytest.mark.parametrize("name", list(weights_under_test()))
def test_compiled_sigma1_is_exact_to_the_documented_accuracy_and_agrees_with_blas(name, monkeypatch):
    """Within 1e-6 of float64 SVD (the docs promise 1e-5) and never above it by more; the BLAS path (numba absent)
    agrees to the same accuracy."""
    w = weights_under_test()[name]
    exact = torch.linalg.matrix_norm(W.tall_taps(w, torch.float64), ord=2).numpy()
    assert weight_kernels.ready()
    compiled, slow = W.top_singular(W.tall_taps(w))
    monkeypatch.setattr(weight_kernels, "ENABLED", False)
    blas, slow_blas = W.top_singular(W.tall_taps(w))
    for got in (compiled.double().numpy(), blas.double().numpy()):
        assert np.all(np.abs(got / exact - 1) <= 1e-6), (name, got, exact)
    assert not slow.any() and not slow_blas.any()


@NEEDS_NUMBA
def test_a_taps_value_does_not_depend_on_the_taps_computed_with_it():
    """The compiled path runs tap after tap: bit for bit the same value alone, in pairs, or in the whole batch."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(5, 200, 96, generator=g)
    x[2] = 0.0  # all zero: 0, converged
    x[3, :, 1:] = 0.0  # one nonzero column
    taps = np.ascontiguousarray(x.numpy())
    batch, ok = W.gkl_top(taps)
    alone = np.array([W.gkl_top(taps[i:i + 1])[0][0] for i in range(5)])
    pairs = np.concatenate([W.gkl_top(taps[i:i + 2])[0] for i in range(0, 5, 2)])
    assert ok.all() and batch[2] == 0.0
    assert np.array_equal(batch, alone) and np.array_equal(batch, pairs)
    assert np.allclose(batch, torch.linalg.matrix_norm(x.double(), ord=2).numpy(), rtol=1e-6, atol=0)


@NEEDS_NUMBA
def test_compiled_path_reads_each_tap_once_per_step_in_its_contiguous_axis():
    """A transposed weight's taps are read through their transposed view (no copy); conv taps are copied once."""
    w = torch.randn(96, 300)
    x = W.tall_taps(w).numpy()  # (1, 300, 96), F-contiguous
    rows = weight_kernels.rows(x)
    assert not x.flags.c_contiguous and np.shares_memory(rows, x) and rows.shape == (1, 96, 300)
    conv = W.tall_taps(torch.randn(64, 32, 3, 3)).numpy()
    rows = weight_kernels.rows(conv)
    assert rows.flags.c_contiguous and not np.shares_memory(rows, conv)


def test_kernel_that_cannot_be_built_takes_the_blas_path_and_says_so(monkeypatch):
    """numba unusable: the same values from the BLAS path, a warning says why, and the diagnosis names the path."""
    def broken():
        raise ImportError("numba needs NumPy version <= 2.0")

    model = timm.create_model("test_resnet", num_classes=5)
    monkeypatch.setattr(weight_kernels, "ENABLED", False)
    reference = diagnose(model, [], metrics=["spectral_norm", "stable_rank"])
    assert reference.meta["spectral_path"].startswith(weight_kernels.SLOWER)
    monkeypatch.setattr(weight_kernels, "ENABLED", True)
    monkeypatch.setattr(weight_kernels, "_kernel", broken)
    weight_kernels._loaded.cache_clear()
    try:
        from plasticity_core.metrics.diagnose import clear_weight_cache

        clear_weight_cache()
        with pytest.warns(RuntimeWarning, match="compiled weight kernels could not be built .*numba needs NumPy"):
            d = diagnose(model, [], metrics=["spectral_norm", "stable_rank"])
        assert "could not be built (ImportError: numba needs NumPy" in d.meta["spectral_path"]
        assert "sigma_1 took two reads of each tap per step" in d.slow_path_note()  # the CLI and Diagnose page line
        np.testing.assert_array_equal(d.wide().values, reference.wide().values)
    finally:
        weight_kernels._loaded.cache_clear()


def test_spectral_path_in_the_meta_names_what_this_diagnosis_did():
    model = timm.create_model("test_resnet", num_classes=5)
    assert diagnose(model, [], metrics=["fro_norm"]).meta["spectral_path"] is None  # no sigma_1 asked for
    d = diagnose(model, [], metrics=["stable_rank"])
    if weight_kernels.ready():
        path = d.meta["spectral_path"]
        assert path == weight_kernels.describe(torch.device("cpu")) and "numba" in path
        assert d.slow_path_note() is None
    else:
        assert d.meta["spectral_path"].startswith(weight_kernels.SLOWER) and "sigma_1 took" in d.slow_path_note()


@NEEDS_NUMBA
def test_sums_of_squares_are_float64_exact_on_every_layout(monkeypatch):
    """||X||_F^2 per tap from one read, accumulated and returned in float64 (the fro_norm and stable_rank input): a
    matrix, a transposed one, 1x1 and 3x3 convs (taps copied once). The torch path (numba off) too."""
    g = torch.Generator().manual_seed(9)
    for w in (torch.randn(3000, 700, generator=g) + 0.5, torch.randn(64, 32, 1, 1, generator=g),
              torch.randn(64, 32, 3, 3, generator=g), torch.randn(50, 40, generator=g).T,
              torch.randn(40, 90, generator=g)):
        exact = W.tall_taps(w, torch.float64).square().sum((1, 2))
        compiled = W.tap_fro2(w)
        assert compiled.dtype == torch.float64 and compiled.shape == exact.shape
        assert torch.allclose(compiled, exact, rtol=1e-13, atol=0)
        assert torch.equal(W.WeightView(w, None).fro2, compiled)  # the view's (from its tap copy) is the same
        monkeypatch.setattr(weight_kernels, "ENABLED", False)
        assert torch.allclose(W.tap_fro2(w), exact, rtol=1e-11, atol=0)  # torch's norm: ~2e-13
        monkeypatch.setattr(weight_kernels, "ENABLED", True)
    bad = torch.randn(40, 30)
    bad[3, 4] = float("inf")
    assert torch.isinf(W.tap_fro2(bad)).all()  # a non-finite entry shows in the sum (the nonfinite check reads it)
    bad[3, 4] = float("nan")
    assert torch.isnan(W.tap_fro2(bad)).all()


def test_a_diagnosis_holds_one_layers_tap_copies_at_a_time():
    """Conv taps are copied once per layer for the compiled kernels and dropped when the layer's values are in."""
    from plasticity_core.metrics.diagnose import clear_weight_cache

    held = []
    real = W.WeightView.release

    def spy(view):
        held.append(sum(v._taps is not None for v in view.spectra.views))
        real(view)

    model = timm.create_model("test_resnet", num_classes=5)
    clear_weight_cache()
    try:
        W.WeightView.release = spy
        d = diagnose(model, [], metrics=["spectral_norm", "stable_rank", "dfi", "fro_norm"])
    finally:
        W.WeightView.release = real
    assert held and (max(held) == 1 if weight_kernels.ready() else max(held) >= 1)
    assert d.wide()["spectral_norm"].notna().all()


@pytest.mark.parametrize("magnitude", [1e-30, 1e-15, 1e15, 1e25])
def test_sigma1_of_tiny_and_huge_weights_is_exact(magnitude, monkeypatch):
    """Lanczos on X^T X squares the entries: a weight of 1e-30 would underflow float32 there, one of 1e25 overflow.
    Every path then iterates on X / 2^k (``weights.tap_units``) and gives sigma_1 to 1e-6 within its step limit
    (before: the compiled path read 1e-15 weights 38 % low, and the BLAS path's norms overflowed at 1e25 and failed
    the diagnosis)."""
    w = torch.randn(300, 120, generator=torch.Generator().manual_seed(12), dtype=torch.float64) * magnitude
    exact = float(torch.linalg.matrix_norm(w, ord=2))
    x = W.tall_taps(w.float())
    for path in ("compiled", "blas", "device"):  # the device path (batched GKL in torch) run here on the CPU
        if path == "compiled" and not weight_kernels.ready():
            continue
        monkeypatch.setattr(weight_kernels, "ENABLED", path == "compiled")
        top, slow = W.top_singular(x, batched=path == "device")
        assert float(top[0]) == pytest.approx(exact, rel=1e-6) and not slow.any(), path
