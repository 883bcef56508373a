"""Faults during a training run (subprocesses of train.py): a data error during ``fit``,
Ctrl-C, a refused write (disk full, read-only, permission). Each must end the process in
bounded time with one message naming the problem and the resume command, leaving the
last complete state, the checkpoints and no temporary file behind."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from detector.engine.state import resolve
from detector.utils.runlock import _TEMPORARY
from tests.helpers.data import TINY_MODEL, set_flags

ROOT = Path(__file__).resolve().parents[2]
TINY = set_flags(*TINY_MODEL, "data.batch_size=8", "model.num_anchors=2", "train.max_minutes=0")
# Runs train.py as its own __main__ after injecting the fault the environment names:
# FAULT=loader: the training loader raises (inside tf.numpy_function) after FAULT_AFTER
# examples; FAULT=ERRNO (e.g. ENOSPC): the atomic writer's commit of the FAULT_TARGET-th
# ... write of a file named FAULT_TARGET fails with that errno, half the data written.
RUNNER = """
import errno, os, runpy, sys
fault, after = os.environ.get("FAULT", ""), int(os.environ.get("FAULT_AFTER", "0"))
calls = [0]
if fault == "loader":
    from detector.data import pipeline
    original = pipeline._ExampleLoader.from_index
    def from_index(self, *args):
        calls[0] += 1
        if calls[0] > after:
            raise RuntimeError("simulated loader failure")
        return original(self, *args)
    pipeline._ExampleLoader.from_index = from_index
elif fault:
    from detector.utils import atomic as io
    code, original = getattr(errno, fault), io._commit
    def _commit(tmp, path):
        if os.path.basename(path) == os.environ["FAULT_TARGET"]:
            calls[0] += 1
            if calls[0] > after:
                with open(tmp, "ab") as f:
                    f.write(b"half a file")
                raise OSError(code, os.strerror(code))
        return original(tmp, path)
    io._commit = _commit
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def _default_sigint():
    """The child handles SIGINT even when the test runner was started with it ignored
    (a background job of a non-interactive shell): Python then keeps SIG_IGN."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str], env: dict | None = None, runner: bool = True) -> subprocess.Popen:
    """train.py (through RUNNER) with `args`, line-per-epoch output (CI=1)."""
    command = ["-c", RUNNER] if runner else ["train.py"]
    return subprocess.Popen(
        [sys.executable, *command, *args],
        cwd=ROOT,
        env={**os.environ, "CI": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    """(exit status, stdout, stderr); fails (after killing it) if the process hangs."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the process did not end within {timeout} s:\n{err[-2000:]}")
    return proc.returncode, out, err


def new_run(spec: Path, run_dir: Path, epochs: int) -> list[str]:
    return ["--data", str(spec), "--epochs", str(epochs), "--run-dir", str(run_dir), *TINY]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def temporaries(run_dir: Path) -> list[str]:
    return [p.name for p in run_dir.rglob("*") if _TEMPORARY.fullmatch(p.name)]


def logged_epochs(run_dir: Path) -> list[str]:
    with open(run_dir / "metrics.csv") as f:
        return [row["epoch"] for row in csv.DictReader(f)]


# --- item 2: a data error during fit ends the process, with one error line -------------


def _loader_failure_ends(spec: Path, run_dir: Path) -> None:
    proc = start(new_run(spec, run_dir, 4), {"FAULT": "loader", "FAULT_AFTER": "30"})
    code, _, err = finish(proc, timeout=120)  # a teardown hang fails here
    assert code == 2, err[-3000:]
    (line,) = error_lines(err)
    assert "the training data" in line and "simulated loader failure" in line
    assert line.endswith(f"python train.py --resume {run_dir}")
    assert "Traceback" not in err


def test_a_loader_failure_during_fit_is_one_error_line_and_the_process_ends(tiny_spec, tmp_path):
    _loader_failure_ends(tiny_spec, tmp_path / "run")


