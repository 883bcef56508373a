"""``detector.evaluate``: the same numbers as ``evaluate.py``, a Report of what was written,
and the command line's messages as typed errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import detector
from detector.api import ConfigError, Report

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
CHECKPOINT = str(FIXTURES / "tiny_dbe6811.keras")
RECORD = json.loads((FIXTURES / "tiny_dbe6811.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("api_spec")
    spec = {**RECORD["spec"], "val": {"images": "images/val", "annotations": "val.json"}}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    return str(root / "spec.yaml")


def test_evaluate_gives_the_command_lines_numbers_and_a_report(spec, tmp_path):
    report = detector.evaluate(CHECKPOINT, data=spec, out=str(tmp_path / "api"))
    assert isinstance(report, Report)
    proc = subprocess.run(
        [sys.executable, "evaluate.py", CHECKPOINT, "--data", spec]
        + ["--out", str(tmp_path / "cli"), "--json", str(tmp_path / "cli.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = json.loads((tmp_path / "cli.json").read_text())
    for name in ("AP", "AP50", "AP75", "AR100"):
        assert report.metrics[name] == pytest.approx(written[name], abs=1e-12), name
    assert report.metrics["AP50"] == pytest.approx(RECORD["best_json"]["AP50"], abs=1e-9)
    assert report.as_dict().keys() == written.keys()
    assert report.per_class == written["report"]["rows"] and len(report.per_class) >= 4
    assert str(tmp_path / "api" / "report.json") in report.files
    assert all(Path(f).is_file() for f in report.files)
    assert set(report.errors) == set(written["report"]["errors"])


def test_scoring_a_results_file_through_the_api(spec, tmp_path):
    first = detector.evaluate(CHECKPOINT, data=spec, out=str(tmp_path / "r"), save_json=True)
    results = str(tmp_path / "r" / "predictions.json")
    again = detector.evaluate(detections=results, data=spec)
    assert again.metrics["AP"] == pytest.approx(first.metrics["AP"], abs=1e-12)
    assert again.per_class == [] and again.out_dir is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_det": 0}, "--max-det"),
        ({"iou": 1.5}, "--iou: expected a number in [0, 1], got 1.5"),
        ({"sizes": [100]}, "--sizes: expected positive multiples of 32"),
    ],
)
def test_bad_arguments_are_config_errors_with_the_flag_named(spec, kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        detector.evaluate(CHECKPOINT, data=spec, **kwargs)
    with pytest.raises(ConfigError, match="give either CHECKPOINT or --detections"):
        detector.evaluate()
