"""Atomic file writes: a crash or Ctrl-C leaves the old file or the new one, never half.

Every writer goes through a temporary file beside the target (same folder, so the final
rename is atomic), flushed to disk before it replaces the target. The temporary file is
created with mode 0o666 and the kernel applies the process umask, so the result gets the
permissions any ``open(path, "w")`` would give; no process state is changed.

A write the system refuses (disk full, read-only, permission) raises the ``OSError`` with
``filename`` set to the target (not the temporary name), after the temporary file is gone:
the target keeps its previous content.
"""

import contextlib
import errno
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


def _commit(tmp: str, path: str) -> None:
    """Flushes ``tmp`` to disk and renames it onto ``path`` (the step where a full disk
    shows at the latest: file systems may delay allocation until the flush)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove(tmp: str) -> None:
    """Removes a temporary file; a refusal (e.g. the file system turned read-only) is
    left to `detector.utils.runlock.clean_temporaries`, not raised over the write's own error."""
    with contextlib.suppress(OSError):
        os.remove(tmp)


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
    try:
        tmp = _create_temporary(path, suffix)
    except OSError as error:
        raise _naming(error, path) from None
    try:
        yield tmp
        _commit(tmp, path)
    except OSError as error:
        raise _naming(error, path, tmp) from None
    finally:
        _remove(tmp)


def _naming(error: OSError, path: str, tmp: str | None = None) -> OSError:
    """`error` with ``filename`` the target `path` when it named none, the temporary file
    or its folder (the user knows the target, not our temporary names). An error without
    an errno (a library's message) is left as it is: its text is all it has."""
    folder, name = os.path.split(os.path.abspath(path))
    named = error.filename in (None, tmp, folder) or error.filename == os.path.dirname(path)
    named = named or _is_temporary_of(error.filename, folder, name)
    if named and error.errno is not None:
        error.filename = path
    return error


def _is_temporary_of(filename, folder: str, name: str) -> bool:
    """Whether `filename` is a temporary file `_create_temporary` names for `name`."""
    if not isinstance(filename, str):
        return False
    there, base = os.path.split(os.path.abspath(filename))
    return there == folder and base.startswith(f".{name}.")


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


_ADVICE = {
    errno.ENOSPC: "free some space",
    errno.EDQUOT: "free some space (disk quota)",
    errno.EROFS: "make the file system writable",
    errno.EACCES: "give this user write permission",
    errno.EPERM: "give this user write permission",
    errno.EISDIR: "give a file path, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a part of the path is a file, not a folder",
}


def describe_os_error(error: OSError, then: str = "") -> str:
    """One line for a write the system refused: the system's reason, the file, and what
    to do about it (`then` appended to the advice, e.g. ", then resume")."""
    what = error.strerror or str(error).splitlines()[0][:200]
    where = f" writing {error.filename}" if error.filename else ""
    advice = _ADVICE.get(error.errno, "fix the cause")
    return f"{what}{where} ({advice}{then})"


def check_writable(name: str, path: PathLike) -> None:
    """ValueError naming `name` and `path` unless a file can be written there: refuses a
    folder, a path through a file, a read-only or forbidden folder, by creating (then
    removing) a temporary file beside `path`. Missing folders are created."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{name}: {path} is a folder; give a file path")
    try:
        tmp = _create_temporary(path, "")
    except OSError as error:
        if error.errno == errno.EEXIST:  # os.makedirs through a file
            error = OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), error.filename)
        error = _naming(error, path)
        raise ValueError(f"{name}: {describe_os_error(error)}") from None
    _remove(tmp)
