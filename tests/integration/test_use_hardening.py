"""Hostile input to the "use" half (issue 24): ``predict.py`` / `Detector`, ``python -m
detector.export``, ``evaluate.py``'s flags and dataset files. Each case ends in one
``error:`` line naming the flag, file or key (exit 2), or in a handled ``warning:`` line:
never a traceback, a runaway allocation, a silent wrong result or a file's content."""

from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from detector import Detector
from detector.cli.predict import predict_main
from detector.cli.train import evaluate_main
from detector.export.__main__ import main as export_main
from detector.model.network import build_inference_model


def zero_model() -> keras.Model:
    """A tiny 64 px model of classes a, b whose kernels are zero: every image gets the
    same boxes (see tests/inference/test_predict.py)."""
    model = build_inference_model(2, [[0.5, 0.5]], "tiny", 0.125, 64, ["a", "b"], [5, 9])
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            weights = [np.zeros_like(w) for w in layer.get_weights()]
            if layer.use_bias:  # objectness logit 3, class logits 2 and 0
                weights[1] = np.array([0, 0, 0, 0, 3.0, 2.0, 0.0], np.float32)
            layer.set_weights(weights)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run") / "best.keras"
    zero_model().save(path)
    return path


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), np.full((40, 60, 3), 90, np.uint8))
    return path


def one_error(capsys, main, argv: list[str], *named: str) -> str:
    """Runs a command line's main; asserts exit 2 and one ``error:`` line on stderr
    naming each of `named`; returns that line."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(name in lines[0] for name in named), lines[0]
    return lines[0]


# --- numeric flags: bounded before anything is allocated --------------------------------


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--input-size", "100000"], "--input-size: 100000 px is over the maximum 4096"),
        (["--max-det", "1000000000"], "--max-det: expected an integer in 1..10000"),
        (["--batch-size", "1000000000"], "--batch-size: expected an integer in 1..1024"),
    ],
)
def test_predict_numeric_flags_are_bounded(checkpoint, image, tmp_path, capsys, flags, named):
    one_error(capsys, predict_main, [checkpoint, image, "--out", tmp_path / "o", *flags], named)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--sizes", "64,100000"], "--sizes: 100000 px is over the maximum 4096"),
        (["--input-size", "100000"], "--input-size: 100000 px is over the maximum 4096"),
        (["--max-det", "1000000000"], "--max-det: expected an integer in 1..10000"),
        (["--batch-size", "1000000000"], "--batch-size: expected an integer in 1..1024"),
        (["--batch-size", "100000"], "--batch-size: expected an integer in 1..1024"),
    ],
)
def test_evaluate_numeric_flags_are_bounded(checkpoint, tiny_spec, capsys, flags, named):
    one_error(capsys, evaluate_main, [checkpoint, "--data", tiny_spec, *flags], named)


def test_evaluate_batch_size_is_checked_against_memory(checkpoint, tiny_spec, capsys, monkeypatch):
    from detector.utils import limits

    monkeypatch.setattr(limits, "available_bytes", lambda: 2**30)  # 1 GB free
    argv = [checkpoint, "--data", tiny_spec, "--input-size", "4096", "--batch-size", "64"]
    one_error(capsys, evaluate_main, argv, "--batch-size: 64 images of 4096 px need about")


def test_export_max_det_is_bounded(checkpoint, tmp_path, capsys):
    argv = [checkpoint, "--format", "tflite", "--max-det", "1000000000"]
    one_error(capsys, export_main, [*argv, "--out", tmp_path / "m.tflite"], "--max-det")
    assert not (tmp_path / "m.tflite").exists()


def test_the_python_api_has_the_same_bounds(checkpoint):
    detector = Detector.load(checkpoint)
    image = np.zeros((40, 60, 3), np.uint8)
    for settings, named in [
        ({"max_det": 10**9}, "max_det: expected an integer in 1..10000"),
        ({"input_size": 100_000}, "input_size: 100000 px is over the maximum 4096"),
        ({"batch_size": 10**9}, "batch_size: expected an integer in 1..1024"),
        ({"batch_size": 0}, "batch_size: expected an integer in 1..1024"),
    ]:
        with pytest.raises(ValueError, match=f"^{named}"):
            detector.predict(image, **settings)
    assert len(detector.predict(image, max_det=2, batch_size=1)[0]) == 2
