"""Export a ``.keras`` checkpoint as a SavedModel folder, a ``.tflite`` or an ``.onnx`` file,
with decoding and NMS inside (the default) or the raw grid (``nms=False``).

Every artifact takes a **uint8 RGB batch ``images`` (B, S, S, 3)** at the input size S,
already resized or letterboxed (`detector.data.augment.resize`; the metadata says which):
that preprocessing stays outside, as in evaluation. With NMS inside it returns the
detection layout of TFLite's SSD models, which mobile SDKs read:

- ``detection_boxes`` (B, K, 4) float32 ``[ymin, xmin, ymax, xmax]`` normalised to the
  input (0..1; not clipped, so a box may reach slightly past the image),
- ``detection_scores`` (B, K) float32 objectness · class probability, decreasing,
- ``detection_classes`` (B, K) float32 contiguous class index (``metadata.names``),
- ``num_detections`` (B,) float32: the first ``num_detections[i]`` rows of image i are
  detections, the rest zeros.

K = ``max_detections``. NMS is class-aware (`detector.model.postprocess.portable_nms`, the same
detections as evaluation's ``postprocess.nms``), built from ops the builtin TFLite
interpreter runs (no Flex ops). Without NMS the output is ``raw_grid`` (B, S/32, S/32, A,
5 + C) float32, the network's raw ``tx, ty, tw, th, to`` and class logits (decode it with
`detector.model.postprocess.decode` and the metadata's anchors).

Batch: a TFLite file takes batch 1 (what mobile SDKs expect); a SavedModel or ONNX file
any batch. `detector.inference.runtimes.load_runtime` runs every artifact with one interface.
Beside each artifact, its `detector.inference.metadata.Metadata` as JSON (`metadata_path`).
"""

import os
import shutil
import sys
import tempfile
import types
from collections.abc import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

from detector.inference.metadata import Metadata, metadata_path
from detector.inference.runtimes import load_keras
from detector.model.postprocess import decode, portable_nms
from detector.utils.atomic import atomic_write_bytes
from detector.utils.limits import check_input_size, check_max_det

FORMATS = ("saved_model", "tflite", "onnx")
INPUT_NAME = "images"
RAW_NAME = "raw_grid"
CALIBRATION_IMAGES = 100  # representative images for int8 calibration
ONNX_OPSET = 17
SIGNATURE = "serving_default"
NETWORK = "network"  # name scope of the network in the exported graph


def export(
    checkpoint: str,
    format: str,
    out: str | None = None,
    nms: bool = True,
    half: bool = False,
    int8: bool = False,
    data: str | None = None,
    input_size: int | None = None,
    score_threshold: float = 0.005,
    iou_threshold: float = 0.45,
    max_detections: int = 100,
    force: bool = False,
) -> str:
    """Exports a checkpoint; returns the artifact's path (its metadata JSON beside it).

    Args:
        checkpoint: str. A ``.keras`` inference checkpoint (e.g. ``runs/x/best.keras``).
        format: str. "saved_model", "tflite" or "onnx".
        out: str or None. The artifact's path. Defaults to beside the checkpoint:
            ``best_saved_model/``, ``best_float32.tflite``, ``best_float16.tflite``,
            ``best_int8.tflite``, ``best.onnx`` (``best_raw...`` without NMS).
        nms: bool. Decoding and NMS inside (else the raw grid). Defaults to True.
        half: bool. TFLite float16 weights. Defaults to False.
        int8: bool. TFLite full-integer quantization, calibrated on `data`. Defaults to False.
        data: str or None. Dataset spec whose train split calibrates ``int8``.
        input_size: int or None. Input side S, a multiple of 32. Defaults to the
            checkpoint's.
        score_threshold, iou_threshold, max_detections: the NMS settings baked in.
        force: bool. Replace an existing `out` (never the checkpoint itself; the default
            path beside the checkpoint is always replaced). Defaults to False.
    """
    checkpoint, out = os.fspath(checkpoint), out and os.fspath(out)
    quantization = _check_arguments(checkpoint, format, half, int8, data, input_size)
    if out:
        _check_out(checkpoint, out, format, force)
    _check_nms_settings(score_threshold, iou_threshold, max_detections)
    model = load_float32(checkpoint)
    metadata = Metadata.of_model(
        model,
        nms=nms,
        score_threshold=float(score_threshold),
        iou_threshold=float(iou_threshold),
        max_detections=int(max_detections),
        format=format,
        quantization=quantization,
        source=os.path.abspath(checkpoint),
    )
    metadata.input_size = int(input_size or metadata.input_size)
    path = out or default_path(checkpoint, format, quantization, nms)
    if format == "saved_model":
        write_saved_model(model, metadata, path)
        return path
    if format == "tflite":
        images = calibration_images(data, metadata) if int8 else None
        atomic_write_bytes(path, tflite_bytes(model, metadata, images))
    else:
        atomic_write_bytes(path, onnx_bytes(model, metadata))
    metadata.save(metadata_path(path))
    return path


