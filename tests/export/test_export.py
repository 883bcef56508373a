"""Exported artifacts (SavedModel, TFLite, ONNX) give the checkpoint's detections and AP."""

import importlib.util
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from detector.data.augment import resize
from detector.data.pipeline import TrainInput, make_train_dataset
from detector.data.spec import load_dataset
from detector.evaluation.coco import evaluate_model
from detector.export import default_path, export, tflite_ops
from detector.export.__main__ import main
from detector.inference.metadata import Metadata, metadata_path
from detector.inference.runtimes import load_runtime
from detector.model.loss import YoloLoss, identity_loss
from detector.model.network import build_inference_model, build_training_model
from detector.model.postprocess import nms, portable_nms

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="no export extra (tf2onnx, onnxruntime)")
FORMATS = ["saved_model", "tflite", pytest.param("onnx", marks=needs_onnx)]
SIZE = 96
ANCHORS = [[0.6, 0.6], [1.4, 1.4], [2.4, 2.4]]
TRAIN_STEPS = 400  # ~10 s: the model then finds its training images' shapes (AP ~0.5)


@pytest.fixture(scope="module")
def checkpoint(tiny_spec, tmp_path_factory):
    """A tiny model fitted for seconds on the tiny synthetic set, without augmentation."""
    keras.utils.set_random_seed(0)
    train = load_dataset(str(tiny_spec), "train")
    model = build_inference_model(
        len(train.names), ANCHORS, "tiny", 0.25, SIZE, train.names, train.category_ids
    )
    loss = YoloLoss(ANCHORS, len(train.names), warmup_images=0)
    training = build_training_model(model, loss, max_boxes=8)
    training.compile(keras.optimizers.Adam(3e-3), loss=identity_loss)
    data = make_train_dataset(TrainInput(train.records, SIZE, ANCHORS, 8, 8, None))
    training.fit(data, steps_per_epoch=TRAIN_STEPS, epochs=1, verbose=0)
    path = tmp_path_factory.mktemp("export") / "best.keras"
    model.save(path)
    return str(path)


@pytest.fixture(scope="module")
def val(tiny_spec):
    """The split the exports are scored on: the training one, which the model has learnt
    (AP ~0.5; on the 8 val images it scores ~0, where any two models agree)."""
    return load_dataset(str(tiny_spec), "train")


@pytest.fixture(scope="module")
def val_images(val):
    """The scored images as the network sees them: uint8 (N, SIZE, SIZE, 3)."""
    no_boxes = np.zeros((0, 4), np.float32)
    images = val.records.read_images(range(len(val.records)))
    return np.stack([resize(images[i], no_boxes, SIZE)[0] for i in range(len(val.records))])


@pytest.fixture(scope="module")
def artifacts(checkpoint):
    """The float32 exports with NMS inside, by format (ONNX when the extra is installed)."""
    formats = ["saved_model", "tflite"] + (["onnx"] if HAS_ONNX else [])
    return {f: export(checkpoint, f) for f in formats}


def random_detections(seed: int, batch=2, n=64, classes=3):
    """Decoded-like boxes (B, N, 4) xyxy in clusters (so they overlap) and scores (B, N, C)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.2, 0.8, (batch, 6, 2))[:, rng.integers(0, 6, n)]
    centres += rng.normal(0, 0.03, centres.shape)
    sizes = rng.uniform(0.05, 0.3, (batch, n, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], -1).astype(np.float32)
    scores = (rng.uniform(0, 1, (batch, n, classes)) ** 3).astype(np.float32)
    return tf.constant(boxes), tf.constant(scores)


def assert_same_detections(actual, expected, atol=1e-4):
    """Two (boxes, scores, classes, valid) results: the same detections, in the same order."""
    boxes, scores, classes, valid = (np.asarray(t) for t in actual)
    np.testing.assert_array_equal(valid, np.asarray(expected[3]))
    for i, n in enumerate(valid):
        np.testing.assert_allclose(boxes[i, :n], np.asarray(expected[0])[i, :n], atol=atol)
        np.testing.assert_allclose(scores[i, :n], np.asarray(expected[1])[i, :n], atol=atol)
        np.testing.assert_array_equal(classes[i, :n], np.asarray(expected[2])[i, :n])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_detections", [5, 100])
def test_portable_nms_equals_combined_nms(seed, max_detections):
    boxes, scores = random_detections(seed)
    settings = {"score_threshold": 0.05, "iou_threshold": 0.45, "max_detections": max_detections}
    expected = nms(boxes, scores, **settings)
    assert 0 < int(expected[3][0]) <= max_detections  # some boxes survive, some are cut
    assert_same_detections(portable_nms(boxes, scores, **settings), expected, atol=0)
    spec = tf.TensorSpec((None, *boxes.shape[1:]), tf.float32)
    score_spec = tf.TensorSpec((None, *scores.shape[1:]), tf.float32)
    dynamic = tf.function(lambda b, s: portable_nms(b, s, **settings), [spec, score_spec])
    assert_same_detections(dynamic(boxes, scores), expected, atol=0)


@pytest.fixture(scope="module")
def reference(checkpoint, val, val_images):
    """The checkpoint's detections of `val_images` and its metrics on `val`."""
    runtime = load_runtime(checkpoint)
    metrics, _ = evaluate_model(runtime, val, SIZE)
    return runtime(val_images), metrics


