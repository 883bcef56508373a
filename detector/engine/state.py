"""The resume state of a run: Keras' ``BackupAndRestore``, made kill-safe, plus our extras.

``keras.callbacks.BackupAndRestore`` (with ``double_checkpoint=True``) is the mechanism:
at every epoch end it saves the model weights *with the optimiser state* (Adam moments or
SGD momentum, the iteration count the lr schedule reads, and the optimiser's EMA of the
weights) and the epoch counter; at ``fit`` start it restores them and ``fit`` continues at
the next epoch. It is also what tf.distribute's multi-worker fault tolerance relies on.
What it does not do, `RunState` adds:

- every file is written to a temporary name and renamed, and the metadata records the
  weights file's size and CRC32, so a ``kill -9`` in the middle of a save leaves either
  the new pair or, detected on load, the previous pair (`resolve`);
- the metadata carries what Keras does not know: the best AP so far, the wall-clock
  seconds already spent (for ``--max-minutes`` across resumes);
- the state is kept after training ends, so a finished run can be extended.

The data order is a function of (seed, epoch) (``make_train_dataset(start_step=...)``)
and ``metrics.csv`` is cut back to the restored epoch (`truncate_csv`), so a resumed run
logs every epoch exactly once.
"""

import csv
import json
import os
import shutil
import zlib

import keras

from detector.utils.atomic import atomic_path, atomic_write_text
from detector.utils.safe_yaml import short

STATE_DIR = "state"
WEIGHTS = "latest.weights.h5"
METADATA = "training_metadata.json"


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _pair_is_valid(weights: str, metadata: str) -> dict | None:
    """The metadata dict if both files exist and the weights match it, else None."""
    try:
        with open(metadata, encoding="utf-8") as f:
            meta = json.load(f)
        ok = (
            os.path.getsize(weights) == meta["weights_size"]
            and _crc32(weights) == meta["weights_crc32"]
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
    meta = _pair_is_valid(weights, metadata)
    if meta is not None:
        return weights, meta
    previous = _pair_is_valid(weights + ".bkp", metadata + ".bkp")
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
        _repair(run_dir, pair)
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


def _repair(run_dir: str, pair: tuple[str, dict]) -> None:
    """Makes the previous pair the latest again when `pair` (from `newest_pair`) is it."""
    if pair[0].endswith(".bkp"):
        folder = os.path.join(run_dir, STATE_DIR)
        for name in (WEIGHTS, METADATA):
            with atomic_path(os.path.join(folder, name)) as tmp:
                shutil.copyfile(os.path.join(folder, name + ".bkp"), tmp)


class RunState(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` into ``RUN_DIR/state`` with atomic writes and extras.

    Args:
        run_dir: str. The run directory (the state is restored from its ``state``).
        extras: callable() -> dict. JSON-able values saved with every state (e.g. the best
            AP so far); read them back with `resolve`.
        write_dir: str or None. Where the state is saved, when not `run_dir`: the
            non-chief workers of a multi-worker run restore the chief's state but save
            theirs (the same weights) to a temporary directory. Defaults to `run_dir`.
        restore: bool. Restore the newest state at train begin (a resumed run). Defaults
            to True.
    """

    def __init__(
        self, run_dir: str, extras=None, write_dir: str | None = None, restore: bool = True
    ):
        write_dir = write_dir or run_dir
        super().__init__(
            os.path.join(write_dir, STATE_DIR),
            save_freq="epoch",
            double_checkpoint=True,
            delete_checkpoint=False,
        )
        self.run_dir = run_dir
        self.owner = os.path.abspath(write_dir) == os.path.abspath(run_dir)
        self.extras = extras or (lambda: {})
        self.restore = restore

    def on_train_begin(self, logs=None):
        if not self.restore:  # a new run: whatever lies in a worker's run_dir is not its own
            return
        pair = newest_pair(self.run_dir)  # one CRC pass over the weights
        if pair is None:
            return
        if self.owner:  # the other workers only read the chief's directory
            _repair(self.run_dir, pair)
        weights, meta = pair
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        try:
            self.model.load_weights(weights)
        except ValueError as error:  # Keras: "N objects could not be loaded", shapes...
            raise ValueError(
                f"{weights} does not fit the model built from the run's config (the "
                f"architecture or the classes changed; Keras: {short(str(error))}): resume "
                "with the config the run was trained with"
            ) from None
        self.model._initial_epoch = meta["epoch"]  # what BackupAndRestore sets: fit resumes

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        weights = self._weights_path
        metadata = self._training_metadata_path
        if _pair_is_valid(weights, metadata) is not None:  # keep the previous complete pair
            for src, dst in (
                (weights, self._prev_weights_path),
                (metadata, self._prev_training_metadata_path),
            ):
                with atomic_path(dst) as tmp:
                    shutil.copyfile(src, tmp)
        with atomic_path(weights, suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp, overwrite=True)
            size, crc = os.path.getsize(tmp), _crc32(tmp)
        meta = {
            "epoch": self._current_epoch,
            "batch": self._last_batch_seen,
            "weights_size": size,
            "weights_crc32": crc,
            **self.extras(),
        }
        atomic_write_text(metadata, json.dumps(meta, indent=1))


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