def load_float32(checkpoint: str) -> keras.Model:
    """The checkpoint's inference model computing in float32 (a checkpoint saved under a
    mixed-precision policy is rebuilt in float32 with the same weights)."""
    from detector.model.network import float32_config

    model = load_keras(checkpoint)
    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    copy = keras.Model.from_config(float32_config(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def _check_arguments(checkpoint, format, half, int8, data, input_size) -> str:
    """Validates the export's arguments; returns the quantization name."""
    if not os.path.isfile(checkpoint) or not checkpoint.endswith(".keras"):
        raise ValueError(f"checkpoint: not a .keras file: {checkpoint}")
    if format not in FORMATS:
        raise ValueError(f"--format: unknown {format!r}; expected one of {list(FORMATS)}")
    if (half or int8) and format != "tflite":
        raise ValueError("--half and --int8 apply to --format tflite only")
    if half and int8:
        raise ValueError("--half and --int8: choose one")
    if int8 and not data:
        raise ValueError("--int8 needs --data SPEC (its train split calibrates the ranges)")
    if input_size is not None:
        check_input_size("--input-size", input_size)
    return "int8" if int8 else "float16" if half else "float32"


def _check_out(checkpoint: str, out: str, format: str, force: bool) -> None:
    """ValueError naming ``--out`` when it is the checkpoint (or its metadata would be),
    or exists and `force` is not given."""
    own = [os.path.realpath(checkpoint)]
    if os.path.realpath(out) in own or os.path.realpath(metadata_path(out)) in own:
        raise ValueError(f"--out: {out} is the checkpoint being exported; give another path")
    if not os.path.lexists(out):
        return
    if not force:
        raise ValueError(f"--out: {out} exists; pass --force to replace it")
    if format != "saved_model" and os.path.isdir(out):
        raise ValueError(f"--out: {out} is a folder; a {format} export is a file")


def _check_nms_settings(score_threshold, iou_threshold, max_detections) -> None:
    if not 0.0 <= score_threshold < 1.0:
        raise ValueError(f"--conf must be in [0, 1), got {score_threshold}")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"--iou must be in (0, 1], got {iou_threshold}")
    check_max_det("--max-det", max_detections)


def default_path(checkpoint: str, format: str, quantization: str, nms: bool = True) -> str:
    """Where an export goes when no ``out`` is given: beside the checkpoint, named after it."""
    stem = os.path.splitext(os.path.abspath(checkpoint))[0] + ("" if nms else "_raw")
    if format == "saved_model":
        return stem + "_saved_model"
    if format == "tflite":
        return f"{stem}_{quantization}.tflite"
    return stem + ".onnx"


def serving_function(model: keras.Model, metadata: Metadata) -> Callable:
    """The exported computation: uint8 images (B, S, S, 3) -> the outputs by name (see the
    module docstring)."""
    settings = {
        "score_threshold": metadata.score_threshold,
        "iou_threshold": metadata.iou_threshold,
        "max_detections": metadata.max_detections,
    }

    def serve(images):
        with tf.name_scope(NETWORK):  # int8 quantization quantizes this scope only
            raw = model(tf.cast(images, tf.float32), training=False)
        if not metadata.nms:
            return {RAW_NAME: raw}
        # anchors made inside the graph: an eager tensor would be captured as an input
        anchors = tf.constant(metadata.anchors, tf.float32)
        boxes, scores, classes, valid = portable_nms(*decode(raw, anchors), **settings)
        return {
            "detection_boxes": tf.gather(boxes, [1, 0, 3, 2], axis=-1),
            "detection_scores": scores,
            "detection_classes": tf.cast(classes, tf.float32),
            "num_detections": tf.cast(valid, tf.float32),
        }

    return serve


def input_spec(metadata: Metadata, batch: int | None) -> tf.TensorSpec:
    """The uint8 (batch, S, S, 3) input of an export."""
    size = metadata.input_size
    return tf.TensorSpec((batch, size, size, 3), tf.uint8, name=INPUT_NAME)


def save_serving(model: keras.Model, metadata: Metadata, path: str, batch: int | None) -> None:
    """Writes the serving function as a SavedModel (signature ``serving_default``)."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = input_spec(metadata, batch)
    archive.add_endpoint(SIGNATURE, serving_function(model, metadata), input_signature=[spec])
    archive.write_out(path, verbose=False)


def write_saved_model(model: keras.Model, metadata: Metadata, path: str) -> None:
    """A SavedModel folder (any batch) with its ``metadata.json``; replaces an earlier
    export at `path` only once the new one is complete."""
    if os.path.exists(path) and not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise ValueError(f"--out: {path} exists and is not a SavedModel folder")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".saved_model-", dir=folder)
    try:
        save_serving(model, metadata, tmp, batch=None)
        metadata.save(metadata_path(tmp))
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tflite_bytes(model: keras.Model, metadata: Metadata, calibration=None) -> bytes:
    """The TFLite flatbuffer (batch 1, builtin ops only; Flex ops fail the conversion).

    ``metadata.quantization``: "float32"; "float16" (float16 weights); "int8" (int8
    network calibrated on `calibration`, uint8 (N, S, S, 3) images; see
    `quantize_network_only`)."""
    with tempfile.TemporaryDirectory() as tmp:
        save_serving(model, metadata, tmp, batch=1)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=[SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if metadata.quantization == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif metadata.quantization == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([image[None]] for image in calibration)
            return quantize_network_only(converter)
        return converter.convert()


def quantize_network_only(converter: tf.lite.TFLiteConverter) -> bytes:
    """Full-integer quantization of the network (the `NETWORK` scope: int8 weights and
    activations, calibrated on the converter's representative dataset), with decoding
    and NMS left in float: they are a few thousand values, 8-bit scores would tie, and
    NMS has no int8 kernel.

    Selective quantization is what TFLite's quantization debugger offers: its options
    name the ops (by output tensor, or by type) that stay float."""
    lite = tf.lite.experimental
    debugger = lite.QuantizationDebugger(
        converter=converter, debug_dataset=converter.representative_dataset
    )
    tensors = tf.lite.Interpreter(model_content=debugger.calibrated_model).get_tensor_details()
    names = [t["name"] for t in tensors if not t["name"].startswith(NETWORK + "/")]
    # TOPK_V2 is quantized whatever its tensor's name: only its type keeps it float.
    debugger.options = lite.QuantizationDebugOptions(
        denylisted_nodes=names, denylisted_ops=["TOPK_V2"]
    )
    return debugger.get_nondebug_quantized_model()


def calibration_images(spec: str, metadata: Metadata, count: int = CALIBRATION_IMAGES):
    """Up to `count` images of the spec's train split, evenly spread, resized as the model
    sees them: uint8 (N, S, S, 3)."""
    from detector.data.augment import resize
    from detector.data.spec import load_dataset

    records = load_dataset(spec, "train").records
    if not len(records):
        raise ValueError(f"--data {spec}: the train split has no images to calibrate int8")
    indices = np.unique(np.linspace(0, len(records) - 1, min(count, len(records))).astype(int))
    images = records.read_images(indices.tolist())
    no_boxes = np.zeros((0, 4), np.float32)
    size, letterbox = metadata.input_size, metadata.letterbox
    return np.stack([resize(images[i], no_boxes, size, letterbox)[0] for i in indices])


def onnx_bytes(model: keras.Model, metadata: Metadata) -> bytes:
    """The ONNX model (any batch) by tf2onnx; needs the ``export`` extra."""
    try:
        import tf2onnx
    except ImportError:
        raise ValueError("--format onnx needs tf2onnx: pip install -e '.[export]'") from None
    spec = input_spec(metadata, None)
    function = tf.function(serving_function(model, metadata), input_signature=[spec])
    proto, _ = tf2onnx.convert.from_function(function, [spec], opset=ONNX_OPSET)
    return proto.SerializeToString()


def tflite_ops(path: str) -> Iterator[str]:
    """The names of a ``.tflite`` file's operators: builtin names (``CONV_2D``), or the
    custom code of a custom op (Flex ops are ``Flex...``)."""
    from tensorflow.lite.python import schema_py_generated as schema

    with open(path, "rb") as f:
        model = schema.Model.GetRootAs(f.read(), 0)
    builtin_names = {
        value: name for name, value in vars(schema.BuiltinOperator).items() if name.isupper()
    }
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            yield code.CustomCode().decode()
        else:
            yield builtin_names[builtin]


class _CallableModule(types.ModuleType):
    """This subpackage, callable: ``detector.export(checkpoint, format, ...)`` is the
    Python API of ``python -m detector.export`` (`export`, its ValueErrors raised as
    `detector.ConfigError` with the same message), while ``detector.export.export``,
    ``python -m detector.export`` and every import of the subpackage stay as they are."""

    def __call__(self, checkpoint: str, format: str, **kwargs) -> str:
        from detector.utils.errors import config_errors

        with config_errors():
            return export(checkpoint, format, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
