"""``detector.train``: a run from Python returns what it left, its AP is the AP
``detector.evaluate`` gives the checkpoint, and bad input is a typed error carrying the
command line's message."""

import math
import os

import pytest

import detector
from detector.api import ConfigError
from detector.api.train import override_lines
from tests.helpers.data import TINY_MODEL

TINY = dict(line.split("=", 1) for line in TINY_MODEL)


def test_a_run_from_python_and_its_ap_through_evaluate(tiny_spec, tmp_path):
    run_dir = tmp_path / "run"
    overrides = {
        **TINY,
        "train.epochs": 2,  # the second evaluated on its own: history has 2 APs
        "train.max_minutes": 0,
        "data.batch_size": 8,
        "train.run_dir": str(run_dir),
    }
    result = detector.train(data=str(tiny_spec), overrides=overrides)
    assert isinstance(result, detector.TrainResult)
    assert result.run_dir == str(run_dir) and os.path.isfile(result.best_path)
    assert os.path.isfile(result.last_path)
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert all(not math.isnan(row["AP"]) for row in result.history)
    report = detector.evaluate(result.best_path, out=str(tmp_path / "val"))
    assert report.metrics["AP"] == pytest.approx(result.best_metrics["AP"], abs=1e-12)
    # a second run with the same run_dir gets its own folder, as train.py does
    again = detector.train(
        data=str(tiny_spec), overrides=[f"{k}={v}" for k, v in overrides.items()]
    )
    assert again.run_dir == str(run_dir) + "-2"


def test_bad_input_is_a_config_error_with_the_command_lines_message(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'train.lr'"):
        detector.train(overrides={"train.lrr": 0.1})
    with pytest.raises(ConfigError, match="config file not found"):
        detector.train(config=str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="--resume: no run config at"):
        detector.train(resume=str(tmp_path))
    with pytest.raises(ConfigError, match="--resume takes the run's own config"):
        detector.train(config="configs/default.yaml", resume=str(tmp_path))


def test_overrides_are_written_as_set_lines():
    lines = override_lines({"train.lr": 0.01, "data.multiscale": [], "data.spec": "a b.yaml"})
    assert lines == ["train.lr=0.01", "data.multiscale=[]", "data.spec=a b.yaml"]
    assert override_lines(["train.lr=0.01"]) == ["train.lr=0.01"]
    with pytest.raises(ConfigError, match="overrides: expected a mapping"):
        override_lines("train.lr=0.01")
