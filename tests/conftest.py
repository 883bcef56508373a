from pathlib import Path

import pytest

from detector.data.spec import load_dataset


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory) -> Path:
    """A small synthetic dataset (24 train / 8 val images of 128 px) and its spec."""
    root = tmp_path_factory.mktemp("tiny_data")
    spec = root / "spec.yaml"
    spec.write_text(
        "format: synthetic\n"
        "synthetic: {seed: 3, train_images: 24, val_images: 8, size: 128}\n"
        "train: {images: images/train, annotations: annotations/train.json}\n"
        "val: {images: images/val, annotations: annotations/val.json}\n"
    )
    load_dataset(str(spec), "train")
    load_dataset(str(spec), "val")
    return spec
