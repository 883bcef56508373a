"""Atomic file writes: a crash or Ctrl-C leaves the old file or the new one, never half.

Every writer goes through a temporary file beside the target (same folder, so the final
rename is atomic), flushed to disk before it replaces the target. The temporary file is
created with mode 0o666 and the kernel applies the process umask, so the result gets the
permissions any ``open(path, "w")`` would give; no process state is changed.
"""

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

PathLike = str | os.PathLike[str]


def _create_temporary(path: str, suffix: str) -> str:
    """Creates an empty, new file beside ``path``; returns its path."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(8)}{suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return tmp


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path beside ``path``; renames it onto ``path`` on success.

    Args:
        path: str or PathLike. The file to write; its folder is created if needed.
        suffix: str. The temporary file's ending (Keras wants ``.keras``). Defaults to "".

    The temporary file exists (empty) when the block starts; the block may overwrite it.
    On success it is fsynced and renamed onto ``path``; on error it is removed and
    ``path`` is untouched.
    """
    path = os.fspath(path)
    tmp = _create_temporary(path, suffix)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` atomically, UTF-8 encoded."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any, indent: int | None = 2) -> None:
    """Writes ``obj`` as JSON to ``path`` atomically (``json.dumps(obj, indent=indent)``)."""
    atomic_write_text(path, json.dumps(obj, indent=indent))


def atomic_save(path: PathLike, save: Callable[[str], None], suffix: str = "") -> None:
    """Calls ``save(tmp_path)`` and renames the result onto ``path`` atomically."""
    with atomic_path(path, suffix) as tmp:
        save(tmp)