@pytest.mark.slow
def test_six_loader_failures_in_a_row_all_end(tiny_spec, tmp_path):
    """The teardown deadlock (tensorflow#21277-class) hit about 1 run in 3 before."""
    for attempt in range(6):
        _loader_failure_ends(tiny_spec, tmp_path / f"run{attempt}")


def _packed_with_a_damaged_shard(spec: Path, tmp_path: Path, damage) -> tuple[Path, Path]:
    """`spec` packed under tmp_path/packed, its last train shard passed to `damage`;
    returns (the packed spec, the shard)."""
    packed = tmp_path / "packed"
    pack = subprocess.run(
        [sys.executable, "-m", "detector.data", "pack", str(spec), str(packed)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pack.returncode == 0, pack.stderr[-2000:]
    shard = sorted(packed.glob("train-*.tfrecord"))[-1]
    damage(shard)
    return packed / "spec.yaml", shard


@pytest.mark.slow
def test_a_truncated_tfrecord_shard_is_refused_by_name_before_the_run(tiny_spec, tmp_path):
    cut = lambda shard: os.truncate(shard, shard.stat().st_size // 2)  # noqa: E731
    spec, shard = _packed_with_a_damaged_shard(tiny_spec, tmp_path, cut)
    run_dir = tmp_path / "run"
    code, _, err = finish(start(new_run(spec, run_dir, 2), runner=False), 120)
    assert code == 2, err[-3000:]
    (line,) = error_lines(err)
    assert line.startswith(f"error: {shard}: TFRecord shard truncated")
    assert not run_dir.exists()


@pytest.mark.slow
def test_a_corrupted_tfrecord_shard_during_training_is_named(tiny_spec, tmp_path):
    def flip(shard):  # a byte of the first record's data: the size and framing stay
        data = bytearray(shard.read_bytes())
        data[12 + 100] ^= 0xFF
        shard.write_bytes(bytes(data))

    spec, shard = _packed_with_a_damaged_shard(tiny_spec, tmp_path, flip)
    run_dir = tmp_path / "run"
    code, _, err = finish(start(new_run(spec, run_dir, 2), runner=False), 120)
    assert code == 2, err[-3000:]
    (line,) = error_lines(err)
    assert f"the training data ({spec}) could not be read ({shard}: damaged TFRecord" in line
    assert "corrupted record at 12" in line and line.endswith(f"--resume {run_dir}")


# --- item 5: Ctrl-C wherever it lands --------------------------------------------------


def _interrupt_at(spec: Path, run_dir: Path, marker: str, epochs: int = 3) -> tuple[int, str]:
    """Starts a run, sends SIGINT once `marker` appears on stdout; (status, stderr)."""
    proc = start(new_run(spec, run_dir, epochs), runner=False)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            proc.send_signal(signal.SIGINT)
            break
    else:
        pytest.fail(f"{marker!r} never printed:\n{''.join(seen)[-2000:]}")
    code, _, err = finish(proc, timeout=120)
    return code, err


def _interrupted_line(err: str) -> str:
    (line,) = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert not error_lines(err) and "Traceback" not in err, err[-3000:]
    return line


@pytest.mark.slow
def test_ctrl_c_during_fit_stops_with_the_resume_command_then_resume_finishes(tiny_spec, tmp_path):
    run_dir = tmp_path / "run"
    code, err = _interrupt_at(tiny_spec, run_dir, "Epoch 2/")
    assert code == 130, err[-3000:]
    line = _interrupted_line(err)
    assert f"python train.py --resume {run_dir}" in line
    epoch = resolve(str(run_dir))["epoch"]
    assert f"after epoch {epoch} " in line and epoch >= 1
    assert not temporaries(run_dir)
    code, out, err = finish(start(["--resume", str(run_dir)], runner=False))
    assert code == 0, err[-3000:]
    assert logged_epochs(run_dir) == ["1", "2", "3"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "marker, resumable",
    [
        ("devices:", False),  # reading the data
        ("run directory:", True),  # building the model and the pipeline
        ("Epoch 1/", True),  # first steps (tf.function tracing)
        ("Epoch 3/", True),  # mid-fit, after two evaluations and checkpoint writes
        ("best checkpoint", True),  # the final report's evaluation
    ],
)
def test_ctrl_c_at_each_stage_stops_the_run(tiny_spec, tmp_path, marker, resumable):
    run_dir = tmp_path / "run"
    code, err = _interrupt_at(tiny_spec, run_dir, marker, epochs=4)
    assert code == 130, err[-3000:]
    line = _interrupted_line(err)
    assert ("--resume" in line) == resumable, line
    assert not (run_dir.exists() and temporaries(run_dir))


# --- item 6: a refused write during the run --------------------------------------------


def _refused_write(spec: Path, run_dir: Path, fault: str, target: str) -> str:
    """A 3-epoch run whose second write of `target` fails with errno `fault`; returns
    the error line after checking what the run left."""
    env = {"FAULT": fault, "FAULT_TARGET": target, "FAULT_AFTER": "1"}
    code, _, err = finish(start(new_run(spec, run_dir, 3), env))
    assert code == 2, err[-3000:]
    (line,) = error_lines(err)
    assert os.strerror(getattr(__import__("errno"), fault)) in line
    assert target in line and line.endswith(f"python train.py --resume {run_dir}")
    assert "Traceback" not in err
    assert not temporaries(run_dir)
    epoch = resolve(str(run_dir))["epoch"]  # the epoch before the failed one
    assert f"state after epoch {epoch} " in line and epoch >= 1
    for name in ("last.keras", "best.keras"):
        with zipfile.ZipFile(run_dir / name) as archive:
            assert archive.testzip() is None, name
    return line


def test_disk_full_at_the_state_write_stops_cleanly_and_resume_finishes(tiny_spec, tmp_path):
    run_dir = tmp_path / "run"
    line = _refused_write(tiny_spec, run_dir, "ENOSPC", "latest.weights.h5")
    assert "free some space" in line and "state after epoch 1" in line
    code, out, err = finish(start(["--resume", str(run_dir)], runner=False))
    assert code == 0, err[-3000:]
    assert "after epoch 1" in out
    assert logged_epochs(run_dir) == ["1", "2", "3"]


def test_disk_full_at_the_first_state_write_then_resume_starts_again_in_place(tiny_spec, tmp_path):
    """The run's message and --resume agree: no epoch was completed, the resume starts
    the run again in its own directory (metrics.csv's first row is cut, not refused)."""
    run_dir = tmp_path / "run"
    env = {"FAULT": "ENOSPC", "FAULT_TARGET": "latest.weights.h5", "FAULT_AFTER": "0"}
    code, _, err = finish(start(new_run(tiny_spec, run_dir, 2), env))
    assert code == 2, err[-3000:]
    (line,) = error_lines(err)
    assert "free some space" in line and "no epoch was completed yet" in line
    assert line.endswith(f"start it again with: python train.py --resume {run_dir}")
    assert resolve(str(run_dir)) is None and not temporaries(run_dir)
    code, out, err = finish(start(["--resume", str(run_dir)], runner=False))
    assert code == 0, err[-3000:]
    assert logged_epochs(run_dir) == ["1", "2"] and resolve(str(run_dir))["epoch"] == 2


def test_run_dir_naming_a_file_is_refused(tmp_path):
    import contextlib

    from detector.utils.runlock import claim_run_dir

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with contextlib.ExitStack() as stack, pytest.raises(ValueError) as info:
        claim_run_dir(str(a_file), stack)
    assert str(info.value) == (
        f"run directory {a_file}: exists and is not a folder; pass another --run-dir"
    )
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]  # no notes.txt-2/


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault, target",
    [("EROFS", "last.keras"), ("EACCES", "best.json"), ("ENOSPC", "training_metadata.json")],
)
def test_other_refused_writes_stop_cleanly(tiny_spec, tmp_path, fault, target):
    _refused_write(tiny_spec, tmp_path / "run", fault, target)


def _mount_tmpfs(folder: Path, megabytes: int) -> bool:
    folder.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)]
    try:
        return subprocess.run(command, capture_output=True, timeout=10).returncode == 0
    except OSError:
        return False


