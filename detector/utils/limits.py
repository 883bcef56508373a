"""Upper bounds on the numbers a user gives prediction, evaluation and export, shared by the
command lines (``predict.py``, ``evaluate.py``, ``python -m detector.export``) and the
Python API (`detector.inference.detector.Detector`, `detector.export.export`).

Without them a typo allocates before anything can refuse it: ``--max-det 1000000000``
pads every image's detections to 10^9 rows, ``--input-size 100000`` asks OpenCV for a
30 GB image, ``--batch-size 1000000000`` stacks that many inputs. Each check is a
ValueError naming the flag (or argument) and the bound:

- `MAX_DETECTIONS` detections per image (COCO scores 100, Ultralytics keeps 300);
- `MAX_INPUT_SIZE` pixels for the side of the network input (a 128 x 128 grid);
- `MAX_BATCH_SIZE` images per forward pass, and a batch's inputs and first activations
  (`BYTES_PER_INPUT_PIXEL` per input pixel) within half the memory available now.
"""

import os

MAX_DETECTIONS = 10_000
MAX_INPUT_SIZE = 4096
MAX_BATCH_SIZE = 1024
# Per input pixel of one batch: the float32 RGB input (12 B), its resized copy and the
# first convolutions' float32 outputs (32 channels at full size in darknet19: 128 B).
BYTES_PER_INPUT_PIXEL = 160
STRIDE = 32  # the network's input side is a multiple of it (detector.model.grid.STRIDE)


def check_max_det(name: str, value) -> int:
    """`value` as an int in 1..`MAX_DETECTIONS`, else ValueError naming `name`."""
    if isinstance(value, bool) or int(value) != value or not 1 <= value <= MAX_DETECTIONS:
        raise ValueError(f"{name}: expected an integer in 1..{MAX_DETECTIONS}, got {value}")
    return int(value)


def check_input_size(name: str, value) -> int:
    """`value` as a positive multiple of 32 up to `MAX_INPUT_SIZE`, else ValueError."""
    if isinstance(value, bool) or int(value) != value or value <= 0 or value % STRIDE:
        raise ValueError(f"{name}: expected a multiple of {STRIDE}, got {value}")
    if value > MAX_INPUT_SIZE:
        raise ValueError(f"{name}: {value} px is over the maximum {MAX_INPUT_SIZE}")
    return int(value)


def available_bytes() -> int | None:
    """Memory available to a new allocation now (Linux ``MemAvailable``), else the
    physical memory, else None when the system says neither."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_batch_size(name: str, value, input_size: int, available: int | None = None) -> int:
    """`value` as an int in 1..`MAX_BATCH_SIZE` whose batch of `input_size` inputs fits
    in half of `available` bytes (default: `available_bytes()`), else ValueError naming
    `name`, the need and what is available."""
    if isinstance(value, bool) or int(value) != value or not 1 <= value <= MAX_BATCH_SIZE:
        raise ValueError(f"{name}: expected an integer in 1..{MAX_BATCH_SIZE}, got {value}")
    available = available_bytes() if available is None else available
    need = int(value) * int(input_size) ** 2 * BYTES_PER_INPUT_PIXEL
    if available is not None and need > available // 2:
        raise ValueError(
            f"{name}: {value} images of {input_size} px need about {need / 2**30:.1f} GB, "
            f"over half the {available / 2**30:.1f} GB of memory available; "
            "use a smaller batch or input size"
        )
    return int(value)
