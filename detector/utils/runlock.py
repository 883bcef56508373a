"""One process at a time in a run directory: an OS file lock held for the whole run.

Two trainings (or a training and a ``--resume``) writing one run directory would interleave
checkpoints, state and metrics. `run_lock` holds an exclusive ``flock`` on
``RUN_DIR/.lock`` (the holder's pid written in it, for the message the next one gets); the
kernel releases it when the process ends however it ends, SIGKILL included, so a stale
lock file is harmless and is never deleted (deleting it would let two processes lock two
different files of one name). `claim_run_dir` picks and locks a fresh directory without a
race between two new runs, and `clean_temporaries` removes what the atomic writer
(`detector.utils.atomic`) leaves behind when a run is killed mid-write (on ``--resume``, and when a
new run claims a folder holding nothing else). POSIX only (``fcntl``); on
NFS, ``flock`` needs Linux >= 2.6.12.
"""

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator

LOCK_NAME = ".lock"
# detector.utils.atomic's temporary files: ".{name}.{secrets.token_hex(8)}{suffix}", suffix e.g.
# "", ".keras" or ".weights.h5".
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{16}(\.[\w.]+)?")


def _holder(fd: int) -> str:
    """The pid written in the lock file, or "unknown" (the holder may not have written
    it yet)."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"


def _try_lock(run_dir: str, name: str = "run directory") -> int | None:
    """An open descriptor of ``run_dir/.lock`` holding its exclusive lock, with this
    process's pid written in it; None if another process holds it."""
    try:
        fd = os.open(os.path.join(run_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:  # read-only, not ours, not a folder...
        raise ValueError(f"{name} {run_dir}: cannot lock it ({error.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


TRAINING_HOLDER = "(another training or --resume); wait for it or pass another --run-dir"


def _busy(run_dir: str, name: str, holder: str) -> ValueError:
    """The error for a folder another process holds, naming its pid."""
    fd = os.open(os.path.join(run_dir, LOCK_NAME), os.O_RDONLY)
    try:
        pid = _holder(fd)
    finally:
        os.close(fd)
    return ValueError(f"{name} {run_dir} is in use by process {pid} {holder}")


def _release(fd: int) -> None:
    """Clears the pid and releases the lock (closing the descriptor releases it)."""
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)


@contextlib.contextmanager
def run_lock(
    run_dir: str, name: str = "run directory", holder: str = TRAINING_HOLDER
) -> Iterator[str]:
    """Holds the run directory's lock for the block (the folder is created if needed).

    Args:
        run_dir: str. The run directory (or any output folder one process writes).
        name: str. What the messages call it (e.g. "--out"). Defaults to "run directory".
        holder: str. Who the other process is and what to do, for the busy message.
            Defaults to a training's.

    Yields:
        str. ``run_dir``.

    Raises:
        ValueError: the folder cannot be made or locked, or another process holds the
            lock; the message names it (and the holder's pid).
    """
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{name} {run_dir}: cannot create it ({error.strerror})") from None
    fd = _try_lock(run_dir, name)
    if fd is None:
        raise _busy(run_dir, name, holder)
    try:
        yield run_dir
    finally:
        _release(fd)


def _is_fresh(run_dir: str) -> bool:
    """Whether a run directory holds nothing but (maybe) its lock file and temporary
    files of the atomic writer (a run killed while writing its first file)."""
    return not [n for n in os.listdir(run_dir) if n != LOCK_NAME and not _is_temporary(run_dir, n)]


def _is_temporary(folder: str, name: str) -> bool:
    path = os.path.join(folder, name)
    return bool(_TEMPORARY.fullmatch(name)) and os.path.isfile(path) and not os.path.islink(path)


def _claim(candidate: str) -> int | None:
    """The lock of `candidate` if it is (or is made) a fresh folder and no other process
    holds it, else None."""
    if os.path.exists(candidate) and not (os.path.isdir(candidate) and _is_fresh(candidate)):
        return None
    try:
        os.makedirs(candidate, exist_ok=True)
    except FileExistsError:  # a file was made there meanwhile
        return None
    fd = _try_lock(candidate)
    if fd is not None and not _is_fresh(candidate):  # filled before we locked it
        _release(fd)
        return None
    if fd is not None:
        clean_temporaries(candidate)
    return fd


def claim_run_dir(path: str, stack: contextlib.ExitStack) -> str:
    """A fresh run directory, locked until `stack` closes: `path` if it is absent or
    empty, else the first such ``path-2``, ``path-3``… (`path` naming a file is a
    ValueError: a typo, not a run to number after).

    Race-free between processes: a candidate is ours only once its lock is held and it
    is still empty; a candidate locked by another process is skipped.
    """
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(
            f"run directory {path}: exists and is not a folder; pass another --run-dir"
        )
    candidate, n = path, 1
    while (fd := _claim(candidate)) is None:
        n += 1
        candidate = f"{path}-{n}"
    stack.callback(_release, fd)
    return candidate


def clean_temporaries(run_dir: str) -> int:
    """Removes the atomic writer's temporary files (`detector.utils.atomic`) from ``run_dir`` and
    its subfolders (state, val, ...), left there by a killed run; returns how many. Call
    it holding the lock (`run_lock`): a live run's temporaries are its files being
    written."""
    removed = 0
    for folder, _, names in os.walk(run_dir):
        for name in names:
            if _is_temporary(folder, name):
                os.remove(os.path.join(folder, name))
                removed += 1
    return removed
