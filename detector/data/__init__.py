"""Datasets: readers into one record type, the synthetic dataset, augmentation, tf.data."""

from typing import Any

from detector.data.records import Dataset, Record, RecordList, Records

__all__ = ["Dataset", "Record", "RecordList", "Records", "load_dataset"]


def __getattr__(name: str) -> Any:
    """Import `load_dataset` on first use: importing `spec` eagerly here would import
    `synthetic` before `python -m detector.data.synthetic` runs it (a runpy warning)."""
    if name == "load_dataset":
        from detector.data.spec import load_dataset

        return load_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
