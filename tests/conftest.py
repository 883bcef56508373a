from pathlib import Path

import pytest

from detector.data.spec import load_dataset
from tests.helpers.data import synthetic_spec


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory) -> Path:
    """A small synthetic dataset (24 train / 8 val images of 128 px) and its spec."""
    spec = synthetic_spec(tmp_path_factory.mktemp("tiny_data"), 3, 24, 8, 128)
    load_dataset(str(spec), "train")
    load_dataset(str(spec), "val")
    return spec
