"""One interface over every form a trained detector takes: ``.keras``, an exported
SavedModel folder, ``.tflite`` and ``.onnx``.

A `Runtime` runs a batch of network-input images and returns the NMS outputs in one
layout, whatever executes them; `detector.inference.detector.Detector` and evaluation build on it.

Units: ``forward`` takes images (B, S, S, 3) of input pixels 0..255 (already resized or
letterboxed to S, as `detector.data.augment.resize` makes them; float32 or uint8) and
returns ``(boxes, scores, classes, valid)``: boxes (B, K, 4) float32 xyxy normalised to
the network input (0..1), scores (B, K) float32, classes (B, K) int32 contiguous class
indices, valid (B,) int32 — the first ``valid[i]`` rows of image i are detections, in
decreasing score.
"""

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from detector.inference.metadata import Metadata, Network, metadata_path


@dataclass
class Runtime:
    """A loaded detector: `forward` (see the module docstring) and its `metadata`.

    Attributes:
        forward: callable(images) -> (boxes, scores, classes, valid) numpy arrays.
        metadata: Metadata.
        batch_size: int or None. A fixed batch the artifact needs (None = any).
    """

    forward: Callable
    metadata: Metadata
    batch_size: int | None = None

    def __call__(self, images) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`forward` over any number of images (split into the fixed batch if there is)."""
        size = self.batch_size
        if size is None or len(images) == size:
            return tuple(np.asarray(t) for t in self.forward(images))
        images, parts = np.asarray(images), []
        for start in range(0, len(images), size):
            chunk = images[start : start + size]
            n = len(chunk)
            if n < size:  # the last chunk is padded to the fixed batch, the padding dropped
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - n, axis=0)])
            parts.append([np.asarray(t)[:n] for t in self.forward(chunk)])
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))


def keras_runtime(model, score_threshold=0.005, iou_threshold=0.45, max_detections=100):
    """A Runtime over a Keras inference model (compiled forward, decode, NMS)."""
    from detector.inference.forward import make_predict_fn

    predict = make_predict_fn(model, score_threshold, iou_threshold, max_detections)
    settings = {
        "score_threshold": score_threshold,
        "iou_threshold": iou_threshold,
        "max_detections": max_detections,
    }

    def forward(images):
        import tensorflow as tf

        return [t.numpy() for t in predict(tf.cast(images, tf.float32))]

    return Runtime(forward, Metadata.of_model(model, **settings))


def load_keras(path: str):
    """``keras.models.load_model(path, safe_mode=True)`` with the custom layers
    registered; a file that is not a loadable checkpoint is a ValueError naming it."""
    import zipfile

    import keras

    import detector.model.layers  # noqa: F401  (registers the custom layers)

    if not zipfile.is_zipfile(path):  # Keras would say "file not found"
        raise ValueError(f"{path}: not a loadable .keras checkpoint (not a zip archive)")
    try:
        return keras.models.load_model(path, safe_mode=True)
    except (OSError, zipfile.BadZipFile, KeyError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path}: not a loadable .keras checkpoint ({type(error).__name__})"
        ) from None


def load_runtime(path: str, **settings) -> Runtime:
    """The Runtime of a ``.keras`` checkpoint, an exported SavedModel folder, a
    ``.tflite`` or an ``.onnx`` file (their metadata beside them).

    ``settings`` (score_threshold, iou_threshold, max_detections) apply to ``.keras`` and
    to exports without NMS inside. An export with NMS inside honours a higher score
    threshold and fewer detections (filtering its output gives exactly what NMS with
    them would), and rejects any other change with a ValueError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"model not found: {path}")
    if path.endswith(".keras"):
        return keras_runtime(load_keras(path), **settings)
    loaders = {".tflite": _tflite_call, ".onnx": _onnx_call}
    suffix = os.path.splitext(path)[1]
    if os.path.isdir(path):
        loader = _saved_model_call
    elif suffix in loaders:
        loader = loaders[suffix]
    else:
        raise ValueError(f"{path}: not a .keras checkpoint, SavedModel folder, .tflite or .onnx")
    metadata = Metadata.load(metadata_path(path))
    call, batch_size, network = loader(path)
    metadata.check_network(network, metadata_path(path))
    try:
        return exported_runtime(call, metadata, batch_size, **settings)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def exported_runtime(
    call: Callable, metadata: Metadata, batch_size: int | None = None, **settings
) -> Runtime:
    """A Runtime over an export's ``call``: uint8 images (B, S, S, 3) -> its outputs by
    name (``detection_*``/``num_detections`` with NMS inside, else ``raw_grid``), numpy.

    Converts the detection layout back to the Runtime's (xyxy, int classes and counts);
    decodes and runs NMS itself (`detector.model.postprocess`) on a raw grid."""
    if metadata.nms:
        metadata = _filtered_metadata(metadata, settings)
        keep = metadata.score_threshold, metadata.max_detections

        def forward(images):
            return _filter(*from_detection_layout(call(as_uint8(images))), *keep)

        return Runtime(forward, metadata, batch_size)
    postprocess = _make_postprocess_fn(metadata.anchors, **settings)
    metadata = replace(metadata, **_resolved_settings(metadata, settings))

    def forward(images):
        return [t.numpy() for t in postprocess(call(as_uint8(images))["raw_grid"])]

    return Runtime(forward, metadata, batch_size)


