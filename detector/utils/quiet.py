"""Silence pycocotools' progress prints in the calling thread only.

pycocotools reports with ``print``. ``contextlib.redirect_stdout`` swaps ``sys.stdout`` for
the whole process, so an evaluation in a background thread (``eval.async``) would swallow
whatever the training thread prints meanwhile (the progress bar, epoch lines).
`quiet_stdout` instead installs, while any thread uses it, a stream that drops the writes
of the threads inside it and passes every other thread's writes through.
"""

import contextlib
import sys
import threading
from collections.abc import Iterator

_state = threading.local()  # .depth: nesting of quiet_stdout in this thread
_lock = threading.Lock()
_installed: list = []  # [filter, users]: the one installed filter and its users


class _ThreadFilter:
    """A text stream that forwards to `stream` except from threads inside `quiet_stdout`."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        if getattr(_state, "depth", 0):
            return len(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Drop what the calling thread prints to ``sys.stdout`` inside the block."""
    with _lock:
        if not _installed:
            _installed[:] = [_ThreadFilter(sys.stdout), 0]
            sys.stdout = _installed[0]
        _installed[1] += 1
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1
        with _lock:
            _installed[1] -= 1
            if _installed[1] == 0:
                if sys.stdout is _installed[0]:  # unless someone replaced it since
                    sys.stdout = _installed[0].stream
                _installed.clear()
