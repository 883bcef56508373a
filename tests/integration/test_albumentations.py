"""``data.albumentations`` through the command lines: a run trains with a spatial and a
photometric transform and records them; ``data check --plots`` draws them."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

from detector.config.schema import load_config
from tests.helpers.data import TINY_MODEL, set_flags, write_all_formats

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = [
    {"name": "Affine", "scale": [0.9, 1.1], "rotate": [-5, 5], "p": 0.5},
    {"name": "CLAHE", "p": 0.3},
    {"name": "MotionBlur", "blur_limit": 5, "p": 0.2},
]


def test_a_run_with_spatial_and_photometric_transforms_trains_and_records_them(tiny_spec, tmp_path):
    config = tmp_path / "albu.yaml"
    config.write_text(yaml.safe_dump({"data": {"albumentations": PIPELINE}}))
    run_dir = tmp_path / "run"
    flags = set_flags(*TINY_MODEL, "data.batch_size=8", "train.max_minutes=0")
    args = ["--config", str(config), "--data", str(tiny_spec), "--epochs", "1"]
    proc = subprocess.run(
        [sys.executable, "train.py", *args, "--run-dir", str(run_dir), *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1"] and math.isfinite(float(rows[0]["loss"]))
    assert load_config(run_dir / "config.yaml").data.albumentations == PIPELINE


def _colourful_share(path: Path) -> float:
    """Share of the plot's pixels that are neither grey nor the boxes' lime."""
    image = cv2.imread(str(path)).astype(int)
    spread = image.max(axis=-1) - image.min(axis=-1)
    lime = (image[..., 1] > 150) & (image[..., 0] < 100) & (image[..., 2] < 100)
    return float(((spread > 40) & ~lime).mean())


def test_data_check_plots_draw_the_stage(tmp_path):
    from detector.cli.data import main as data_main

    specs = write_all_formats(str(tmp_path), count=5)
    shares = {}
    for name, pipeline in (("plain", []), ("grey", [{"name": "ToGray", "p": 1.0}])):
        config = tmp_path / f"{name}.yaml"
        quiet = {"hue": 0.0, "saturation": 1.0, "exposure": 1.0, "mosaic": 0.0}  # one image each
        config.write_text(yaml.safe_dump({"data": {**quiet, "albumentations": pipeline}}))
        plots = tmp_path / name
        args = ["check", specs["voc"], "--plots", str(plots), "--config", str(config)]
        assert data_main(args) == 0
        shares[name] = _colourful_share(plots / "augmented.png")
    # the drawn rectangles are red, green, blue: grey once ToGray ran in the plotted samples
    assert shares["plain"] > 0.02 and shares["grey"] < shares["plain"] / 5, shares
    assert np.isfinite(list(shares.values())).all()
