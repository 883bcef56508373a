"""The experiment trackers (``train.loggers``) in real tiny runs, with the real packages:
an MLflow run in a SQLite store read back with ``MlflowClient``, a W&B offline run read
from its transaction log; the same numbers as metrics.csv. And a missing package: one
``error:`` line naming the extra, before the run directory exists."""

import math
import sys

import pytest

import detector
from detector.cli.train import train_main
from detector.config.schema import load_config
from detector.engine.callbacks.trackers import require
from detector.engine.run import run
from tests.helpers import wandb_file
from tests.integration.test_user_callbacks import TINY, csv_rows

COLUMNS = ["lr", "loss", "coord", "obj", "noobj", "cls", "prior", "AP", "AP50", "AP75"]


def config(tiny_spec, run_dir, *overrides):
    return load_config(
        overrides=[*TINY, f"data.spec={tiny_spec}", f"train.run_dir={run_dir}", *overrides]
    )


def csv_history(run_dir) -> dict[str, dict[int, float]]:
    """{column: {epoch: value}} of metrics.csv, NaN (no evaluation) left out."""
    rows = csv_rows(run_dir)
    values = {c: {int(r["epoch"]): float(r[c] or "nan") for r in rows} for c in COLUMNS}
    return {c: {e: v for e, v in col.items() if not math.isnan(v)} for c, col in values.items()}


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A SQLite tracking URI under tmp_path; no MLflow environment leaks in."""
    pytest.importorskip("mlflow")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def mlflow_history(client, run_id) -> dict[str, dict[int, float]]:
    return {c: {m.step: m.value for m in client.get_metric_history(run_id, c)} for c in COLUMNS}


def test_mlflow_logs_the_config_every_epoch_and_the_results_and_resumes(
    tiny_spec, tmp_path, mlflow_store
):
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "exps" / "run"
    logged = ["train.loggers=[mlflow]", f"train.mlflow_uri={mlflow_store}", "eval.every=2"]
    run(config(tiny_spec, run_dir, "train.epochs=2", *logged))
    again = load_config(run_dir / "config.yaml", ["train.epochs=3"])  # as --resume does
    metrics = run(again, resume=True).best_metrics
    client = MlflowClient(tracking_uri=mlflow_store)
    experiment = client.get_experiment_by_name("exps")  # the run directory's parent
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    assert found.data.params["model.variant"] == "tiny"
    assert found.data.params["model.input_size"] == "64"
    assert found.data.params["train.loggers"] == '["mlflow"]'
    assert found.data.params["train.epochs"] == "2"  # the first session's (MLflow's rule)
    history, expected = mlflow_history(client, found.info.run_id), csv_history(run_dir)
    assert sorted(expected["AP"]) == [2, 3] and sorted(expected["loss"]) == [1, 2, 3]
    for column in COLUMNS:  # one run across the resume, epochs 1-based, NaN skipped
        assert history[column] == pytest.approx(expected[column], rel=1e-6), column
    assert found.data.metrics["best/AP"] == pytest.approx(metrics["AP"])
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"best.keras", "config.yaml", "metrics.csv", "val"} <= artifacts
    report = {a.path for a in client.list_artifacts(found.info.run_id, "val")}
    assert "val/report.json" in report


class Interrupt(detector.Callback):
    """Ctrl-C at the end of the first epoch; records the error it is told of."""

    def __init__(self):
        super().__init__()
        self.failed = []

    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt

    def on_run_failed(self, error):
        self.failed.append(type(error))


def test_an_interrupted_run_ends_its_mlflow_run_killed(tiny_spec, tmp_path, mlflow_store):
    from mlflow.tracking import MlflowClient

    interrupt = Interrupt()
    cfg = config(
        tiny_spec,
        tmp_path / "run",
        "train.epochs=2",
        "train.loggers=[mlflow]",
        f"train.mlflow_uri={mlflow_store}",
        "train.project=interrupted",
    )
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[interrupt])
    assert interrupt.failed == [KeyboardInterrupt]
    client = MlflowClient(tracking_uri=mlflow_store)
    (found,) = client.search_runs([client.get_experiment_by_name("interrupted").experiment_id])
    assert found.info.status == "KILLED"  # not left RUNNING


def test_wandb_offline_holds_the_history_config_and_best_summary(tiny_spec, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_DIR", "WANDB_PROJECT", "WANDB_MODE", "WANDB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    run_dir = tmp_path / "run"
    cfg = config(
        tiny_spec,
        run_dir,
        "train.epochs=3",
        "eval.every=2",
        "eval.async=true",
        "train.loggers=[wandb]",
        "train.wandb_mode=offline",
        "train.project=tiny",
    )
    metrics = run(cfg).best_metrics
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")  # under the run directory
    record = wandb_file.run(log)
    assert (record.project, record.display_name) == ("tiny", "run")
    rows = wandb_file.history(log)
    assert [row["_step"] for row in rows] == [1, 2, 3]
    expected = csv_history(run_dir)
    for column in COLUMNS:
        got = {row["_step"]: row[column] for row in rows if column in row}
        assert got == pytest.approx(expected[column], rel=1e-6), column
    assert all(not math.isnan(v) for row in rows for v in row.values())
    assert wandb_file.config(log)["model"]["variant"] == "tiny"
    summary = wandb_file.summary(log)
    assert summary["AP"] == pytest.approx(metrics["AP"]) and summary["best_epoch"] in (2, 3)
    assert wandb_file.exit_code(log) == 0


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_missing_package_is_one_error_line_naming_the_extra(
    tiny_spec, tmp_path, capsys, monkeypatch, name
):
    monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
    with pytest.raises(ValueError, match=rf'pip install "detector\[{name}\]"'):
        require(["wandb", "mlflow"])
    args = ["--data", str(tiny_spec), "--run-dir", str(tmp_path / "run")]
    code = train_main([*args, "--set", f"train.loggers=[{name}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f'error: train.loggers: {name} is not installed; pip install "detector[{name}]"']
    assert not (tmp_path / "run").exists()  # before anything was written
