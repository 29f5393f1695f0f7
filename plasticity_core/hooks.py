"""Hook registration that cannot leak.

Streamlit re-executes scripts and users re-run notebook cells: a hook left behind doubles every later
measurement. Every hook in this package is registered through ``HookSet`` inside a ``with`` block, so the
handles are removed on exit, also when the forward raises.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


class HookSet:
    """Collects hook handles; removes them all when the ``with`` block ends (exception or not)."""

    def __init__(self) -> None:
        self.handles: list[RemovableHandle] = []

    def forward(self, module: nn.Module, fn: Callable) -> None:
        self.handles.append(module.register_forward_hook(fn))

    def forward_pre(self, module: nn.Module, fn: Callable) -> None:
        self.handles.append(module.register_forward_pre_hook(fn))

    def tensor(self, t: torch.Tensor, fn: Callable) -> None:
        self.handles.append(t.register_hook(fn))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def __enter__(self) -> "HookSet":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def hook_count(model: nn.Module) -> int:
    """Number of forward / pre-forward / backward hooks registered on the model's modules (for leak tests)."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )


@contextlib.contextmanager
def kept_modes(model: nn.Module) -> Iterator[None]:
    """Inside the block the caller may switch ``model`` to eval; on exit every submodule gets its own train/eval flag
    back (a frozen BatchNorm left in eval inside a model in train mode stays in eval), exception or not."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            if m.training != mode:  # nn.Module.__setattr__ is slow: touch only what changed
                m.training = mode
