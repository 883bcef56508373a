"""Hostile input to the "use" half (issue 24): ``predict.py`` / `Detector`, ``python -m
detector.export``, ``evaluate.py``'s flags and dataset files. Each case ends in one
``error:`` line naming the flag, file or key (exit 2), or in a handled ``warning:`` line:
never a traceback, a runaway allocation, a silent wrong result or a file's content."""

import errno
import os
import subprocess
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
from detector.utils import atomic
from detector.utils.runlock import run_lock


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


# --- refused writes: one error line naming the file, before any work where possible ------


def refuse_writes(monkeypatch, name: str | None = None, code: int = errno.EROFS) -> None:
    """The atomic writer's temporary file for `name` (every file when None) is refused
    with `code`, as a read-only file system refuses it (the error names the temporary)."""
    original = atomic._create_temporary

    def create(path, suffix):
        if name is None or os.path.basename(path) == name:
            folder, base = os.path.split(os.path.abspath(path))
            raise OSError(code, os.strerror(code), os.path.join(folder, f".{base}.0123"))
        return original(path, suffix)

    monkeypatch.setattr(atomic, "_create_temporary", create)


def test_predict_json_into_a_read_only_folder(checkpoint, image, tmp_path, capsys, monkeypatch):
    refuse_writes(monkeypatch, "predictions.json")
    out = tmp_path / "out"
    argv = [checkpoint, image, "--out", out, "--save-json"]
    line = one_error(capsys, predict_main, argv, "Read-only file system")
    assert line.endswith(f"writing {out / 'predictions.json'} (make the file system writable)")
    assert ".0123" not in line


