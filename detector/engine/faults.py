"""How a started run that stops from outside says so: Ctrl-C, unreadable data, a refused
write, a resume that cannot load what it would continue.

Once a run has its directory (``training.prepare_run``), `resumable` turns

- Ctrl-C into `Interrupted` (a ``KeyboardInterrupt``) whose text says where the state is
  and how to continue;
- a ``tf.errors.OpError`` (e.g. a damaged TFRecord shard: ``DataLossError``, the shard
  then found and named by `detector.data.shard_checks.damaged_shard`; a loader failure
  inside ``tf.numpy_function``) into `RunFailed` naming the error;
- an ``OSError`` (disk full, read-only file system, permission) into `RunFailed` naming
  the file and the system's reason;

each with the resume command. The atomic writer (`detector.utils.atomic`) has already put the
target's name in the ``OSError`` and removed its temporary file, and the state on disk is
the last complete one (`detector.engine.state`), so the resume continues from there.
`check_architecture` refuses a ``--resume`` whose config or data would build a network
the saved weights do not fit, or another albumentations stage, naming the keys that differ.
"""

import contextlib
import json
import os
import re
import zipfile
from collections.abc import Iterator, Sequence

from detector.config.schema import Config, load_config
from detector.engine.state import STATE_DIR, newest_pair
from detector.utils.atomic import describe_os_error as describe_refusal
from detector.utils.safe_yaml import short

# model.* keys that change the network's variables (input_size does not: fully conv).
ARCHITECTURE_KEYS = ("variant", "width", "num_anchors", "anchors")
_EXCEPTION_LINE = re.compile(r"^\s*(\w+(Error|Exception|Interrupt)): (.+)$")


class RunFailed(ValueError):
    """A started run stopped by a fault outside its config; the message names the fault
    and the resume command. A ValueError: the entry point prints one ``error:`` line."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run whose directory exists; ``str()`` says how to continue."""


def continue_hint(run_dir: str) -> str:
    """Where the run's newest complete state is and the command that continues it."""
    pair = newest_pair(run_dir)
    if pair is None:
        return (
            f"no epoch was completed yet; start it again with: python train.py --resume {run_dir}"
        )
    return (
        f"the state after epoch {pair[1]['epoch']} is in {os.path.join(run_dir, STATE_DIR)}; "
        f"continue with: python train.py --resume {run_dir}"
    )


def describe_op_error(error) -> str:
    """One line for a TensorFlow runtime error: its type and the line that says what went
    wrong (for an exception raised in a ``tf.numpy_function``, that exception's own line,
    not the graph's traceback)."""
    lines = [line.strip() for line in str(getattr(error, "message", error)).splitlines()]
    lines = [line for line in lines if line and not line.startswith(("[[", "File ", "^"))]
    raised = [m for m in map(_EXCEPTION_LINE.match, lines) if m]
    if raised:
        detail = f"{raised[-1].group(1)}: {raised[-1].group(3)}"
    else:
        noise = ("Graph execution error", "Traceback", "Detected at node")
        kept = [line for line in lines if not line.startswith(noise)]
        detail = kept[0] if kept else "no message"
    detail = detail if len(detail) <= 300 else detail[:297] + "..."
    return f"{type(error).__name__}: {detail}"


def describe_os_error(error: OSError) -> str:
    """One line for a refused write: the file and the system's reason (disk full,
    read-only file system, permission) with what to do about it, then resume."""
    return describe_refusal(error, then=", then resume")


@contextlib.contextmanager
def resumable(
    run_dir: str, data: str = "", shards: Sequence[str] = (), counts: Sequence[int] | None = None
) -> Iterator[None]:
    """Re-raises the block's Ctrl-C and outside faults with the way to continue (see the
    module docstring); everything else passes unchanged.

    Args:
        run_dir: str. The run directory (its state is named in the messages).
        data: str. The dataset spec, named when the input fails. Defaults to "".
        shards: Sequence[str]. The training data's TFRecord shards, if packed: the one a
            ``DataLossError`` came from is named. Defaults to ().
        counts: Sequence[int] | None. Records per shard (the packed index). Defaults to None.
    """
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(continue_hint(run_dir)) from None
    except OSError as error:
        raise RunFailed(f"{describe_os_error(error)}; {continue_hint(run_dir)}") from None
    except Exception as error:
        import tensorflow as tf  # imported by then: only a started run gets here

        if not isinstance(error, tf.errors.OpError):
            raise
        spec = f" ({data})" if data else ""
        what = (
            f"the training data{spec} could not be read"
            if _from_input(error)
            else "TensorFlow failed"
        )
        detail = describe_op_error(error)
        if shards and isinstance(error, tf.errors.DataLossError):
            from detector.data.shard_checks import REPACK, damaged_shard

            found = damaged_shard(shards, counts, str(getattr(error, "message", error)))
            detail = f"{found}; {REPACK}" if found else detail
        raise RunFailed(f"{what} ({detail}); {continue_hint(run_dir)}") from None


