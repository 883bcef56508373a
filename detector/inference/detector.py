"""Prediction: a trained detector -> detections in original image pixels.

`Detector` is the Python API (``from detector import Detector``): it loads a ``.keras``
checkpoint or an exported model (`detector.inference.runtimes`), prepares images as evaluation does
(plain resize or letterbox, as the checkpoint records), runs them in batches and maps
every box back to the image's own pixels, as one `Result` per image. `iter_results` feeds
a dataset through a Keras model, a Runtime or a Detector and yields COCO results;
evaluation (`detector.evaluation.coco`) scores what it yields, so `Detector.predict` at the
evaluation settings (conf 0.005, iou 0.45, max_det 100) returns exactly the detections
evaluation scores.

Units: the network input is (S, S) *input pixels*; a Runtime's boxes are xyxy normalised
to it (0..1); a `Result`'s boxes are xyxy in *image pixels* of the original image as
displayed (EXIF orientation applied), continuous coordinates as in COCO.

`detector.data.augment` (the resize) and `detector.data.pipeline` are imported where
used, so that ``import detector`` stays the model code and its registrations.
"""

import functools
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence

import keras
import numpy as np

from detector.data.records import Dataset
from detector.inference.forward import make_predict_fn
from detector.inference.metadata import Metadata
from detector.inference.results import Result, coco_results, draw_boxes
from detector.inference.runtimes import Runtime, keras_runtime, load_keras, load_runtime
from detector.inference.sources import as_inputs, batched
from detector.model.network import head_metadata
from detector.utils.boxes import iou_xyxy, to_image_pixels
from detector.utils.limits import check_batch_size, check_max_det
from detector.utils.limits import check_input_size as check_side

NO_BOXES = np.zeros((0, 4), np.float32)
MAX_CACHED_RUNTIMES = 4  # compiled NMS variants a Detector keeps (one per settings)


def to_image_boxes(
    boxes: np.ndarray, height: int, width: int, size: int, letterbox: bool
) -> np.ndarray:
    """Boxes (N, 4) xyxy normalised to the (size, size) input -> float64 (N, 4) xyxy in
    pixels of the (height, width) image it was made from, clipped to the image."""
    unit = np.clip(boxes, 0.0, 1.0)
    return to_image_pixels(unit * size, height, width, size, letterbox)


def agnostic_nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes (N, 4) xyxy that greedy NMS keeps when all classes are one,
    by decreasing score: a box overlapping a kept higher-scoring one by IoU > `iou` goes."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    overlaps = iou_xyxy(boxes[order], boxes[order])
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(order[i])
            suppressed |= overlaps[i] > iou
    return np.asarray(keep, np.int64)


def split_detections(boxes, scores, classes, valid) -> list[tuple]:
    """Padded NMS outputs (B, K, ...) -> per image (boxes, scores, classes) of its valid rows."""
    return [(boxes[i, :n], scores[i, :n], classes[i, :n]) for i, n in enumerate(valid)]


def check_settings(conf, iou, max_det, classes, num_classes: int) -> None:
    """ValueError naming the prediction setting that is out of range."""
    if not 0.0 <= conf <= 1.0:
        raise ValueError(f"conf: expected a score in [0, 1], got {conf}")
    if not 0.0 <= iou <= 1.0:
        raise ValueError(f"iou: expected an IoU in [0, 1], got {iou}")
    check_max_det("max_det", max_det)
    bad = [c for c in classes or () if not 0 <= c < num_classes or int(c) != c]
    if bad:
        raise ValueError(f"classes: {bad} not class indices 0..{num_classes - 1}")


def filter_detections(detections, conf, iou, max_det, agnostic=False, classes=None) -> tuple:
    """One image's NMS output (boxes, scores, class ids; decreasing score) narrowed to
    score >= `conf` and the `classes` wanted (all if None), re-suppressed across classes
    when `agnostic` (at IoU `iou`), and cut to the `max_det` best."""
    boxes, scores, labels = detections
    keep = scores >= conf
    if classes is not None:
        keep &= np.isin(labels, np.asarray(classes, np.int64))
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    order = agnostic_nms(boxes, scores, iou) if agnostic else np.arange(len(scores))
    order = order[: int(max_det)]
    return boxes[order], scores[order], labels[order]


