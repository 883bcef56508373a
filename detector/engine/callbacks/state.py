"""The resume state of a run: Keras' ``BackupAndRestore``, made kill-safe, plus our extras.

``keras.callbacks.BackupAndRestore`` (with ``double_checkpoint=True``) is the mechanism:
at every epoch end it saves the model weights *with the optimiser state* (Adam moments or
SGD momentum, the iteration count the lr schedule reads, and the optimiser's EMA of the
weights) and the epoch counter; at ``fit`` start it restores them and ``fit`` continues at
the next epoch. It is also what tf.distribute's multi-worker fault tolerance relies on.
What it does not do, `RunState` adds:

- every file is written to a temporary name and renamed, and the metadata records the
  weights file's size and CRC32, so a ``kill -9`` in the middle of a save leaves either
  the new pair or, detected on load, the previous pair (`detector.engine.state.resolve`);
- the metadata carries what Keras does not know: the best AP so far, the wall-clock
  seconds already spent (for ``--max-minutes`` across resumes);
- the state is kept after training ends, so a finished run can be extended.

The data order is a function of (seed, epoch) (``make_train_dataset(start_step=...)``)
and ``metrics.csv`` is cut back to the restored epoch (``state.truncate_csv``), so a resumed run
logs every epoch exactly once.

The state files' format and their checks are `detector.engine.state`'s.
"""

import json
import os
import shutil

import keras

from detector.engine.state import (
    STATE_DIR,
    crc32,
    newest_pair,
    restore_previous,
    valid_pair,
)
from detector.utils.atomic import atomic_path, atomic_write_text
from detector.utils.safe_yaml import short


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
            restore_previous(self.run_dir, pair)
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
        if valid_pair(weights, metadata) is not None:  # keep the previous complete pair
            for src, dst in (
                (weights, self._prev_weights_path),
                (metadata, self._prev_training_metadata_path),
            ):
                with atomic_path(dst) as tmp:
                    shutil.copyfile(src, tmp)
        with atomic_path(weights, suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp, overwrite=True)
            size, crc = os.path.getsize(tmp), crc32(tmp)
        meta = {
            "epoch": self._current_epoch,
            "batch": self._last_batch_seen,
            "weights_size": size,
            "weights_crc32": crc,
            **self.extras(),
        }
        atomic_write_text(metadata, json.dumps(meta, indent=1))
