"""``train.loggers: [mlflow]``: the run in an MLflow tracking store, through
``MlflowClient`` (no active-run global: several runs in one process stay apart).

Params: the resolved config, one per ``section.key`` (lists and booleans as JSON). Metrics:
each epoch's logs (`Tracker`), and at the end ``best/<name>`` for best.keras' COCO
numbers. Artifacts at the end: best.keras, config.yaml, metrics.csv and the validation
report (``val/``). The store: ``train.mlflow_uri``, else MLFLOW_TRACKING_URI, else mlflow's
default; the experiment: ``train.project``, else MLFLOW_EXPERIMENT_NAME, else the run
directory's parent folder.
"""

import json
import os
import time

from detector.engine.callbacks.trackers import Tracker, numbers
from detector.engine.callbacks.user import RunResult

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param's value (2.x and 3.x)
BATCH = 100  # params per log_batch call (MLflow's limit)


def params(config: dict) -> dict[str, str]:
    """{"section.key": value as text} of a config dict (strings as they are, the rest as
    JSON), each cut to MLflow's length limit."""
    flat = {}
    for section, values in config.items():
        for key, value in values.items():
            text = value if isinstance(value, str) else json.dumps(value)
            flat[f"{section}.{key}"] = text[:MAX_PARAM_LENGTH]
    return flat


class MlflowLogger(Tracker):
    """The run as an MLflow run (see the module). `uri`: str. The tracking URI ("" = the
    environment's or mlflow's default). Other arguments: `Tracker`'s."""

    key = "mlflow"
    env_project = "MLFLOW_EXPERIMENT_NAME"

    def __init__(self, *, uri: str = "", **common):
        super().__init__(**common)
        self.uri = uri
        self.client = None
        self.run_id = None
        self.last_step = 0

    def open(self, run_id: str | None) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri or None)
        if run_id is not None and self._exists(run_id):
            self.client.update_run(run_id, status="RUNNING")
        else:
            tags = {"run_dir": os.path.abspath(self.run_dir)}
            run = self.client.create_run(self._experiment_id(), run_name=self.name, tags=tags)
            run_id = run.info.run_id
        self.run_id = run_id
        self.save_id(run_id)
        self._log_params()

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            return False
        return True

    def _experiment_id(self) -> str:
        name = self.project_name()
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return self.client.create_experiment(name)

    def _log_params(self) -> None:
        """The config's params; a resumed run keeps the ones it has (MLflow refuses to
        change a param: the resumed session's config is its config.yaml artifact)."""
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params
        todo = [Param(k, v) for k, v in params(self.config).items() if k not in logged]
        for start in range(0, len(todo), BATCH):
            self.client.log_batch(self.run_id, params=todo[start : start + BATCH])

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.last_step = step

    def upload(self, result: RunResult) -> None:
        best = {f"best/{k}": v for k, v in numbers(result.best_metrics).items()}
        if best:
            self.log(best, self.last_step)
        for name in ("best.keras", "config.yaml", "metrics.csv"):
            path = os.path.join(result.run_dir, name)
            if os.path.isfile(path):
                self.client.log_artifact(self.run_id, path)
        report = os.path.join(result.run_dir, "val")
        if os.path.isdir(report):
            self.client.log_artifacts(self.run_id, report, artifact_path="val")

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)
