"""TensorFlow's native start-up lines, held back from the first screen and said in words.

Importing TensorFlow on a machine without a GPU writes half a dozen lines from C++
straight to file descriptor 2 ("oneDNN custom operations are on", "Could not find cuda
drivers", "E0000 ... failed call to cuInit: ... UNKNOWN ERROR (303)"): Python's logging
and ``TF_CPP_MIN_LOG_LEVEL`` do not reach the ones written before absl is initialised,
and an error line on every run scares a new user. `hold_native_stderr` points fd 2 at a
temporary file while TensorFlow starts, then restores it: lines it knows (`KNOWN`) are
kept in `held()` and summed up by `notes()` for the device report line; any other line
is written to stderr as it came, so nothing unexpected is hidden. ``DETECTOR_VERBOSE=1``
(or a command's ``--verbose``) shows the held lines verbatim.
"""

import contextlib
import os
import sys
import tempfile

VERBOSE_ENV = "DETECTOR_VERBOSE"

# A fragment of a benign start-up line -> what it means (None: nothing worth saying).
KNOWN = {
    "All log messages before absl::InitializeLog() is called": None,
    "oneDNN custom operations are on": "oneDNN on",
    "Could not find cuda drivers": "no CUDA driver",
    "failed call to cuInit": "no CUDA device",
    "This TensorFlow binary is optimized to use available CPU instructions": None,
    "To enable the following instructions": None,
    "rebuild TensorFlow with the appropriate compiler flags": None,
    "Unable to register cuDNN factory": None,
    "Unable to register cuFFT factory": None,
    "Unable to register cuBLAS factory": None,
    "computation placer already registered": None,
    "TF-TRT Warning: Could not find TensorRT": None,
}

_held: list[str] = []


def verbose() -> bool:
    """Whether the user asked to see TensorFlow's native lines (``DETECTOR_VERBOSE``)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def _is_known(line: str) -> bool:
    return any(fragment in line for fragment in KNOWN)


@contextlib.contextmanager
def hold_native_stderr():
    """Runs the block with fd 2 pointed at a temporary file; afterwards the known start-up
    lines are kept (`held`) and every other line is written to stderr. Does nothing when
    `verbose()`, or when fd 2 cannot be duplicated (no stderr)."""
    if verbose():
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            lines = [line for line in text.splitlines() if line.strip()]
            _held.extend(line for line in lines if _is_known(line))
            other = [line for line in lines if not _is_known(line)]
            if other:
                sys.stderr.write("\n".join(other) + "\n")


def held() -> list[str]:
    """The start-up lines held back so far, verbatim."""
    return list(_held)


def notes(lines: list[str] | None = None) -> list[str]:
    """What the held lines (or `lines`) meant, each said once, e.g. ["oneDNN on", "no CUDA
    driver"]."""
    said: list[str] = []
    for line in held() if lines is None else lines:
        for fragment, meaning in KNOWN.items():
            if fragment in line and meaning and meaning not in said:
                said.append(meaning)
    return said