def test_predict_into_a_really_read_only_folder_is_refused_before_predicting(
    checkpoint, image, tmp_path, capsys
):
    folder = tmp_path / "ro"
    folder.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)]
    try:
        if subprocess.run(command, capture_output=True, timeout=10).returncode:
            pytest.skip("mounting a tmpfs is not permitted here")
        line = one_error(capsys, predict_main, [checkpoint, image, "--out", folder], "--out")
        assert line == f"error: --out {folder}: cannot lock it (Read-only file system)"
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def test_evaluate_json_is_checked_before_evaluating(checkpoint, tiny_spec, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    argv = [checkpoint, "--data", tiny_spec, "--json"]
    line = one_error(capsys, evaluate_main, [*argv, a_file / "m.json"], "--json")
    assert line == (
        f"error: --json: Not a directory writing {a_file / 'm.json'} "
        "(a part of the path is a file, not a folder)"
    )
    line = one_error(capsys, evaluate_main, [*argv, tmp_path], "--json")
    assert line == f"error: --json: {tmp_path} is a folder; give a file path"
    assert not list(tmp_path.glob("val*"))  # nothing was evaluated


def test_evaluate_json_into_a_read_only_folder(
    checkpoint, tiny_spec, tmp_path, capsys, monkeypatch
):
    refuse_writes(monkeypatch, "m.json")
    argv = [checkpoint, "--data", tiny_spec, "--json", tmp_path / "ro" / "m.json"]
    line = one_error(capsys, evaluate_main, argv, "--json", "Read-only file system")
    assert ".0123" not in line


@pytest.mark.parametrize("command", [["pack"], ["convert", "--to", "yolo"]])
def test_data_tools_into_a_read_only_folder(tiny_spec, tmp_path, capsys, monkeypatch, command):
    from detector.cli.data import main as data_main

    refuse_writes(monkeypatch)
    out = tmp_path / "ro"
    argv = [command[0], tiny_spec, out, *command[1:]]
    line = one_error(capsys, data_main, argv, "Read-only file system writing", str(out))
    assert ".0123" not in line


def test_data_check_plots_are_written_atomically(tiny_spec, tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    from detector.cli.data import main as data_main

    plots = tmp_path / "plots"
    assert data_main(["check", str(tiny_spec), "--plots", str(plots)]) == 0
    before = {p.name: p.read_bytes() for p in plots.iterdir()}
    assert sorted(before) == ["augmented.png", "box_shapes.png", "classes.png"]
    capsys.readouterr()

    def disk_full(fig, target, **kwargs):  # half a PNG, then the disk is full
        with open(target, "wb") as f:
            f.write(before["classes.png"][:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), target)

    monkeypatch.setattr(Figure, "savefig", disk_full)
    line = one_error(capsys, data_main, ["check", tiny_spec, "--plots", plots], "No space")
    assert line.endswith(f"writing {plots / 'classes.png'} (free some space)")
    # the previous pictures whole, no temporary left beside them
    assert {p.name: p.read_bytes() for p in plots.iterdir()} == before


def test_data_check_plots_into_a_read_only_folder(tiny_spec, tmp_path, capsys, monkeypatch):
    from detector.cli.data import main as data_main

    refuse_writes(monkeypatch, "classes.png")
    plots = tmp_path / "plots"
    line = one_error(capsys, data_main, ["check", tiny_spec, "--plots", plots], "Read-only")
    assert line.endswith(f"writing {plots / 'classes.png'} (make the file system writable)")
    assert not list(plots.iterdir())


# --- one run per output folder; every label its own file ---------------------------------


def test_a_second_predict_into_a_busy_out_folder_is_refused(checkpoint, image, tmp_path, capsys):
    out = tmp_path / "out"
    with run_lock(str(out), "--out", "(another predict.py)"):
        line = one_error(capsys, predict_main, [checkpoint, image, "--out", out], "--out")
    assert line == (
        f"error: --out {out} is in use by process {os.getpid()} (another predict.py); "
        "wait for it or pass another --out"
    )
    assert os.listdir(out) == [".lock"]  # nothing written by the refused run
    assert predict_main([str(checkpoint), str(image), "--out", str(out)]) == 0  # released
    assert sorted(os.listdir(out)) == [".lock", "x.png"]


@pytest.mark.parametrize(
    "names",
    [
        ["a.jpg", "a.jpg.png"],
        ["a.jpg", "a.png", "a.jpg.png"],
        ["a.jpg", "a.png", "a.jpg.png", "a.jpg.jpg", "b.png", "a.png.jpg"],
    ],
)
def test_every_image_gets_its_own_label_file(checkpoint, tmp_path, capsys, names):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in names:
        cv2.imwrite(str(folder / name), np.full((40, 60, 3), 90, np.uint8))
    out = tmp_path / "out"
    assert predict_main([str(checkpoint), str(folder), "--out", str(out), "--save-txt"]) == 0
    labels = sorted(os.listdir(out / "labels"))
    assert len(labels) == len(names), labels
    assert sorted(os.listdir(out)) == sorted([".lock", "labels", *names])  # drawn, whole
    assert all(cv2.imread(str(out / name)).shape == (40, 60, 3) for name in names)


def test_label_names_keep_the_unique_stems():
    from detector.inference.sources import label_names

    assert label_names(["a.jpg", "b.png"]) == [None, None]
    assert label_names(["a.jpg", "a.jpg.png", "a.png"]) == ["a.jpg", "a.jpg.png", "a.png"]
    assert label_names(["a.jpg", "a.jpg.png"]) == [None, None]  # a.txt and a.jpg.txt


# --- export --out: never its own input, never an existing file without --force -----------


def test_export_out_never_overwrites_the_checkpoint(checkpoint, capsys):
    before = checkpoint.read_bytes()
    for force in ([], ["--force"]):
        argv = [checkpoint, "--format", "tflite", "--out", checkpoint, *force]
        one_error(capsys, export_main, argv, f"--out: {checkpoint} is the checkpoint")
    assert checkpoint.read_bytes() == before


def test_export_out_replaces_an_existing_file_only_with_force(checkpoint, tmp_path, capsys):
    out = tmp_path / "m.tflite"
    out.write_bytes(b"somebody's file")
    argv = [checkpoint, "--format", "tflite", "--out", out]
    one_error(capsys, export_main, argv, f"--out: {out} exists; pass --force to replace it")
    assert out.read_bytes() == b"somebody's file"
    assert export_main([str(a) for a in [*argv, "--force"]]) == 0
    assert out.read_bytes()[4:8] == b"TFL3"  # the TFLite flatbuffer's identifier


def test_export_bad_arguments_are_one_line(checkpoint, capsys):
    one_error(capsys, export_main, [checkpoint, "--format", "coreml"], "--format", "coreml")


# --- export metadata checked against the network it describes -----------------------------


@pytest.fixture(scope="module")
def exports(checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The zero model exported as TFLite and SavedModel (64 px, 2 classes, 1 anchor)."""
    from detector.export import export

    folder = tmp_path_factory.mktemp("exports")
    return {
        "tflite": Path(export(checkpoint, "tflite", out=str(folder / "m.tflite"))),
        "saved_model": Path(export(checkpoint, "saved_model", out=str(folder / "m_saved"))),
    }


def edited(artifact: Path, tmp_path: Path, **changes) -> tuple[Path, Path]:
    """A copy of `artifact` whose metadata has `changes`; (artifact, its metadata)."""
    import json
    import shutil

    from detector.inference.metadata import metadata_path

    copy = tmp_path / artifact.name
    if artifact.is_dir():
        shutil.copytree(artifact, copy)
    else:
        shutil.copy(artifact, copy)
        shutil.copy(metadata_path(str(artifact)), metadata_path(str(copy)))
    meta = Path(metadata_path(str(copy)))
    meta.write_text(json.dumps(dict(json.loads(meta.read_text()), **changes)))
    return copy, meta


@pytest.mark.parametrize("fmt", ["tflite", "saved_model"])
@pytest.mark.parametrize("count", [1, 1000])
def test_metadata_with_other_class_names_is_refused_by_count(
    exports, image, tmp_path, capsys, fmt, count
):
    names = [f"name{i}" for i in range(count)]
    model, meta = edited(exports[fmt], tmp_path, names=names, category_ids=list(range(count)))
    line = one_error(capsys, predict_main, [model, image, "--out", tmp_path / "o"], str(meta))
    assert f"{count} class names with 1 anchors, {5 + count} outputs per grid cell " in line
    assert "(the network has 7)" in line and "name0" not in line and len(line) < 400
    with pytest.raises(ValueError, match="does not describe the model beside it"):
        Detector.load(model)


def test_metadata_with_another_input_size_is_refused(exports, image, tmp_path, capsys):
    model, meta = edited(exports["tflite"], tmp_path, input_size=416)
    line = one_error(capsys, predict_main, [model, image, "--out", tmp_path / "o"], str(meta))
    assert "input_size 416 (the model takes 64)" in line


def test_evaluate_refuses_a_lying_export_in_one_short_line(exports, tiny_spec, tmp_path, capsys):
    names = [f"name{i}" for i in range(1000)]
    model, meta = edited(exports["tflite"], tmp_path, names=names, category_ids=[1] * 1000)
    line = one_error(capsys, evaluate_main, [model, "--data", tiny_spec], str(meta))
    assert len(line) < 400


def test_evaluate_names_a_class_mismatch_in_one_short_line(tmp_path, tiny_spec, capsys):
    names = [f"class{i}" for i in range(1000)]
    model = build_inference_model(1000, [[0.5, 0.5]], "tiny", 0.125, 64, names, list(range(1000)))
    model.save(tmp_path / "many.keras")
    argv = [tmp_path / "many.keras", "--data", tiny_spec, "--out", tmp_path / "val"]
    line = one_error(capsys, evaluate_main, argv, "the dataset has 4 classes", "checkpoint 1000")
    assert len(line) < 300


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"names": "abc"}, "names: expected a list of class names"),
        ({"category_ids": [5]}, "category_ids: expected one per name"),
        ({"input_size": 10**6}, "input_size: expected pixels in 1..4096"),
        ({"anchors": [[1, "x"]]}, "anchors: expected a list of [w, h]"),
        ({"max_detections": 10**9}, "max_detections: expected 1..10000"),
        ({"unknown_key": 1}, "not a detector metadata file (TypeError)"),
    ],
)
def test_malformed_metadata_fields_are_named(exports, tmp_path, changes, named):
    model, meta = edited(exports["tflite"], tmp_path, **changes)
    with pytest.raises(ValueError) as info:
        Detector.load(model)
    assert str(info.value) == f"{meta}: {named}"


# --- evaluate: nothing to evaluate is not an AP of 0 ----------------------------------------


def empty_val_spec(tmp_path: Path) -> Path:
    import json

    (tmp_path / "images").mkdir()
    categories = [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}]
    gt = {"images": [], "annotations": [], "categories": categories}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    spec = tmp_path / "empty.yaml"
    spec.write_text("format: coco\nval: {images: images, annotations: gt.json}\n")
    return spec


def test_evaluate_an_empty_split_is_refused(checkpoint, tmp_path, capsys):
    spec = empty_val_spec(tmp_path)
    argv = [checkpoint, "--data", spec, "--voc", "--out", tmp_path / "val"]
    line = one_error(capsys, evaluate_main, argv, str(spec), "the val split has no images")
    assert "AP" not in line
    results = tmp_path / "r.json"
    results.write_text("[]")
    argv = ["--detections", results, "--data", spec]
    one_error(capsys, evaluate_main, argv, "the val split has no images")


# --- dataset files: never a file's content in a message; a BOM is not part of a path --------


SECRET = "SECRET_TOKEN_4f2a line one"


def test_a_list_file_that_is_not_an_image_list_is_named_not_quoted(tmp_path, capsys):
    from detector.cli.data import main as data_main

    private = tmp_path / "private"
    private.mkdir()
    (private / "secret.txt").write_text(f"{SECRET}.txt\nline two\n")
    spec = tmp_path / "a" / "b" / "data.yaml"
    spec.parent.mkdir(parents=True)
    spec.write_text("path: ../../private\ntrain: secret.txt\nnames: [x]\n")
    line = one_error(capsys, data_main, ["check", spec], str(private / "secret.txt"))
    assert "2 of its 2 lines are not image paths (the first: line 1)" in line
    assert "SECRET" not in line and "line two" not in line


def test_predict_on_a_list_file_that_is_not_an_image_list(checkpoint, tmp_path, capsys):
    (tmp_path / "secret.txt").write_text(f"{SECRET}\n")
    argv = [checkpoint, tmp_path / "secret.txt", "--out", tmp_path / "o"]
    line = one_error(capsys, predict_main, argv, str(tmp_path / "secret.txt"), "line 1")
    assert "SECRET" not in line


def test_an_image_list_with_a_bom_and_crlf_reads_every_image(tmp_path):
    from detector.data.records import Dataset
    from detector.data.spec import load_dataset
    from tests.helpers.data import NAMES, make_records, write_yolo

    root = tmp_path / "ds"
    records = make_records(str(root / "images"), 4)
    write_yolo(
        Dataset(records, list(NAMES), [0, 1, 2], None), str(root / "images"), str(root / "labels")
    )
    lines = [os.path.relpath(r.path, root) for r in records]
    (root / "lists").mkdir()  # darknet-style lines: relative to the root, not the list
    text = "\r\n".join(lines).encode() + b"\r\n"
    (root / "lists" / "train.txt").write_bytes(b"\xef\xbb\xbf" + text)
    spec = root / "data.yaml"
    spec.write_text(f"path: {root}\ntrain: lists/train.txt\nnames: {list(NAMES)}\n")
    dataset = load_dataset(str(spec), "train")
    assert sorted(r.path for r in dataset.records) == sorted(r.path for r in records)
    assert sum(len(r.boxes) for r in dataset.records) == sum(len(r.boxes) for r in records)


def test_a_cut_video_is_said(checkpoint, tmp_path, capsys):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(30):
        writer.write(np.full((48, 64, 3), i * 8, np.uint8))
    writer.release()
    os.truncate(video, video.stat().st_size // 2)
    argv = [str(checkpoint), str(video), "--out", str(tmp_path / "o"), "--no-save-img"]
    assert predict_main(argv) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {video}: the video ended")
    assert warnings[0].endswith("of its 30 frames (the file is cut or damaged)")


def test_a_nul_byte_in_one_coco_file_name_skips_that_image_only(tmp_path):
    import json

    from detector.data.spec import load_dataset
    from tests.helpers.data import make_records

    records = make_records(str(tmp_path / "images"), 3)
    images = [
        {
            "id": r.image_id,
            "file_name": os.path.basename(r.path),
            "width": r.width,
            "height": r.height,
        }
        for r in records
        if "sub" not in r.path
    ]
    images[0]["file_name"] = "img0\x00.jpg"
    gt = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    spec = tmp_path / "spec.yaml"
    spec.write_text("format: coco\nval: {images: images, annotations: gt.json}\n")
    dataset = load_dataset(str(spec), "val")
    assert [os.path.basename(r.path) for r in dataset.records] == ["img1.jpg", "img2.jpg"]
    assert dataset.problems["annotation_malformed"] == 1
