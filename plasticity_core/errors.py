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

import errno
import os
import re
import stat
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
        "pass data= (a DataLoader or Dataset)": "pass --data SPEC (e.g. --data folder:PATH)",
    },
    "dashboard": {
        "pretrained=False": "untick 'Pretrained weights' in Setup",
        "image_size=": "image size ",
        "device='cpu'": "device cpu",
        "device=": "device ",
        "arch=": "Architecture ",
        "pass data= (a DataLoader or Dataset)": "load a dataset in Setup",
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
    if isinstance(exc, OSError) and exc.errno in _ERRNO_ADVICE and (exc.filename or exc.errno in (errno.ENOSPC, errno.EDQUOT)):
        where = f"{short_path(exc.filename)}: " if exc.filename else ""
        return f"{where}{exc.strerror or os.strerror(exc.errno)}; {_ERRNO_ADVICE[exc.errno]}"
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


_ERRNO_ADVICE = {  # an OSError a user's environment causes -> what to do (by errno, whatever the exception class)
    errno.ENOSPC: "the disk is full: free space or choose another folder (nothing half-written was kept)",
    errno.EDQUOT: "the disk quota is used up: free space or choose another folder",
    errno.EROFS: "that file system is read-only: choose a folder you can write",
    errno.EEXIST: "it already exists: choose another name or remove it",
    errno.ENAMETOOLONG: "a file or folder name is too long (most file systems allow 255 bytes per name): use a shorter one",
    errno.ELOOP: "the path is a symlink loop: point it at a real file",
}


def short_path(path: object, limit: int = 160) -> str:
    """A path for a message, cut in the middle when longer than ``limit`` characters (a 5,000-character name is not
    echoed whole)."""
    text = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 3:]} ({len(text)} chars)"


def file_problem(path: str | os.PathLike, what: str = "file") -> str | None:
    """Why ``path`` cannot be read as a regular ``what`` file (missing, a folder, a FIFO/socket/device, a symlink loop,
    a name too long, not permitted), as a sentence naming it; ``None`` when it is a readable regular file."""
    p = short_path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"{what} {p} does not exist"
    except NotADirectoryError:
        return f"{what} {p} does not exist (a part of the path is a file, not a folder)"
    except PermissionError:
        return f"{what} {p}: permission denied on a folder of the path"
    except OSError as e:
        if e.errno in _ERRNO_ADVICE:
            return f"{what} {p}: {e.strerror}; {_ERRNO_ADVICE[e.errno]}"
        return f"{what} {p} cannot be read: {e.strerror}"
    if stat.S_ISDIR(mode):
        return f"{what} {p} is a folder, not a file: give the file inside it"
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        return f"{what} {p} is {kind}, not a regular file"
    if not os.access(path, os.R_OK):
        return f"{what} {p}: permission denied; make it readable"
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
