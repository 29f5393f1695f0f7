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
