"""Atomic file writes: a crash or Ctrl-C leaves the old file or the new one, never half."""

import contextlib
import os
import tempfile
from collections.abc import Callable

# mkstemp makes 0600 files; a renamed checkpoint should get the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ""):
    """Yields a temporary path beside ``path``; renames it onto ``path`` on success.

    ``suffix`` is the temporary file's ending (Keras wants ``.keras``). On error the
    temporary file is removed and ``path`` is untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=suffix)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def atomic_save(path: str, save: Callable[[str], None], suffix: str = "") -> None:
    """Calls ``save(tmp_path)`` and renames the result onto ``path`` atomically."""
    with atomic_path(path, suffix) as tmp:
        save(tmp)