@pytest.mark.slow
def test_a_real_full_disk_stops_cleanly_and_resume_finishes_once_space_is_freed(
    tiny_spec, tmp_path
):
    """A 16 MB tmpfs: the run fills it with a ballast file after epoch 1; skipped where
    mounting is not permitted."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, 16):
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        run_dir = disk / "run"
        proc = start(new_run(tiny_spec, run_dir, 4), runner=False)
        deadline = time.monotonic() + 120
        while resolve(str(run_dir)) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        ballast = disk / "ballast"
        with open(ballast, "wb") as f, __import__("contextlib").suppress(OSError):
            while True:
                f.write(b"\0" * (1 << 16))
        code, _, err = finish(proc)
        assert code == 2, err[-3000:]  # not -11
        (line,) = error_lines(err)
        assert os.strerror(28) in line and f"--resume {run_dir}" in line
        assert not temporaries(run_dir)
        ballast.unlink()
        code, _, err = finish(start(["--resume", str(run_dir)], runner=False))
        assert code == 0, err[-3000:]
        assert logged_epochs(run_dir) == ["1", "2", "3", "4"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)
        shutil.rmtree(disk, ignore_errors=True)


# --- in-process: the pieces the runs above rely on ---------------------------------------


def _tiny_run_dir(spec: Path, run_dir: Path) -> Path:
    """A run directory holding the config.yaml of a tiny run (nothing trained)."""
    from detector.config.schema import load_config, save_config

    overrides = [*TINY_MODEL, "model.num_anchors=2", f"data.spec={spec}"]
    cfg = load_config(overrides=[*overrides, f"train.run_dir={run_dir}"])
    save_config(cfg, str(run_dir / "config.yaml"))
    return run_dir


def _damage_state(run_dir: Path) -> dict[str, bytes]:
    """Damaged state files and a metrics.csv logging two epochs; returns their bytes."""
    state = run_dir / "state"
    state.mkdir(parents=True)
    (state / "latest.weights.h5").write_bytes(b"\x89HDF cut")
    (state / "training_metadata.json").write_text('{"epoch": 2, "weights_size": 1, "weights')
    (run_dir / "metrics.csv").write_text("epoch,loss\n1,5.0\n2,4.0\n")
    return {p.name: p.read_bytes() for p in [*state.iterdir(), run_dir / "metrics.csv"]}


def test_resume_with_damaged_state_refuses_naming_the_files(tiny_spec, tmp_path, capsys):
    from detector.cli.train import train_main

    run_dir = _tiny_run_dir(tiny_spec, tmp_path / "run")
    before = _damage_state(run_dir)
    assert train_main(["--resume", str(run_dir)]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "latest.weights.h5, training_metadata.json" in line and "damaged" in line
    assert f"python train.py --config {run_dir / 'config.yaml'}" in line
    after = {p.name: p.read_bytes() for p in [*(run_dir / "state").iterdir()]}
    after["metrics.csv"] = (run_dir / "metrics.csv").read_bytes()
    assert after == before  # metrics.csv not cut, nothing repaired or removed


def test_resume_point_refuses_missing_state_after_logged_epochs(tmp_path):
    from detector.engine.state import resume_point

    assert resume_point(str(tmp_path)) is None  # nothing saved yet: start again
    (tmp_path / "metrics.csv").write_text("epoch,loss\n1,5.0\n")
    assert resume_point(str(tmp_path)) is None  # the first state write failed: start again
    (tmp_path / "metrics.csv").write_text("epoch,loss\n1,5.0\n2,4.0\n")
    with pytest.raises(ValueError, match="holds no saved state while metrics.csv logs 2 epochs"):
        resume_point(str(tmp_path))


@pytest.mark.parametrize(
    "override, named",
    [
        ("model.width=0.25", "model.width 0.25 (was 0.125)"),
        ("model.variant=darknet19", "model.variant 'darknet19' (was 'tiny')"),
        ("model.num_anchors=3", "model.num_anchors 3 (was 2)"),
        ("train.freeze=2", "train.freeze 2 (was 0)"),
        ("data.albumentations=[{name: CLAHE, p: 0.1}]", "data.albumentations [{'name': 'CLAHE'"),
    ],
)
def test_resume_with_a_changed_architecture_names_the_keys(
    tiny_spec, tmp_path, capsys, override, named
):
    from detector.cli.train import train_main

    run_dir = _tiny_run_dir(tiny_spec, tmp_path / "run")
    assert train_main(["--resume", str(run_dir), "--set", override]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert named in line and str(run_dir / "config.yaml") in line
    assert "could not be loaded" not in line


def test_resume_with_other_training_classes_names_them(tiny_spec, tmp_path):
    from detector.config.schema import load_config
    from detector.engine.faults import check_architecture

    run_dir = _tiny_run_dir(tiny_spec, tmp_path / "run")
    head = {"class_name": "YoloHead", "config": {"class_names": ["cat", "dog"]}}
    with zipfile.ZipFile(run_dir / "last.keras", "w") as archive:
        archive.writestr("config.json", __import__("json").dumps({"layers": [head]}))
    cfg = load_config(str(run_dir / "config.yaml"))
    check_architecture(cfg, str(run_dir), ["cat", "dog"])
    with pytest.raises(ValueError, match=r"classes \['cat', 'dog', 'bird'\] \(was \['cat', 'dog'"):
        check_architecture(cfg, str(run_dir), ["cat", "dog", "bird"])


def test_a_start_claims_a_folder_holding_only_temporaries_and_removes_them(tmp_path):
    import contextlib

    from detector.utils.atomic import _create_temporary
    from detector.utils.runlock import claim_run_dir, clean_temporaries

    run_dir = tmp_path / "run"
    left = _create_temporary(str(run_dir / "config.yaml"), "")  # killed at its first write
    with contextlib.ExitStack() as stack:
        assert claim_run_dir(str(run_dir), stack) == str(run_dir)
    assert not os.path.exists(left) and os.listdir(run_dir) == [".lock"]
    nested = _create_temporary(str(run_dir / "val" / "report.json"), "")
    assert clean_temporaries(str(run_dir)) == 1 and not os.path.exists(nested)


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS", "EACCES"])
def test_a_refused_commit_names_the_target_and_leaves_no_temporary(tmp_path, monkeypatch, code):
    import errno

    from detector.utils import atomic as io

    target = tmp_path / "last.keras"
    target.write_bytes(b"old")

    def refuse(tmp, path):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), tmp)

    monkeypatch.setattr(io, "_commit", refuse)
    monkeypatch.setattr(io.os, "remove", lambda p: (_ for _ in ()).throw(PermissionError(p)))
    with pytest.raises(OSError) as info:
        io.atomic_write_bytes(target, b"new")
    assert info.value.errno == getattr(errno, code) and info.value.filename == str(target)
    monkeypatch.undo()  # the removal failed above (read-only): the next start cleans up
    assert target.read_bytes() == b"old"
    from detector.utils.runlock import clean_temporaries

    assert clean_temporaries(str(tmp_path)) == 1 and os.listdir(tmp_path) == ["last.keras"]


def test_describe_op_error_names_the_loaders_exception_not_the_graph():
    import tensorflow as tf

    from detector.engine.faults import describe_op_error

    message = (
        "Graph execution error:\n\nDetected at node PyFunc defined at (most recent call "
        'last):\n  File "train.py", line 5\n\nTraceback (most recent call last):\n\n  File '
        '"pipeline.py", line 182, in from_index\n    return self.example()\n\nOSError: '
        "image gone\n\n\n\t [[{{node PyFunc}}]]\n\t [[IteratorGetNext]]"
    )
    error = tf.errors.UnknownError(None, None, message)
    assert describe_op_error(error) == "UnknownError: OSError: image gone"
    loss = tf.errors.DataLossError(None, None, "truncated record at 57873")
    assert describe_op_error(loss) == "DataLossError: truncated record at 57873"
