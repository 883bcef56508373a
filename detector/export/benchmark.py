"""One table comparing a checkpoint's exports: file size, COCO AP and latency, measured in
one process on the same images."""

import importlib.util
import os
import statistics
import tempfile
import time

import numpy as np

from detector.export import export
from detector.inference.runtimes import Runtime, load_runtime

# name -> export keyword arguments (None: the .keras checkpoint itself)
VARIANTS = {
    "keras": None,
    "saved_model": {"format": "saved_model"},
    "tflite": {"format": "tflite"},
    "tflite_float16": {"format": "tflite", "half": True},
    "tflite_int8": {"format": "tflite", "int8": True},
    "onnx": {"format": "onnx"},
}
EXTENSIONS = {"saved_model": "", "tflite": ".tflite", "onnx": ".onnx"}
BLOCK = 5  # consecutive timed runs of one runtime (see _latencies)


def available_formats() -> tuple[str, ...]:
    """The `VARIANTS` this install can export: ONNX needs the ``export`` extra."""
    has_onnx = all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnxruntime"))
    return tuple(name for name in VARIANTS if has_onnx or name != "onnx")


def benchmark(
    checkpoint: str,
    data: str,
    formats: tuple[str, ...] | None = None,
    split: str = "val",
    repeats: int = 20,
    work_dir: str | None = None,
) -> list[dict]:
    """Exports the checkpoint in each format, scores each export on the split and times
    its batch-1 forward (decoding and NMS included, the resize not).

    Args:
        checkpoint: str. A ``.keras`` checkpoint.
        data: str. Dataset spec: `split` is scored, the train split calibrates int8.
        formats: names of `VARIANTS`. Defaults to `available_formats()`.
        split: str. Defaults to "val".
        repeats: int. Timed batch-1 runs per format (at least; see `_latencies`), median
            reported.
        work_dir: str or None. Where the exports go. Defaults to a temporary folder.

    Returns:
        One row per format: {"format", "size_mb", "AP", "AP50", "ms"}.
    """
    formats = formats or available_formats()
    unknown = [name for name in formats if name not in VARIANTS]
    if unknown:
        raise ValueError(f"--formats: unknown {unknown}; expected some of {list(VARIANTS)}")
    if repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {repeats}")
    from detector.data.spec import load_dataset

    dataset = load_dataset(data, split)
    if not len(dataset.records):
        raise ValueError(f"--data {data}: the {split} split has no images")
    with tempfile.TemporaryDirectory() as tmp:
        rows, runtimes = [], []
        for name in formats:
            path = _artifact(checkpoint, name, data, work_dir or tmp)
            runtimes.append(load_runtime(path))
            rows.append({"format": name, "size_mb": _size(path) / 2**20})
            rows[-1] |= _accuracy(runtimes[-1], dataset)
        for row, ms in zip(rows, _latencies(runtimes, dataset, repeats), strict=True):
            row["ms"] = ms
    return rows


def _artifact(checkpoint: str, name: str, data: str, folder: str) -> str:
    settings = VARIANTS[name]
    if settings is None:
        return checkpoint
    out = os.path.join(folder, name + EXTENSIONS[settings["format"]])
    calibration = data if settings.get("int8") else None  # a --work-dir's own files: replaced
    return export(checkpoint, out=out, data=calibration, force=True, **settings)


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def _accuracy(runtime: Runtime, dataset) -> dict:
    from detector.evaluation.coco import evaluate_model

    metrics, _ = evaluate_model(runtime, dataset, runtime.metadata.input_size)
    return {"AP": metrics["AP"], "AP50": metrics["AP50"]}


def _latencies(runtimes: list[Runtime], dataset, repeats: int) -> list[float]:
    """Median milliseconds of one batch-1 forward of each runtime, on the split's first
    image. The runtimes take turns, `BLOCK` timed runs each after an untimed one (its
    threads awake, its weights in cache), until each has `repeats`: a change in the
    machine's load then affects them alike."""
    from detector.data.augment import resize

    image = dataset.records.read_images([0])[0]
    inputs = [
        resize(image, np.zeros((0, 4)), r.metadata.input_size, r.metadata.letterbox)[0][None]
        for r in runtimes
    ]
    times = [[] for _ in runtimes]
    while len(times[0]) < repeats:
        for runtime, x, spent in zip(runtimes, inputs, times, strict=True):
            runtime(x)
            for _ in range(BLOCK):
                start = time.perf_counter()
                runtime(x)
                spent.append(time.perf_counter() - start)
    return [1000 * statistics.median(spent) for spent in times]


def format_table(rows: list[dict]) -> str:
    """The benchmark rows as a Markdown table."""
    lines = ["| format | size (MB) | AP | AP50 | ms/image (batch 1) |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['format']} | {r['size_mb']:.2f} | {r['AP']:.4f} | {r['AP50']:.4f} | {r['ms']:.2f} |"
        for r in rows
    ]
    return "\n".join(lines)