def as_uint8(images) -> np.ndarray:
    """Input pixels 0..255 (float or uint8) as the uint8 batch exports take."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def from_detection_layout(outputs: dict) -> tuple[np.ndarray, ...]:
    """An export's detection outputs (boxes ymin, xmin, ymax, xmax; float classes and
    counts) in the Runtime layout: boxes xyxy float32, scores float32, classes int32,
    valid int32."""
    boxes = np.asarray(outputs["detection_boxes"], np.float32)[..., [1, 0, 3, 2]]
    scores = np.asarray(outputs["detection_scores"], np.float32)
    classes = np.rint(outputs["detection_classes"]).astype(np.int32)
    valid = np.rint(outputs["num_detections"]).astype(np.int32).reshape(-1)
    return boxes, scores, classes, valid


def _resolved_settings(metadata: Metadata, settings: dict) -> dict:
    names = ("score_threshold", "iou_threshold", "max_detections")
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise ValueError(f"load_runtime: unknown settings {unknown}; expected some of {names}")
    return {name: settings.get(name, getattr(metadata, name)) for name in names}


def _filtered_metadata(metadata: Metadata, settings: dict) -> Metadata:
    """The metadata of an export with NMS inside, read with `settings` (see load_runtime)."""
    wanted = _resolved_settings(metadata, settings)
    if (
        abs(wanted["iou_threshold"] - metadata.iou_threshold) > 1e-9
        or wanted["score_threshold"] < metadata.score_threshold
        or wanted["max_detections"] > metadata.max_detections
    ):
        raise ValueError(
            f"the export has NMS inside with iou_threshold {metadata.iou_threshold}, "
            f"score_threshold {metadata.score_threshold} and max_detections "
            f"{metadata.max_detections}: it cannot give {wanted} (export it again with "
            "these settings, or with --no-nms)"
        )
    return replace(metadata, **wanted)


def _filter(boxes, scores, classes, valid, score_threshold, max_detections):
    """Drops detections scoring at most `score_threshold` and all past `max_detections`
    (rows stay in decreasing score, the rest zero-padded)."""
    keep = (scores > score_threshold) & (np.arange(scores.shape[1]) < valid[:, None])
    keep[:, max_detections:] = False
    return (
        (boxes * keep[..., None])[:, :max_detections],
        (scores * keep)[:, :max_detections],
        (classes * keep)[:, :max_detections],
        keep.sum(axis=1).astype(np.int32),
    )


def _make_postprocess_fn(anchors, score_threshold=0.005, iou_threshold=0.45, max_detections=100):
    """Compiled decode + NMS of a raw grid (B, S, S, A, 5 + C) -> the Runtime layout."""
    import tensorflow as tf

    from detector.model.postprocess import decode, nms

    anchors = tf.constant(anchors, tf.float32)

    @tf.function(reduce_retracing=True)
    def postprocess(raw):
        boxes, scores = decode(raw, anchors)
        return nms(boxes, scores, score_threshold, iou_threshold, max_detections)

    return postprocess


def _saved_model_call(path: str) -> tuple[Callable, int | None, Network]:
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    shape = loaded.signatures["serving_default"].structured_input_signature[1]["images"].shape
    kernels = [v for v in loaded.variables if v.shape.rank == 4]  # the last is the head's

    def call(images):  # keeps `loaded` alive: its signature needs its variables
        outputs = loaded.signatures["serving_default"](images=tf.constant(images))
        return {name: t.numpy() for name, t in outputs.items()}

    per_cell = int(kernels[-1].shape[-1]) if kernels else None
    return call, shape[0], Network(shape[1], per_cell)


def _tflite_call(path: str) -> tuple[Callable, int | None, Network]:
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=path, num_threads=os.cpu_count())
    runner = interpreter.get_signature_runner("serving_default")
    shape = runner.get_input_details()["images"]["shape_signature"]
    batch = int(shape[0])
    heads = [  # the head's reshape to (B, S/32, S/32, anchors, 5 + classes)
        t["shape"]
        for t in interpreter.get_tensor_details()
        if "yolo_head" in t["name"] and len(t["shape"]) == 5
    ]

    def call(images):
        return runner(images=images)

    per_cell = int(heads[0][3] * heads[0][4]) if heads else None
    return call, (batch if batch > 0 else None), Network(int(shape[1]), per_cell)


def _onnx_call(path: str) -> tuple[Callable, int | None, Network]:
    try:
        import onnxruntime
    except ImportError:
        raise ValueError(
            f"{path}: running ONNX needs onnxruntime: pip install -e '.[export]'"
        ) from None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    shape = session.get_inputs()[0].shape
    batch = shape[0]

    def call(images):
        return dict(zip(names, session.run(names, {"images": images}), strict=True))

    size = shape[1] if isinstance(shape[1], int) else None
    network = Network(size, _onnx_per_cell(path))
    return call, (batch if isinstance(batch, int) and batch > 0 else None), network


def _onnx_per_cell(path: str) -> int | None:
    """The output channels of an ONNX model's last convolution (the head's), or None
    without the ``onnx`` package (tf2onnx's dependency) or such a convolution."""
    try:
        import onnx
    except ImportError:
        return None
    graph = onnx.load(path).graph
    convs = [node for node in graph.node if node.op_type == "Conv"]
    weights = {init.name: list(init.dims) for init in graph.initializer}
    shape = weights.get(convs[-1].input[1]) if convs and len(convs[-1].input) > 1 else None
    return int(shape[0]) if shape else None
