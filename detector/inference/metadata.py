"""What using an exported detector needs beside its weights (`Metadata`), saved as JSON
beside the artifact (`metadata_path`), and checked against the network it describes when
loaded (`Network`: what the artifact itself says)."""

import json
import os
from dataclasses import asdict, dataclass, field

METADATA_VERSION = 1


@dataclass
class Metadata:
    """What using a detector needs beside its weights; saved as JSON beside an export.

    Attributes:
        names: list of str. Class names, index = contiguous class index.
        category_ids: list of int. The dataset's own id of each class (COCO results).
        input_size: int. Side of the square network input, pixels.
        letterbox: bool. Images are letterboxed (else plainly resized) to the input.
        anchors: list of [w, h]. In grid cells.
        nms: bool. Decoding and NMS are inside the artifact (else it returns the raw grid).
        score_threshold, iou_threshold: float. NMS settings baked into an artifact with
            NMS inside (a lower score can be filtered later, not a different IoU).
        max_detections: int. Detections per image an artifact with NMS returns.
        format: str. "keras", "saved_model", "tflite" or "onnx".
        quantization: str. "float32", "float16" or "int8".
        source: str. The checkpoint it was exported from.
    """

    names: list
    category_ids: list
    input_size: int
    letterbox: bool
    anchors: list
    nms: bool = True
    score_threshold: float = 0.005
    iou_threshold: float = 0.45
    max_detections: int = 100
    format: str = "keras"
    quantization: str = "float32"
    source: str = ""
    version: int = METADATA_VERSION
    extra: dict = field(default_factory=dict)

    @classmethod
    def of_model(cls, model, **settings) -> "Metadata":
        """The metadata a Keras inference model carries in its ``yolo_head``."""
        head = model.get_layer("yolo_head")
        return cls(
            names=list(head.class_names),
            category_ids=list(head.category_ids),
            input_size=int(head.input_size),
            letterbox=bool(head.letterbox),
            anchors=[list(a) for a in head.anchors],
            **settings,
        )

    def save(self, path: str) -> None:
        """Writes the metadata as JSON (atomically)."""
        from detector.utils.atomic import atomic_write_json

        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str) -> "Metadata":
        """Reads a metadata JSON; a missing or malformed file, or a field of the wrong
        type, is a ValueError naming the file (and the field), never quoting it."""
        if not os.path.isfile(path):
            raise ValueError(f"no metadata beside the exported model: {path} not found")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            metadata = cls(**data)
        except (ValueError, TypeError, RecursionError) as error:
            what = type(error).__name__
            raise ValueError(f"{path}: not a detector metadata file ({what})") from None
        problem = metadata.problem()
        if problem:
            raise ValueError(f"{path}: {problem}")
        return metadata

    def problem(self) -> str | None:
        """What is wrong with the fields' types or ranges (the first thing), or None."""
        from detector.utils.limits import MAX_DETECTIONS, MAX_INPUT_SIZE

        checks = [  # in order: a later check may rely on an earlier one
            ("names", lambda: _list_of(self.names, str), "a list of class names"),
            ("category_ids", lambda: _list_of(self.category_ids, int), "a list of integers"),
            ("category_ids", lambda: len(self.category_ids) == len(self.names), "one per name"),
            ("input_size", lambda: _within(self.input_size, 1, MAX_INPUT_SIZE), "pixels"),
            ("anchors", lambda: _list_of(self.anchors, list), "a list of [w, h]"),
            (
                "anchors",
                lambda: all(len(a) == 2 and _list_of(a, float) for a in self.anchors),
                "a list of [w, h]",
            ),
            ("max_detections", lambda: _within(self.max_detections, 1, MAX_DETECTIONS), "1.."),
            ("score_threshold", lambda: _within(self.score_threshold, 0, 1, float), "in [0, 1]"),
            ("iou_threshold", lambda: _within(self.iou_threshold, 0, 1, float), "in [0, 1]"),
        ]
        bounds = {"input_size": f" in 1..{MAX_INPUT_SIZE}", "max_detections": f"{MAX_DETECTIONS}"}
        for key, ok, expected in checks:
            if not ok():
                return f"{key}: expected {expected}{bounds.get(key, '')}"
        return None

    def check_network(self, network: "Network", where: str) -> None:
        """ValueError naming `where` (the metadata file) when it does not describe the
        network beside it: another input size, or names and anchors that do not make the
        network's outputs per grid cell (anchors x (5 + classes)). Counts, not names."""
        wrong = []
        if network.input_size is not None and network.input_size != self.input_size:
            wrong.append(f"input_size {self.input_size} (the model takes {network.input_size})")
        per_cell = len(self.anchors) * (5 + len(self.names))
        if network.per_cell is not None and network.per_cell != per_cell:
            wrong.append(
                f"{len(self.names)} class names with {len(self.anchors)} anchors, "
                f"{per_cell} outputs per grid cell (the network has {network.per_cell})"
            )
        if wrong:
            raise ValueError(
                f"{where} does not describe the model beside it: {'; '.join(wrong)}; "
                "export the checkpoint again"
            )


@dataclass
class Network:
    """What an exported artifact itself says about its network (None: it does not say).

    Attributes:
        input_size: int or None. Side of its input, pixels.
        per_cell: int or None. Raw outputs per grid cell: anchors x (5 + classes).
    """

    input_size: int | None = None
    per_cell: int | None = None


def _list_of(value, kind) -> bool:
    """A non-empty list of `kind` (an int is a float too; a bool is no number)."""
    kind = int | float if kind is float else kind
    return (
        isinstance(value, list)
        and value != []
        and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
    )


def _within(value, low, high, kind=int) -> bool:
    """A `kind` number (an int is a float too; never a bool) in [low, high]."""
    kinds = int | float if kind is float else int
    return isinstance(value, kinds) and not isinstance(value, bool) and low <= value <= high


def metadata_path(artifact: str) -> str:
    """Where an artifact's metadata lives: ``DIR/metadata.json`` for a SavedModel folder,
    ``FILE.metadata.json`` beside a file."""
    if os.path.isdir(artifact):
        return os.path.join(artifact, "metadata.json")
    return artifact + ".metadata.json"