def _from_input(error) -> bool:
    """Whether a TensorFlow error came from the input pipeline (the iterator or a
    ``tf.numpy_function`` loader) rather than the model's step."""
    text = str(getattr(error, "message", error))
    return any(k in text for k in ("IteratorGetNext", "PyFunc", "TFRecord", "DataLoss")) or (
        type(error).__name__ == "DataLossError"
    )


def trained_classes(run_dir: str) -> list[str] | None:
    """The class names of the run's ``last.keras`` (its head's config, read from the zip
    without loading the model), or None when there is no readable one."""
    try:
        with zipfile.ZipFile(os.path.join(run_dir, "last.keras")) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class_name") == "YoloHead":
                return list(node.get("config", {}).get("class_names", [])) or None
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def check_architecture(cfg: Config, run_dir: str, names: list[str]) -> None:
    """ValueError naming what a ``--resume`` changed that the saved state cannot follow:
    the ``model.*`` keys of `ARCHITECTURE_KEYS` that differ from the run's config.yaml,
    ``train.freeze`` and a switch to or from ``mixed_float16`` (both change the optimiser's
    variables), ``data.albumentations`` (the training stream), and the training classes
    when they differ from the run's. A pipeline given as a file is compared by its path."""
    path = os.path.join(run_dir, "config.yaml")
    saved = load_config(path)
    changed = [
        f"model.{key} {short(getattr(cfg.model, key))} (was {short(getattr(saved.model, key))})"
        for key in ARCHITECTURE_KEYS
        if getattr(cfg.model, key) != getattr(saved.model, key)
    ]
    if cfg.train.freeze != saved.train.freeze:  # another set of optimiser variables
        changed.append(f"train.freeze {short(cfg.train.freeze)} (was {short(saved.train.freeze)})")
    scaled, was_scaled = (c.train.precision == "mixed_float16" for c in (cfg, saved))
    if scaled != was_scaled:  # the loss-scale optimiser's variables come or go
        changed.append(f"train.precision {cfg.train.precision} (was {saved.train.precision})")
    pipeline, was = cfg.data.albumentations, saved.data.albumentations
    if pipeline != was:  # a pipeline-changing key: the resumed stream would not be the run's
        changed.append(f"data.albumentations {short(pipeline)} (was {short(was)})")
    trained = trained_classes(run_dir)
    if trained is not None and list(names) != trained:
        changed.append(f"the training data's classes {short(list(names))} (was {short(trained)})")
    if changed:
        raise ValueError(
            f"--resume: the saved state of {run_dir} does not fit: {'; '.join(changed)} "
            f"differ from the run's {path}. Resume without changing them, or start a new "
            "run with the new settings"
        )


def exit_after(main) -> None:
    """Runs an entry point's ``main()`` and ends the process with its status, skipping
    the interpreter's teardown (``os._exit``) once stdout and stderr are flushed.

    Why: at teardown the interpreter destroys what is left, tf.data iterators included,
    on the main thread; an iterator waits for its in-flight ``tf.numpy_function`` calls,
    which need the GIL the finalizing main thread keeps: a hang (tensorflow#21277-class;
    seen in 1 of 6 runs after a data error during ``fit``). Nothing is lost: every file is
    written (atomically) before ``main`` returns, and the kernel releases the run lock.
    An exception escaping ``main`` is printed as usual (status 1; Ctrl-C: 130).
    """
    import signal
    import sys
    import traceback

    code = 1
    try:
        code = main()
    except SystemExit as stop:  # argparse, -h
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
    except KeyboardInterrupt:  # a second Ctrl-C while the first was being reported
        print("\ninterrupted", file=sys.stderr)
        code = 130
    except BaseException:  # noqa: BLE001 (printed, then the same exit as any other)
        traceback.print_exc()
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # nothing may stop the exit now
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code if isinstance(code, int) else 1)
