"""tf.distribute: the strategy choice, mirrored replicas on split CPUs, two local workers."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detector.engine.distribute import Cluster, ClusterError, resolve_kind, tf_config_workers
from tests.helpers.data import TINY_MODEL, set_flags, synthetic_spec

ROOT = Path(__file__).resolve().parents[2]
SMALL = set_flags(
    *TINY_MODEL,
    "model.num_anchors=3",
    "data.batch_size=8",
    "train.max_minutes=0",
    "train.precision=float32",
    "eval.batch_size=8",
)
RUN_FILES = {
    "config.yaml",
    "best.keras",
    "best.json",
    "last.keras",
    "metrics.csv",
    "state",
    "tensorboard",
    "curves.png",
    "pr_curve.png",
    "val",
    ".lock",
}


def test_tf_config_parsing_and_errors():
    assert tf_config_workers({}) == (1, 0)
    cluster = {"cluster": {"worker": ["a:1", "b:2", "c:3"]}, "task": {"type": "worker", "index": 2}}
    assert tf_config_workers({"TF_CONFIG": json.dumps(cluster)}) == (3, 2)
    with pytest.raises(ValueError, match="TF_CONFIG must be JSON"):
        tf_config_workers({"TF_CONFIG": "{not json"})
    cluster["task"]["index"] = 3
    with pytest.raises(ValueError, match="task.index 3 is not in the cluster of 3"):
        tf_config_workers({"TF_CONFIG": json.dumps(cluster)})
    cluster["task"] = {"type": "ps", "index": 0}
    with pytest.raises(ValueError, match="'ps'"):
        tf_config_workers({"TF_CONFIG": json.dumps(cluster)})


def test_auto_picks_the_strategy_darknet_users_expect():
    assert resolve_kind("auto", num_gpus=0, num_workers=1) == "none"
    assert resolve_kind("auto", num_gpus=1, num_workers=1) == "none"
    assert resolve_kind("auto", num_gpus=4, num_workers=1) == "mirrored"
    assert resolve_kind("auto", num_gpus=4, num_workers=2) == "multi_worker"
    assert resolve_kind("mirrored", num_gpus=0, num_workers=1) == "mirrored"
    with pytest.raises(ValueError, match="train.distribute"):
        resolve_kind("horovod", 0, 1)


def test_a_vote_broken_by_a_peer_that_left_is_another_workers_failure(monkeypatch):
    """The worker that failed may exit before the others have the vote's result: their
    collective then fails with a TensorFlow error, which must read as the other worker's
    failure (CI saw one in this race), while the failing worker keeps its own error."""
    import tensorflow as tf

    cluster = Cluster(kind="multi_worker", strategy=None, num_replicas=2, num_workers=2)

    def broken(value):
        raise tf.errors.UnavailableError(None, None, "Socket closed")

    monkeypatch.setattr(cluster, "all_max", broken)
    with pytest.raises(ClusterError, match=r"another worker failed to set up.*UnavailableError"):
        cluster.agree(True, "to set up")
    assert cluster.agree(False, "to set up") is None  # its caller raises its own error
    monkeypatch.setattr(cluster, "all_max", lambda value: 1.0)
    with pytest.raises(ClusterError, match="another worker failed to set up; see its output$"):
        cluster.agree(True, "to set up")
    monkeypatch.setattr(cluster, "all_max", lambda value: 0.0)
    cluster.agree(True, "to set up")


def test_time_budget_acts_only_on_the_agreed_fraction():
    from detector.engine.callbacks.schedule import TimeBudget

    class Model:
        stop_training = False

    asked = []

    def sync(fraction):  # another worker is always further on: 1.5 x this one's share
        asked.append(fraction)
        return min(2.0, 1.5 * fraction + 0.5)

    budget = TimeBudget(1.0, spent_before=20.0, sync=sync, sync_every=5)  # 1/3 spent
    budget.set_model(Model())
    for batch in range(4):
        budget.on_train_batch_end(batch)
    assert asked == [] and budget.shared_fraction() == 0.0  # nothing agreed yet
    budget.on_train_batch_end(4)
    assert len(asked) == 1 and abs(asked[0] - 1 / 3) < 0.01
    assert budget.shared_fraction() == pytest.approx(1.0, abs=0.02)
    assert budget.stopped and budget.model.stop_training  # stopped by the other's clock


def test_a_failing_chief_callback_stops_every_worker_at_the_epoch_end():
    import keras

    from detector.engine.callbacks.distribute import ChiefOnly, SyncStop

    class Boom(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise OSError("disk full")

    class Later(keras.callbacks.Callback):
        calls = 0

        def on_epoch_end(self, epoch, logs=None):
            Later.calls += 1

    class Model:
        stop_training = False

    chief = ChiefOnly([Boom(), Later()])
    codes = []

    def all_max(value):  # the other worker reports 0 (nothing wrong there)
        codes.append(value)
        return max(value, 0.0)

    sync = SyncStop(all_max, failed=lambda: chief.error is not None)
    for callback in (chief, sync):
        callback.set_model(Model())
    chief.on_epoch_end(0, {})  # kept, not raised: the other workers are waiting
    assert isinstance(chief.error, OSError) and Later.calls == 0
    sync.on_epoch_end(0, {})
    assert codes == [2.0] and sync.aborted and sync.model.stop_training
    # on the other worker the same collective returns 2: it stops too
    other = SyncStop(lambda value: max(value, 2.0))
    other.set_model(Model())
    other.on_epoch_end(0, {})
    assert other.aborted and other.model.stop_training


@pytest.fixture(scope="module")
def one_step_spec(tmp_path_factory) -> Path:
    """8 training images: with a global batch of 8, epoch 1 is exactly one step."""
    return synthetic_spec(tmp_path_factory.mktemp("one_step"), 5, 8, 4, 96)


def _train(*args, env=None, timeout=600):
    proc = subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_mirrored_on_two_cpu_devices_matches_one_device(one_step_spec, tmp_path):
    """Same global batch of 8 on one device and as 2 x 4 on two logical CPU devices with
    synchronised BatchNorm: the same first-step loss; the run directory written once."""
    common = [
        "--data",
        str(one_step_spec),
        "--epochs",
        "2",
        *SMALL,
        "--set",
        "train.sync_batchnorm=true",
    ]
    _train(*common, "--run-dir", str(tmp_path / "one"), "--set", "train.distribute=none")
    out = _train(
        *common,
        "--run-dir",
        str(tmp_path / "two"),
        "--set",
        "train.distribute=mirrored",
        "--set",
        "train.scale_lr=true",
        "--set",
        "train.devices=[/cpu:0,/cpu:1]",
    )
    # (the first-step loss comes before any update, so the scaled lr does not change it)
    assert "distribute: mirrored, 2 replicas" in out and "global batch 8 = 2 x 4" in out
    assert "; lr 0.008" in out  # default.yaml's 0.004 x 2 replicas
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [r["epoch"] for r in two] == ["1", "2"]  # each epoch logged once
    for term in ("loss", "coord", "obj", "noobj", "cls"):
        a, b = float(one[0][term]), float(two[0][term])
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (term, a, b)
    assert all(float(r["loss"]) == float(r["loss"]) for r in two)  # finite, not NaN
    assert {p.name for p in (tmp_path / "two").iterdir()} == RUN_FILES
    assert json.loads((tmp_path / "two" / "best.json").read_text())["epoch"] in (1, 2)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _workers(args: list[str], log_dir: Path, tag: str) -> list[subprocess.Popen]:
    ports = _free_ports(2)
    procs = []
    for index in range(2):
        tf_config = {
            "cluster": {"worker": [f"localhost:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
        # TMPDIR: a worker's scratch folder lands in the test's folder, also when killed
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "CI": "1", "TMPDIR": str(log_dir)}
        log = open(log_dir / f"{tag}-worker{index}.log", "w")
        procs.append(
            subprocess.Popen(
                [sys.executable, "train.py", *args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return procs


def _log(log_dir: Path, tag: str, index: int) -> str:
    return (log_dir / f"{tag}-worker{index}.log").read_text()


def _state_epoch(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "state" / "training_metadata.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def test_two_workers_write_only_the_chief_run_dir_and_resume_after_a_kill(one_step_spec, tmp_path):
    """Two worker processes on localhost (TF_CONFIG): only worker 0 writes the run
    directory; one worker killed mid-run, both restarted with --resume: the run finishes
    with every epoch logged once."""
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    args = [
        "--data",
        str(one_step_spec),
        "--epochs",
        "4",
        "--run-dir",
        str(run_dir),
        *SMALL,
        "--set",
        "train.distribute=multi_worker",
    ]
    first = _workers(args, logs, "first")
    deadline = time.monotonic() + 300
    while _state_epoch(run_dir) < 2 and time.monotonic() < deadline:
        assert all(p.poll() is None for p in first), _log(logs, "first", 0)[-3000:]
        time.sleep(0.2)
    assert _state_epoch(run_dir) >= 2, _log(logs, "first", 0)[-3000:]
    os.killpg(first[1].pid, signal.SIGKILL)  # a worker dies; its peer cannot go on alone
    first[1].wait()
    time.sleep(1)
    os.killpg(first[0].pid, signal.SIGKILL)
    first[0].wait()
    done = _state_epoch(run_dir)
    assert 2 <= done <= 3  # the step after needs both workers: epoch 4 cannot finish

    second = _workers(["--resume", str(run_dir)], logs, "second")
    for proc in second:
        assert proc.wait(timeout=300) == 0, (
            _log(logs, "second", 0)[-3000:] + _log(logs, "second", 1)[-3000:]
        )
    # worker 1's scratch folder: the killed session's stays, the finished one's is removed
    assert len(list(logs.glob("detector-worker1-*"))) == 1
    for index in range(2):
        text = _log(logs, "second", index)
        assert f"resuming {run_dir} after epoch {done}" in text, text[-2000:]
    assert "distribute: multi_worker, 2 replicas on 2 worker(s)" in _log(logs, "first", 0)
    assert "this worker (1) writes to" in _log(logs, "first", 1)
    assert [r["epoch"] for r in _rows(run_dir)] == ["1", "2", "3", "4"]
    assert {p.name for p in run_dir.iterdir()} == RUN_FILES
    events = list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    writers = {int(p.name.split(".")[-3]) for p in events}  # ...tfevents.TIME.HOST.PID.N.v2
    assert events and writers <= {first[0].pid, second[0].pid}
    assert _state_epoch(run_dir) == 4
    # the non-chief's scratch directories are gone
    scratch = Path(_log(logs, "second", 1).split("this worker (1) writes to ")[1].split()[0])
    assert not scratch.exists()


def test_an_error_on_one_worker_stops_the_other(one_step_spec, tmp_path):
    """The chief refuses a non-empty run directory; worker 1 must not wait forever."""
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    run_dir.mkdir()
    logs.mkdir()
    (run_dir / "precious.txt").write_text("an earlier run")
    args = [
        "--data",
        str(one_step_spec),
        "--epochs",
        "1",
        "--run-dir",
        str(run_dir),
        *SMALL,
        "--set",
        "train.distribute=multi_worker",
    ]
    procs = _workers(args, logs, "bad")
    codes = [proc.wait(timeout=120) for proc in procs]
    assert codes[0] != 0 and codes[1] != 0
    assert "is not empty" in _log(logs, "bad", 0)
    assert "another worker failed to set up" in _log(logs, "bad", 1)
    assert [p.name for p in run_dir.iterdir()] == ["precious.txt"]
