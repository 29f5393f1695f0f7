"""Shared fixtures: tiny real models and small real data, so the suite stays fast on 2 CPU cores."""
from __future__ import annotations

import os

import pytest
import torch

if "OMP_NUM_THREADS" not in os.environ:  # CI: 2 cores; a developer sharing the machine sets OMP_NUM_THREADS=1
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_resnet():
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=4).eval()


@pytest.fixture
def tiny_vit():
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_vit", num_classes=4).eval()


@pytest.fixture
def synthetic():
    from plasticity_core.data import load_dataset

    return load_dataset("synthetic:classes=4,n=128,size=32", image_size=32)


@pytest.fixture(autouse=True)
def _dashboard_runs_root(request, tmp_path, monkeypatch):
    """Dashboard tests write run folders and workspaces into their own temporary runs root, never ./runs."""
    if request.module.__name__.rpartition(".")[2].startswith(("test_dashboard_", "test_browser")):
        monkeypatch.setenv("PLASTICITY_RUNS", str(tmp_path / "runs"))


@pytest.fixture(scope="module")
def one_thread():
    """The module's workers and its in-process runs on one thread: a resumed or remote run is compared bit for bit
    with one run here, and a float sum's bits depend on how many threads split it."""
    old_env, old_threads = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old_threads)
    if old_env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = old_env
