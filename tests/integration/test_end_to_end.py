"""The real command lines, end to end, on a tiny model and a tiny synthetic dataset."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import keras
import pytest

import detector.model.layers  # noqa: F401  (registers the custom layers for load_model)
from detector.config.schema import load_config
from tests.helpers.data import TINY_MODEL, set_flags

ROOT = Path(__file__).resolve().parents[2]


def run(*args, timeout=600):
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    return proc


@pytest.fixture(scope="module")
def trained_run(tiny_spec, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    proc = run(
        "train.py",
        "--data",
        str(tiny_spec),
        "--epochs",
        "2",
        "--run-dir",
        str(run_dir),
        *set_flags(
            "model.variant=tiny",
            "model.width=0.25",
            "model.input_size=64",
            "data.multiscale=[]",
            "data.batch_size=8",
            "train.max_minutes=0",
            "model.num_anchors=3",
        ),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir, proc.stdout


def test_train_writes_the_run_directory(trained_run):
    run_dir, stdout = trained_run
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "best.keras", "best.json", "last.keras", "metrics.csv"} <= names
    assert not [n for n in names if n.startswith(".") and n != ".lock"], names  # temporaries
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert {"loss", "coord", "obj", "noobj", "cls", "AP", "AP50", "lr"} <= set(rows[0])
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.model.num_anchors == 3 and len(cfg.model.anchors) == 3
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in stdout
    model = keras.models.load_model(run_dir / "last.keras", safe_mode=True)
    assert model.get_layer("yolo_head").anchors == cfg.model.anchors


def test_evaluate_checkpoint_agrees_with_best_json(trained_run, tmp_path):
    run_dir, _ = trained_run
    out = tmp_path / "metrics.json"
    proc = run("evaluate.py", str(run_dir / "best.keras"), "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(out.read_text())
    best = json.loads((run_dir / "best.json").read_text())
    for name in ("AP", "AP50", "AR100"):
        assert abs(metrics[name] - best[name]) <= 1e-3, name
    assert set(metrics["per_class"]) == set(best["per_class"])


def test_bad_config_key_is_a_clear_error(tiny_spec):
    proc = run("train.py", "--data", str(tiny_spec), "--set", "train.lrr=0.1")
    assert proc.returncode == 2
    assert "train.lrr" in proc.stderr and "train.lr" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_dataset_is_a_clear_error(tmp_path):
    proc = run("train.py", "--data", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "nope.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_training_on_damaged_data_reports_every_problem_and_finishes(tmp_path):
    from tests.helpers.data import damage_annotations, damage_images, write_all_formats

    specs = write_all_formats(str(tmp_path / "data"), count=10)
    damage_annotations("yolo", str(tmp_path / "data"))
    damage_images(str(tmp_path / "data"))
    run_dir = tmp_path / "run"
    proc = run(
        "train.py",
        "--data",
        specs["yolo"],
        "--epochs",
        "1",
        "--run-dir",
        str(run_dir),
        *set_flags(*TINY_MODEL, "data.batch_size=2", "model.num_anchors=2"),
        *set_flags("data.letterbox=true", "data.multiscale=[64,96]", "data.multiscale_every=1"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    before_training = proc.stdout.split("run directory:")[0]
    for reason in (
        "image_missing",
        "image_truncated",
        "image_not_an_image",
        "image_grayscale",
        "image_rgba",
        "image_16bit",
        "box_zero_size",
        "box_clipped",
        "box_outside_image",
        "class_unknown",
        "annotation_malformed",
    ):
        assert reason in before_training, reason
    assert "img4" in before_training  # an example file is named
    assert (run_dir / "best.keras").is_file()
    model = keras.models.load_model(run_dir / "best.keras", safe_mode=True)
    assert model.get_layer("yolo_head").letterbox is True


def test_missing_annotation_path_fails_fast_naming_it(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "format: voc\ntrain: {images: img, annotations: xml}\nval: {images: img, "
        "annotations: xml}\nnames: [a]\n"
    )
    (tmp_path / "img").mkdir()
    proc = run("train.py", "--data", str(spec), "--epochs", "1", "--run-dir", str(tmp_path / "r"))
    assert proc.returncode != 0
    assert f"train.annotations: folder not found: {tmp_path / 'xml'}" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()


@pytest.mark.parametrize("kind", ["keras", "darknet"])
def test_training_starts_from_init_weights(trained_run, tmp_path, kind):
    from detector.darknet import save_darknet_weights

    run_dir, _ = trained_run
    source = run_dir / "best.keras"
    if kind == "darknet":
        model = keras.models.load_model(source, safe_mode=True)
        source = tmp_path / "init.weights"
        save_darknet_weights(model, str(source))
    cfg = load_config(run_dir / "config.yaml")
    proc = run(
        "train.py",
        "--config",
        str(run_dir / "config.yaml"),
        "--epochs",
        "1",
        "--run-dir",
        str(tmp_path / "run"),
        *set_flags(f"model.init_weights={source}", f"model.anchors={cfg.model.anchors}"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "init weights: 9 of 9 conv layers loaded" in proc.stdout
