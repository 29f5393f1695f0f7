"""Atomic file writes: a reader (or a later run) sees the old file or the new one, never half of one, and a write
that fails (disk full, read-only, the folder deleted) leaves no temp file behind and names the path it was writing.
A leaf module: it imports nothing from plasticity_core."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import IO, Callable


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], object], mode: int | None = None) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, flush it to disk, then rename it over ``path``.

    On failure the temp file is removed and an ``OSError`` carrying ``path`` as its file name is raised (so the
    message names the file the user asked for, not a temp name). ``mode``: permission bits of the new file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno is not None and e.filename != os.fspath(path):
            raise OSError(e.errno, e.strerror or os.strerror(e.errno), os.fspath(path)) from None
        raise


def write_text_atomic(path: str | os.PathLike, text: str, mode: int | None = None) -> None:
    """``write_atomic`` of UTF-8 text."""
    write_atomic(path, lambda f: f.write(text.encode("utf-8")), mode)
