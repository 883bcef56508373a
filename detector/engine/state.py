"""The resume state of a run on disk: finding, checking and repairing it.

`RunState` (`detector.engine.callbacks.state`) saves the state at every epoch end, each
file written to a temporary name and renamed, the metadata recording the weights file's
size and CRC32; so a ``kill -9`` in the middle of a save leaves either the new pair or,
detected on load, the previous pair. `resolve` finds the newest complete pair (making the
previous one the latest again when needed), `resume_point` refuses a run whose state is
damaged, `truncate_csv` cuts ``metrics.csv`` back to the restored epoch so that a resumed
run logs every epoch exactly once.
"""

import csv
import json
import os
import shutil
import zlib

from detector.utils.atomic import atomic_path

STATE_DIR = "state"
WEIGHTS = "latest.weights.h5"
METADATA = "training_metadata.json"


def crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def valid_pair(weights: str, metadata: str) -> dict | None:
    """The metadata dict if both files exist and the weights match it, else None."""
    try:
        with open(metadata, encoding="utf-8") as f:
            meta = json.load(f)
        ok = (
            os.path.getsize(weights) == meta["weights_size"]
            and crc32(weights) == meta["weights_crc32"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if ok else None


def newest_pair(run_dir: str) -> tuple[str, dict] | None:
    """(weights path, metadata) of the newest complete state of `run_dir`, or None.

    The latest pair when it is complete, else the previous one (``.bkp``) when that is;
    reads only.
    """
    folder = os.path.join(run_dir, STATE_DIR)
    weights, metadata = os.path.join(folder, WEIGHTS), os.path.join(folder, METADATA)
    meta = valid_pair(weights, metadata)
    if meta is not None:
        return weights, meta
    previous = valid_pair(weights + ".bkp", metadata + ".bkp")
    return (weights + ".bkp", previous) if previous is not None else None


def resolve(run_dir: str, repair: bool = True) -> dict | None:
    """The metadata of the newest complete state of `run_dir` (None when there is none).

    When the latest pair is incomplete (a kill between its two renames) and the previous
    pair is complete, the previous one is made the latest again (unless not `repair`:
    the other workers of a multi-worker run only read the chief's directory).
    """
    pair = newest_pair(run_dir)
    if pair is None:
        return None
    if repair:
        restore_previous(run_dir, pair)
    return pair[1]


def _logged_epochs(path: str) -> int:
    """How many complete epoch rows a metrics.csv holds (0 when it is absent or unreadable)."""
    try:
        with open(path, newline="") as f:
            lines = f.read().splitlines(keepends=True)
    except (OSError, UnicodeDecodeError):
        return 0
    return max(0, len([line for line in lines if line.endswith("\n")]) - 1)


def resume_point(run_dir: str, repair: bool = True) -> dict | None:
    """The metadata `resolve` finds, or None when the run saved nothing yet (stopped
    during its first epoch: it starts again from epoch 0 in place, losing nothing). The
    epoch's metrics.csv row is written just before its state, so a run whose first state
    write was refused (disk full) logs one epoch and has no state: that is a start again
    too (`prepare_run` cuts the row), as the run's own message said.

    Raises:
        ValueError: there is no complete state but the run got further (state files
            damaged or missing while metrics.csv logs epochs): starting again from epoch 0
            would throw that away, so nothing is changed; the message names the files and
            how to train the configuration again in a new run directory.
    """
    meta = resolve(run_dir, repair)
    if meta is not None:
        return meta
    folder = os.path.join(run_dir, STATE_DIR)
    names = [WEIGHTS, METADATA, WEIGHTS + ".bkp", METADATA + ".bkp"]
    present = [name for name in names if os.path.exists(os.path.join(folder, name))]
    logged = _logged_epochs(os.path.join(run_dir, "metrics.csv"))
    if not present and logged <= 1:  # the first epoch's state write failed: start again
        return None
    found = (
        f"{', '.join(present)} in {folder} are damaged (their size or CRC32 does not match "
        "the metadata, or the metadata is unreadable)"
        if present
        else f"{folder} holds no saved state while metrics.csv logs {logged} epochs"
    )
    again = os.path.join(run_dir, "config.yaml")
    raise ValueError(
        f"--resume: {run_dir} has no loadable state: {found}; nothing was changed. To "
        f"train this configuration again from epoch 0: python train.py --config {again} "
        "(a new run directory)"
    )


def restore_previous(run_dir: str, pair: tuple[str, dict]) -> None:
    """Makes the previous pair the latest again when `pair` (from `newest_pair`) is it."""
    if pair[0].endswith(".bkp"):
        folder = os.path.join(run_dir, STATE_DIR)
        for name in (WEIGHTS, METADATA):
            with atomic_path(os.path.join(folder, name)) as tmp:
                shutil.copyfile(os.path.join(folder, name + ".bkp"), tmp)


def truncate_csv(path: str, epochs_done: int) -> None:
    """Keeps the header and the complete rows of epochs 1..epochs_done (atomically)."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]  # a row cut by a kill
    rows = list(csv.reader(lines))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    kept = [r for r in body if r and len(r) == len(header) and int(r[0]) <= epochs_done]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(kept)
