"""One sentence for every expected failure: what ``plasticity`` prints and what the dashboard shows.

The library raises ``UserError`` subclasses (``BackboneError``, ``DatasetError``, ``ConfigError``, ...) whose
message names the input and what to do. A few expected failures come from elsewhere (a missing file, a
path that cannot be written, CUDA absent, a ViT fed the wrong image size); ``user_message`` words those the
same way. Anything else is a bug: ``user_message`` returns ``None`` and the caller shows the traceback.

Messages are written for the Python API; ``entry="cli"`` or ``"dashboard"`` rewrites the options they name
into the spelling of that entry point (``pretrained=False`` is ``--random-init`` on the command line).
A leaf module: it imports nothing from plasticity_core.
"""
from __future__ import annotations

import re
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent

ENTRY_SPELLINGS: dict[str, dict[str, str]] = {
    # Python spelling in a message -> how the same option is spelled at each other entry point
    "cli": {
        "pretrained=False": "--random-init",
        "num_classes=": "--num-classes ",
        "image_size=": "--image-size ",
        "device='cpu'": "--device cpu",
        "device=": "--device ",
        "arch=": "--arch ",
        "val_fraction must": "--val-fraction must",
        "image_size must": "--image-size must",
        "max_batches must": "--batches must",
    },
    "dashboard": {
        "pretrained=False": "untick 'Pretrained weights' in Setup",
        "image_size=": "image size ",
        "device='cpu'": "device cpu",
        "device=": "device ",
        "arch=": "Architecture ",
    },
}


class UserError(ValueError):
    """An input the tool cannot honour; the message names the input and what to do instead."""


class UnknownNameError(UserError, KeyError):
    """A registry lookup of a name that is not registered (a ``KeyError`` too, for ``except KeyError``)."""

    def __str__(self) -> str:  # KeyError would quote the sentence
        return str(self.args[0]) if self.args else ""


def for_entry(message: str, entry: str = "python") -> str:
    """``message`` with the Python API's option names spelled as ``entry`` ("python", "cli", "dashboard") spells them."""
    for python, other in ENTRY_SPELLINGS.get(entry, {}).items():
        message = message.replace(python, other)
    return message


def user_message(exc: BaseException, entry: str = "python") -> str | None:
    """The one-line message for an expected failure, or ``None`` when ``exc`` is a bug (show its traceback)."""
    text = _message(exc)
    return None if text is None else for_entry(" ".join(text.split()), entry)


def _message(exc: BaseException) -> str | None:
    if isinstance(exc, UserError) or (type(exc) in (ValueError, KeyError) and _raised_by_us(exc)):
        return str(exc.args[0]) if exc.args else type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        if type(exc) is not FileNotFoundError and exc.args and isinstance(exc.args[0], str):
            return exc.args[0]  # a library subclass (AssetMissingError) carries its own sentence
        if exc.filename:
            return f"{exc.filename}: no such file or folder; check the path"
        return exc.args[0] if exc.args and isinstance(exc.args[0], str) else None
    if isinstance(exc, (PermissionError, IsADirectoryError, NotADirectoryError)) and exc.filename:
        return f"{exc.filename}: {exc.strerror or type(exc).__name__}; choose a path you can write"
    text = str(exc)
    if isinstance(exc, (AssertionError, RuntimeError)):
        m = re.search(r"Input (height|width) \((\d+)\) doesn't match model \((\d+)\)", text)
        if m:
            return (f"this model was built for {m.group(3)} px images but got {m.group(2)} px: use image_size={m.group(3)} "
                    f"(or a model that accepts any size)")
        if "CUDA" in text and ("not compiled" in text or "no NVIDIA driver" in text or "not available" in text):
            return "CUDA is not available on this machine: use device='cpu'"
    return None


def _raised_by_us(exc: BaseException) -> bool:
    """Whether a plain ValueError/KeyError was raised by plasticity_core's own code with a sentence (not a bug deep in
    a dependency, not a bare dict lookup)."""
    tb = exc.__traceback__
    if tb is None or not exc.args or not isinstance(exc.args[0], str) or " " not in exc.args[0]:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)