class Detector:
    """A trained detector: ``Detector.load("runs/x/best.keras").predict("dog.jpg")``.

    Args:
        model: keras.Model (an inference model from `detector.model.network`) or Runtime
            (`detector.inference.runtimes`).
        path: str or None. The file it was loaded from: an export without NMS inside is
            loaded again from it to apply other NMS settings. Defaults to None.
    """

    def __init__(self, model: keras.Model | Runtime, path: str | None = None):
        self.path = path
        self.model = model if isinstance(model, keras.Model) else None
        if self.model is not None:
            self.runtime = None
            self.metadata = Metadata.of_model(self.model)
            self._rebuild = functools.partial(keras_runtime, self.model)
        elif isinstance(model, Runtime):
            self.runtime, self.metadata = model, model.metadata
            reloadable = path is not None and not model.metadata.nms
            self._rebuild = functools.partial(load_runtime, path) if reloadable else None
        else:
            raise TypeError(f"Detector: expected a keras.Model or a Runtime, got {type(model)}")
        self._runtimes: dict[tuple, Runtime] = {}
        self._warned: set[str] = set()

    @classmethod
    def load(cls, path: str | os.PathLike, **settings) -> "Detector":
        """Loads a ``.keras`` checkpoint, an exported SavedModel folder, a ``.tflite`` or
        an ``.onnx`` file (its metadata beside it); see `detector.inference.runtimes.load_runtime`,
        which `settings` go to for an export. A ``.keras`` model is kept whole, so that
        `predict`'s conf, iou and max_det run in its compiled NMS."""
        path = os.fspath(path)
        if not path.endswith(".keras"):
            return cls(load_runtime(path, **settings), path)
        if not os.path.isfile(path):
            raise ValueError(f"model not found: {path}")
        return cls(load_keras(path), path)

    @property
    def names(self) -> list[str]:
        """Class names, index = class id."""
        return list(self.metadata.names)

    def predict(
        self,
        sources,
        conf: float = 0.25,
        iou: float = 0.45,
        max_det: int = 100,
        agnostic: bool = False,
        classes: Sequence[int] | None = None,
        input_size: int | None = None,
        *,
        bgr: bool = False,
        batch_size: int = 16,
    ) -> list[Result]:
        """Detects objects; returns one `Result` per image, in order.

        Images are resized (or letterboxed, as the checkpoint records) like evaluation
        does, run `batch_size` at a time, and every box is mapped back to the original
        image's pixels.

        Args:
            sources: an image file path, a numpy image, or a list of either, or a batch
                array (B, H, W, 3). Numpy images are uint8 (H, W, 3) **RGB** (or (H, W)
                grayscale); images from OpenCV (``cv2.imread``, video frames) are BGR:
                pass ``bgr=True``. Files are read with their EXIF orientation applied;
                an unreadable file is a ValueError naming it.
            conf: float. Lowest score kept. Defaults to 0.25.
            iou: float. NMS IoU: a box overlapping a better one of its class (of any
                class with `agnostic`) by more goes. Defaults to 0.45.
            max_det: int. Detections kept per image, at most
                `detector.utils.limits.MAX_DETECTIONS`. Defaults to 100.
            agnostic: bool. Also suppress overlapping boxes of different classes.
                Defaults to False.
            classes: class ids to keep, or None for all. Defaults to None.
            input_size: int or None. Network input side (a multiple of 32; an export
                takes only its own). Defaults to the checkpoint's.
            bgr: bool. Numpy images are BGR. Defaults to False (RGB).
            batch_size: int. Images per forward pass, at most
                `detector.utils.limits.MAX_BATCH_SIZE` and within the memory available
                (`detector.utils.limits.check_batch_size`). Defaults to 16.
        """
        size = self.check_input_size(input_size)
        check_settings(conf, iou, max_det, classes, len(self.metadata.names))
        batch_size = check_batch_size("batch_size", batch_size, size)
        settings = {"conf": conf, "iou": iou, "max_det": max_det}
        settings.update(agnostic=agnostic, classes=classes)
        results = []
        for batch in batched(as_inputs(sources, bgr), batch_size):
            results += self._predict_batch(batch, size, settings)
        return results

    def forward(
        self, images, conf=0.25, iou=0.45, max_det=100, agnostic=False, classes=None
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The detections of a batch of network inputs.

        Args:
            images: (B, S, S, 3) input pixels 0..255, float32 or uint8, made by
                `detector.data.augment.resize` (with the checkpoint's letterbox).
            conf, iou, max_det, agnostic, classes: see `predict`.

        Returns:
            Per image: boxes float32 (N, 4) xyxy normalised to the input, scores (N,)
            decreasing, class ids int32 (N,).
        """
        outputs = self._runtime(conf, iou, max_det)(images)
        return [
            filter_detections(d, conf, iou, max_det, agnostic, classes)
            for d in split_detections(*outputs)
        ]

    def check_input_size(self, input_size: int | None) -> int:
        """The network input side to use: `input_size` or the checkpoint's; ValueError if
        it is not a multiple of 32 up to `detector.utils.limits.MAX_INPUT_SIZE` or, for an
        export, not its own."""
        size = check_side("input_size", input_size or self.metadata.input_size)
        if self.model is None and size != self.metadata.input_size:
            raise ValueError(
                f"input_size: this {self.metadata.format} model takes "
                f"{self.metadata.input_size} only, got {size}"
            )
        return size

    def _predict_batch(self, batch: list, size: int, settings: dict) -> list[Result]:
        from detector.data.augment import resize  # see the module docstring

        start = time.perf_counter()
        letterbox = self.metadata.letterbox
        inputs = np.stack([resize(image, NO_BOXES, size, letterbox)[0] for image, _ in batch])
        detections = self.forward(inputs, **settings)
        results = []
        for (image, path), (boxes, scores, labels) in zip(batch, detections, strict=True):
            if len(labels) and int(labels.max()) >= len(self.metadata.names):
                raise ValueError(
                    f"{self.path or 'the model'}: returned class {int(labels.max())}, its "
                    f"metadata names {len(self.metadata.names)} classes; export it again"
                )
            height, width = image.shape[:2]
            results.append(
                Result(
                    boxes=to_image_boxes(boxes, height, width, size, letterbox),
                    scores=scores,
                    class_ids=labels,
                    names=[self.metadata.names[c] for c in labels],
                    path=path,
                    orig_shape=(height, width),
                    category_ids=list(self.metadata.category_ids),
                    image=None if path else image,
                )
            )
        elapsed_ms = 1000.0 * (time.perf_counter() - start) / len(batch)
        for result in results:
            result.time_ms = elapsed_ms
        return results

    def _runtime(self, conf: float, iou: float, max_det: int) -> Runtime:
        """The Runtime applying these NMS settings: a compiled one per settings for a
        Keras model (or an export without NMS inside), else the fixed one."""
        if self._rebuild is None:
            self._check_fixed(conf, iou, max_det)
            return self.runtime
        key = (float(conf), float(iou), int(max_det))
        if key not in self._runtimes:
            if len(self._runtimes) >= MAX_CACHED_RUNTIMES:
                self._runtimes.clear()
            self._runtimes[key] = self._rebuild(
                score_threshold=key[0], iou_threshold=key[1], max_detections=key[2]
            )
        return self._runtimes[key]

    def _check_fixed(self, conf: float, iou: float, max_det: int) -> None:
        """Warns (once per message) where settings ask what a fixed NMS cannot give."""
        m = self.metadata
        model = f"the {m.format} model {self.path or ''}".rstrip()
        messages = []
        if iou != m.iou_threshold:
            messages.append(f"iou {iou} ignored: {model} has NMS at IoU {m.iou_threshold} inside")
        if conf < m.score_threshold:
            messages.append(f"conf {conf}: {model} keeps no score below {m.score_threshold}")
        if max_det > m.max_detections:
            messages.append(f"max_det {max_det}: {model} returns {m.max_detections} at most")
        for message in messages:
            if message not in self._warned:
                self._warned.add(message)
                warnings.warn(message, UserWarning, stacklevel=6)  # the caller of predict


def iter_results(
    model,
    dataset: Dataset,
    input_size: int,
    batch_size: int = 16,
    score_threshold: float = 0.005,
    nms_iou: float = 0.45,
    max_detections: int = 100,
    predict_fn: Callable | None = None,
) -> Iterator[tuple[list[dict], list[int]]]:
    """Yields (COCO results, image ids) batch by batch, in record order.

    Images are fed plainly resized or letterboxed as the model was trained (its
    ``letterbox``), and boxes mapped back by the inverse to original image pixels. A
    result is ``{"image_id", "category_id" (the dataset's own id), "bbox" (xywh, image
    pixels), "score"}``.

    Args:
        model: keras.Model (an inference model), Runtime or Detector.
        input_size: int. Side of the network input, pixels (a multiple of 32; an export
            takes only its own).
        batch_size: int. Images per forward pass. Defaults to 16.
        predict_fn: a `make_predict_fn` result of the Keras `model` to reuse (its
            thresholds then apply). Defaults to None: one is made from the thresholds.
        score_threshold, nms_iou, max_detections: see `make_predict_fn`.
    """
    from detector.data.pipeline import make_eval_dataset  # see the module docstring

    settings = (score_threshold, nms_iou, max_detections)
    detect, letterbox = _dataset_detector(model, input_size, settings, predict_fn)
    for images, indices in make_eval_dataset(dataset.records, input_size, batch_size, letterbox):
        results, image_ids = [], []
        for (boxes, scores, labels), index in zip(detect(images), indices.numpy(), strict=True):
            record = dataset.records[index]
            image_ids.append(int(record.image_id))
            pixels = to_image_boxes(boxes, record.height, record.width, input_size, letterbox)
            results += coco_results(pixels, scores, labels, record.image_id, dataset.category_ids)
        yield results, image_ids


def _dataset_detector(model, input_size: int, settings: tuple, predict_fn) -> tuple:
    """(detect: images tensor (B, S, S, 3) -> per-image (boxes, scores, class ids), the
    model's letterbox) for a Keras model, a Runtime or a Detector."""
    if isinstance(model, keras.Model):
        predict = predict_fn or make_predict_fn(model, *settings)

        def detect(images):
            return split_detections(*(t.numpy() for t in predict(images)))

        return detect, head_metadata(model).letterbox
    detector = model if isinstance(model, Detector) else Detector(model)
    detector.check_input_size(input_size)
    conf, iou, max_det = settings
    return (
        lambda images: detector.forward(np.asarray(images), conf, iou, max_det),
        detector.metadata.letterbox,
    )


def draw_predictions(
    model: keras.Model, dataset: Dataset, predict_fn: Callable, count: int, min_score: float = 0.3
) -> np.ndarray:
    """The first `count` images of `dataset` at the model's input size, with the
    detections scoring at least `min_score` drawn: uint8 (count, S, S, 3) RGB."""
    from detector.data.pipeline import make_eval_dataset  # see the module docstring

    head = head_metadata(model)
    size = head.input_size
    ds = make_eval_dataset(dataset.records, size, count, head.letterbox)
    images, _ = next(iter(ds.take(1)))
    detections = split_detections(*(t.numpy() for t in predict_fn(images)))
    drawn = []
    for image, (boxes, scores, labels) in zip(images.numpy(), detections, strict=True):
        keep = scores >= min_score
        text = [
            f"{head.class_names[c]} {s:.2f}"
            for c, s in zip(labels[keep], scores[keep], strict=True)
        ]
        pixels = np.clip(boxes[keep], 0.0, 1.0) * size
        drawn.append(draw_boxes(image.astype(np.uint8), pixels, text, labels[keep]))
    return np.stack(drawn)
