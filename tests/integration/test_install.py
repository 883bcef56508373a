"""The package works outside a checkout: a non-editable install (a wheel built from the
repository, installed into a folder of its own), then every mode run from an empty
directory, with the packaged default experiment and synthetic dataset.

The dependencies are the test environment's own (``--no-deps``): what is tested is our
package (its files, package data and console script), not pip's resolver.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = (
    "model.width=0.125",
    "model.input_size=64",
    "data.multiscale=[]",
    "train.epochs=1",
    "eval.batch_size=64",
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """{"env": the environment that finds only the installed copy, "bin": its scripts}."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--target", str(target), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONSAFEPATH": "1"}
    return {"env": env, "bin": target / "bin", "site": target}


def _run(installed, cwd, *command, timeout=600):
    proc = subprocess.run(
        list(command),
        cwd=cwd,
        env=installed["env"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_every_mode_runs_from_an_empty_directory(installed, tmp_path):
    work = tmp_path / "empty"
    work.mkdir()
    detector = str(installed["bin"] / "detector")
    flags = [flag for key in TINY for flag in ("--set", key)]
    train = _run(installed, work, detector, "train", "--max-minutes", "0.2", *flags)
    run_dir = work / "runs" / "default"
    assert (run_dir / "best.keras").is_file() and (run_dir / "config.yaml").is_file()
    assert (work / "data" / "synthetic" / "annotations" / "val.json").is_file()
    assert "devices: CPU only" in train.stdout
    assert "E0000" not in train.stderr and "cuInit" not in train.stderr  # the quiet start
    val = _run(installed, work, detector, "val", str(run_dir / "best.keras"))
    ap_line = next(line for line in val.stdout.splitlines() if "Average Precision" in line)
    assert "IoU=0.50:0.95" in ap_line
    predict = _run(
        installed,
        work,
        detector,
        "predict",
        str(run_dir / "best.keras"),
        str(work / "data" / "synthetic" / "images" / "val"),
        "--save-json",
        "--out",
        "pred",
    )
    assert (work / "pred" / "predictions.json").is_file(), predict.stdout
    _run(installed, work, detector, "export", str(run_dir / "best.keras"), "--format", "tflite")
    assert list(run_dir.glob("*.tflite"))
    code = "import detector, sys; from detector import Detector; print(detector.__file__)"
    where = _run(installed, work, sys.executable, "-c", code).stdout.strip()
    assert where.startswith(str(installed["site"])), where  # the installed copy, not ROOT


def test_a_bad_mode_is_one_error_line(installed, tmp_path):
    proc = subprocess.run(
        [str(installed["bin"] / "detector"), "trian"],
        cwd=tmp_path,
        env=installed["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown mode 'trian'; expected one of train, val, predict, export, data, "
        "bench, darknet"
    ]