def test_the_checkpoint_detects(reference):
    detections, metrics = reference
    assert detections[3].sum() > 0 and metrics["AP50"] > 0.3


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_gives_the_checkpoints_detections_and_ap(fmt, artifacts, reference, val, val_images):
    runtime = load_runtime(artifacts[fmt])
    assert runtime.metadata.format == fmt and runtime.metadata.nms
    assert runtime.batch_size == (1 if fmt == "tflite" else None)
    assert_same_detections(runtime(val_images), reference[0])
    metrics, _ = evaluate_model(runtime, val, SIZE)
    for name in ("AP", "AP50", "AR100"):
        assert abs(metrics[name] - reference[1][name]) <= 1e-3, name


def test_tflite_runs_on_builtin_ops_only(artifacts, val_images):
    ops = set(tflite_ops(artifacts["tflite"]))
    assert "NON_MAX_SUPPRESSION_V5" in ops and "CONV_2D" in ops
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
    interpreter = tf.lite.Interpreter(
        model_path=artifacts["tflite"],
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF,
    )
    outputs = interpreter.get_signature_runner("serving_default")(images=val_images[:1])
    assert outputs["num_detections"][0] > 0


def test_detection_layout(checkpoint, artifacts, val_images):
    """uint8 (1, S, S, 3) in; boxes [ymin, xmin, ymax, xmax], float classes and count out."""
    runner = tf.lite.Interpreter(model_path=artifacts["tflite"]).get_signature_runner()
    inputs = runner.get_input_details()
    assert list(inputs) == ["images"]
    assert inputs["images"]["dtype"] == np.uint8
    assert list(inputs["images"]["shape"]) == [1, SIZE, SIZE, 3]
    out = runner(images=val_images[:1])
    k = 100
    assert {n: (v.shape, v.dtype) for n, v in out.items()} == {
        "detection_boxes": ((1, k, 4), np.float32),
        "detection_scores": ((1, k), np.float32),
        "detection_classes": ((1, k), np.float32),
        "num_detections": ((1,), np.float32),
    }
    boxes, scores, classes, valid = load_runtime(checkpoint)(val_images[:1])
    n = int(out["num_detections"][0])
    assert n == valid[0] > 0
    yxyx = out["detection_boxes"][0, :n]
    np.testing.assert_allclose(yxyx, boxes[0, :n][:, [1, 0, 3, 2]], atol=1e-4)
    np.testing.assert_array_equal(out["detection_classes"][0, :n], classes[0, :n])
    assert (out["detection_scores"][0, n:] == 0).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_raw_export_is_decoded_by_the_runtime(checkpoint, val_images, tmp_path, fmt):
    path = export(checkpoint, fmt, out=str(tmp_path / f"raw.{fmt}"), nms=False)
    runtime = load_runtime(path, score_threshold=0.01, max_detections=50)
    assert not runtime.metadata.nms and runtime.metadata.score_threshold == 0.01
    raw = load_raw_grid(path, val_images[:1])
    classes = len(runtime.metadata.names)
    assert raw.shape == (1, SIZE // 32, SIZE // 32, len(ANCHORS), 5 + classes)
    model = keras.models.load_model(checkpoint)
    expected_raw = model(val_images[:1].astype(np.float32))
    np.testing.assert_allclose(raw, expected_raw, atol=1e-4)
    expected = load_runtime(checkpoint, score_threshold=0.01, max_detections=50)(val_images)
    assert_same_detections(runtime(val_images), expected)


def load_raw_grid(path, images):
    """The ``raw_grid`` output of an export without NMS, run by its own runtime."""
    if path.endswith(".tflite"):
        runner = tf.lite.Interpreter(model_path=path).get_signature_runner()
        return runner(images=images)["raw_grid"]
    if path.endswith(".onnx"):
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return session.run(["raw_grid"], {"images": images})[0]
    return tf.saved_model.load(path).signatures["serving_default"](images=images)["raw_grid"]


def test_quantized_tflite(checkpoint, tiny_spec, artifacts, val, val_images):
    float32, _ = evaluate_model(load_runtime(artifacts["tflite"]), val, SIZE)
    half = export(checkpoint, "tflite", half=True)
    int8 = export(checkpoint, "tflite", int8=True, data=str(tiny_spec))
    assert half.endswith("best_float16.tflite") and int8.endswith("best_int8.tflite")
    assert not [op for op in tflite_ops(int8) if op.startswith("Flex")]
    half_metrics, _ = evaluate_model(load_runtime(half), val, SIZE)
    assert abs(half_metrics["AP"] - float32["AP"]) <= 0.02
    int8_runtime = load_runtime(int8)
    assert int8_runtime.metadata.quantization == "int8"
    int8_metrics, _ = evaluate_model(int8_runtime, val, SIZE)
    # measured: float32 AP 0.537 / AP50 0.827, float16 0.536 / 0.827, int8 0.474 / 0.821
    assert int8_metrics["AP50"] >= float32["AP50"] - 0.1
    assert int8_metrics["AP"] >= 0.75 * float32["AP"]
    dtypes = first_input_dtypes(int8)
    assert dtypes["CONV_2D"] == dtypes["LEAKY_RELU"] == dtypes["MAX_POOL_2D"] == {np.int8}
    for op in ("LOGISTIC", "EXP", "SOFTMAX", "NON_MAX_SUPPRESSION_V5", "TOPK_V2"):
        assert dtypes[op] == {np.float32}, op  # decoding and NMS stay float


def first_input_dtypes(path: str) -> dict:
    """{op name: the dtypes of its first input} over a .tflite file's ops."""
    interpreter = tf.lite.Interpreter(model_path=path)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    dtypes = {}
    for op in interpreter._get_ops_details():
        dtypes.setdefault(op["op_name"], set()).add(tensors[op["inputs"][0]]["dtype"])
    return dtypes


def test_metadata_beside_every_artifact(checkpoint, artifacts):
    assert artifacts["saved_model"].endswith("best_saved_model")
    assert artifacts["tflite"].endswith("best_float32.tflite")
    assert default_path(checkpoint, "onnx", "float32").endswith("best.onnx")
    head = keras.models.load_model(checkpoint).get_layer("yolo_head")
    for fmt, path in artifacts.items():
        meta = Metadata.load(metadata_path(path))
        assert (meta.format, meta.names, meta.anchors) == (fmt, head.class_names, head.anchors)
        assert (meta.input_size, meta.max_detections, meta.iou_threshold) == (SIZE, 100, 0.45)
    assert metadata_path(artifacts["saved_model"]).endswith("best_saved_model/metadata.json")
    raw = default_path(checkpoint, "tflite", "float32", nms=False)
    assert raw.endswith("best_raw_float32.tflite")


def test_nms_inside_honours_only_what_filtering_can(artifacts, val_images):
    path = artifacts["saved_model"]
    full = load_runtime(path)(val_images)
    strict = load_runtime(path, score_threshold=0.3, max_detections=3)(val_images)
    for i in range(len(val_images)):
        kept = full[1][i, : full[3][i]]
        assert strict[3][i] == min((kept > 0.3).sum(), 3)
        np.testing.assert_array_equal(strict[1][i, : strict[3][i]], kept[: strict[3][i]])
    with pytest.raises(ValueError, match="best_saved_model: .*iou_threshold 0.45"):
        load_runtime(path, iou_threshold=0.6)


def test_export_errors_name_the_flag(checkpoint, tmp_path, capsys):
    cases = [
        ({"format": "coreml"}, "--format"),
        ({"format": "onnx", "half": True}, "--half"),
        ({"format": "tflite", "int8": True}, "--data"),
        ({"format": "tflite", "input_size": 100}, "--input-size"),
        ({"format": "tflite", "iou_threshold": 0}, "--iou"),
    ]
    for kwargs, flag in cases:
        with pytest.raises(ValueError, match=flag):
            export(checkpoint, **kwargs)
    with pytest.raises(ValueError, match="missing.keras"):
        export(str(tmp_path / "missing.keras"), "tflite")
    assert main([checkpoint, "--format", "tflite", "--int8"]) == 2
    assert "--int8 needs --data" in capsys.readouterr().err


def test_command_line_export_and_benchmark(checkpoint, tiny_spec, tmp_path, capsys):
    out = tmp_path / "m.tflite"
    assert main([checkpoint, "--format", "tflite", "--out", str(out), "--max-det", "7"]) == 0
    meta = json.loads((tmp_path / "m.tflite.metadata.json").read_text())
    assert meta["max_detections"] == 7 and meta["quantization"] == "float32"
    capsys.readouterr()
    argv = ["benchmark", checkpoint, "--data", str(tiny_spec), "--formats", "keras", "tflite"]
    assert main([*argv, "--repeats", "3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| format | size (MB) | AP | AP50 | ms/image")
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in table[2:]}
    assert set(rows) == {"keras", "tflite"}
    assert abs(float(rows["keras"][1]) - float(rows["tflite"][1])) <= 1e-3  # the same AP


def test_import_leaves_the_onnx_packages_unloaded():
    code = (
        "import sys, detector.export, detector.export.__main__, detector.export.benchmark; "
        "print(sorted({'tf2onnx', 'onnx', 'onnxruntime'} & set(sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_mixed_precision_checkpoint_exports_in_float32(tmp_path, val_images):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = build_inference_model(2, ANCHORS, "tiny", 0.25, SIZE)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.save(tmp_path / "mixed.keras")
    path = export(tmp_path / "mixed.keras", "tflite", nms=False)
    assert path == str(tmp_path / "mixed_raw_float32.tflite")
    float32 = build_inference_model(2, ANCHORS, "tiny", 0.25, SIZE)
    float32.set_weights(mixed.get_weights())
    expected = float32(val_images[:1].astype(np.float32))
    np.testing.assert_allclose(load_raw_grid(path, val_images[:1]), expected, atol=1e-4)
