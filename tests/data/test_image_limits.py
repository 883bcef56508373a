"""Hostile image files: decompression bombs refused from their header in every reader and
in prediction (never decoded), `data.max_pixels` from the config down to the readers,
truncation told by the file's structure (bytes after the end marker accepted), and
train/val overlap warned."""

import functools
import io
import os
import shutil
import struct
import zlib

import cv2
import numpy as np
import pytest
import yaml

from detector.cli.data import main as data_main
from detector.config.schema import load_config
from detector.data.files import decode_image, image_size, read_image
from detector.data.image_checks import MAX_PIXELS, ImageTooLarge, is_truncated
from detector.data.policy import inspect_image
from detector.data.spec import load_dataset
from detector.engine import run as training
from detector.inference.sources import read_frames
from tests.helpers.data import write_all_formats


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def bomb_png(side: int) -> bytes:
    """A valid 1-bit grey PNG of side x side zeros: ~49 KB for 20000 px, 1.2 GB decoded."""
    rows = (b"\x00" * (1 + (side + 7) // 8)) * 1000
    deflate = zlib.compressobj(9)
    body = b"".join(deflate.compress(rows) for _ in range(side // 1000)) + deflate.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", body)
        + _chunk(b"IEND", b"")
    )


@pytest.fixture
def no_bomb_decoded(monkeypatch):
    """cv2.imdecode refuses (and records) any buffer that is a bomb PNG."""
    seen = []
    real = cv2.imdecode

    def spy(buffer, flags):
        data = bytes(buffer[:33])
        if data.startswith(b"\x89PNG") and struct.unpack(">I", data[16:20])[0] >= 10000:
            seen.append(data)
        return real(buffer, flags)

    monkeypatch.setattr(cv2, "imdecode", spy)
    yield seen
    assert seen == []


def test_the_bomb_is_small_and_a_real_png():
    data = bomb_png(20000)
    assert len(data) < 64_000
    assert not is_truncated(data, "png")
    small = bomb_png(1000)
    assert cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_GRAYSCALE).shape == (1000, 1000)


@pytest.mark.parametrize("fmt", ["coco", "voc", "yolo"])
def test_every_reader_skips_a_bomb_unread_and_counts_it(tmp_path, fmt, no_bomb_decoded):
    specs = write_all_formats(str(tmp_path), count=4)
    (tmp_path / "images" / "img0.jpg").write_bytes(bomb_png(20000))  # PNG behind .jpg
    dataset = load_dataset(specs[fmt], "train")
    assert dataset.problems["image_too_large"] == 1
    assert sorted(os.path.basename(r.path) for r in dataset.records) == [
        "img1.jpg",
        "img2.jpg",
        "img3.jpg",
    ]
    assert "image_too_large" in dataset.problems.report("train")


def test_the_limit_reaches_the_readers_by_keyword(tmp_path):
    specs = write_all_formats(str(tmp_path), count=3)  # images 60..120 x 60..160 px
    for fmt, spec in specs.items():
        assert load_dataset(spec, "train").problems["image_too_large"] == 0, fmt
        small = load_dataset(spec, "train", max_pixels=3000)
        assert small.problems["image_too_large"] >= 2 and len(small.records) <= 1, fmt
    with pytest.raises(ValueError, match="no usable image"):
        training.read_splits(specs["yolo"], max_pixels=100)


def test_max_pixels_config_key_has_a_rule():
    assert load_config().data.max_pixels == MAX_PIXELS == 89_478_485
    assert load_config(overrides=["data.max_pixels=1000"]).data.max_pixels == 1000
    for bad in ("0", "-5", str(MAX_PIXELS + 1), "1.5", "abc"):
        with pytest.raises(ValueError, match="data.max_pixels"):
            load_config(overrides=[f"data.max_pixels={bad}"])


def test_prediction_and_decoding_refuse_a_bomb_from_its_header(tmp_path, no_bomb_decoded):
    bomb, big = tmp_path / "bomb.png", tmp_path / "big.png"
    bomb.write_bytes(bomb_png(20000))
    big.write_bytes(bomb_png(10000))  # over the limit, under Pillow's own refusal
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ImageTooLarge, match=r"bomb.png: over 178956970 pixels, over the limit"):
        read_image(str(bomb))
    with pytest.raises(ImageTooLarge, match=r"10000x10000 = 100000000 pixels"):
        read_image(str(big))
    with pytest.raises(ImageTooLarge):
        image_size(str(bomb), MAX_PIXELS)
    assert image_size(str(bomb)) is None  # without a limit: unreadable header, as before
    assert inspect_image(str(bomb))[0] == "image_too_large"
    frames = list(read_frames([str(bomb), str(good)], ["bomb", "good"]))
    assert frames[0].image is None and frames[0].error
    assert frames[1].image.shape == (8, 8, 3)


def test_data_check_and_training_report_the_count(tmp_path, capsys, no_bomb_decoded):
    specs = write_all_formats(str(tmp_path), count=4)
    (tmp_path / "images" / "img0.jpg").write_bytes(bomb_png(20000))
    assert data_main(["check", specs["coco"]]) == 0
    out = capsys.readouterr().out
    assert "image_too_large" in out and "img0.jpg" in out
    training.read_splits(specs["yolo"])
    out = capsys.readouterr().out
    assert out.count("image_too_large") == 2  # train and val (the same folder)


# ---------------------------------------------------------------- truncated vs appended


def jpeg(progressive: bool = False) -> bytes:
    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), np.uint8)
    flags = [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    return cv2.imencode(".jpg", image, flags)[1].tobytes()


def png() -> bytes:
    image = np.random.default_rng(1).integers(0, 255, (40, 50, 3), np.uint8)
    return cv2.imencode(".png", image)[1].tobytes()


MOTION = b"\x00\x00\x00\x18ftypmp42" + np.random.default_rng(2).bytes(20_000)
# An APP1 segment holding an EOI marker (as an EXIF thumbnail does), right after SOI.
THUMB = b"\xff\xe1" + struct.pack(">H", 2 + 12) + b"Exif\x00\x00\xff\xd8\xff\xd9\x00\x00"


def with_thumbnail(data: bytes) -> bytes:
    return data[:2] + THUMB + data[2:]


CASES = {
    "jpeg": (jpeg(), None),
    "progressive jpeg": (jpeg(True), None),
    "jpeg + motion-photo video": (jpeg() + MOTION, None),
    "progressive jpeg + video": (jpeg(True) + MOTION, None),
    "jpeg with thumbnail": (with_thumbnail(jpeg()), None),
    "png + trailing bytes": (png() + MOTION, None),
    "jpeg cut in half": (jpeg()[: len(jpeg()) // 2], "image_truncated"),
    "jpeg without EOI": (jpeg()[:-2], "image_truncated"),
    "progressive jpeg cut": (jpeg(True)[: len(jpeg(True)) * 2 // 3], "image_truncated"),
    "jpeg with thumbnail cut": (with_thumbnail(jpeg())[:200], "image_truncated"),
    "png cut in half": (png()[: len(png()) // 2], "image_truncated"),
    "png without IEND": (png()[:-12], "image_truncated"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_truncation_is_told_by_structure_not_the_last_bytes(tmp_path, name):
    data, expected = CASES[name]
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    fatal, _, size = inspect_image(str(path))
    assert fatal == expected
    if expected is None:
        assert size in ((64, 80), (40, 50))


def test_a_motion_photo_is_kept_by_the_check(tmp_path):
    specs = write_all_formats(str(tmp_path), count=3)
    path = tmp_path / "images" / "img1.jpg"
    path.write_bytes(path.read_bytes() + MOTION)
    (tmp_path / "images" / "img0.jpg").write_bytes(jpeg()[:300])
    dataset = load_dataset(specs["coco"], "train")
    assert dataset.problems["image_truncated"] == 1
    assert "img1.jpg" in {os.path.basename(r.path) for r in dataset.records}
    assert read_image(str(path)).shape[:2] == (dataset.records[0].height, dataset.records[0].width)


# ---------------------------------------------------------------- train/val overlap


def test_train_val_overlap_is_warned_with_the_count(tmp_path, capsys):
    specs = write_all_formats(str(tmp_path), count=3)  # train and val: the same folder
    training.read_splits(specs["yolo"])
    assert "warning: 3 image(s) of train are also in val" in capsys.readouterr().out
    assert data_main(["check", specs["voc"], "--json", str(tmp_path / "r.json")]) == 0
    assert "warning: 3 image(s) of train are also in val" in capsys.readouterr().out
    os.symlink(tmp_path / "images", tmp_path / "linked")  # the same files, other paths
    shutil.copytree(tmp_path / "images", tmp_path / "copied")  # other files, the same json
    (tmp_path / "coco2.json").write_bytes((tmp_path / "coco.json").read_bytes())
    spec = tmp_path / "two.yaml"
    for images, json_file, expected in (
        ("linked", "coco.json", 3),
        ("copied", "coco.json", 3),
        ("copied", "coco2.json", 0),  # the same ids in another json, other files
    ):
        val = {"images": images, "annotations": json_file}
        train = {"images": "images", "annotations": "coco.json"}
        spec.write_text(yaml.safe_dump({"format": "coco", "train": train, "val": val}))
        training.read_splits(str(spec))
        out = capsys.readouterr().out
        assert (f"warning: {expected} image(s) of train are also in val" in out) == bool(expected)
        assert ("warning" in out) == bool(expected)


# ---------------------------------------------------------------- packed image bytes


def test_packed_bytes_over_the_limit_are_refused_and_skipped_while_training(
    tmp_path, capfd, no_bomb_decoded
):
    from detector.data.augment import FILL
    from detector.data.pipeline import TrainInput, _ExampleLoader

    with pytest.raises(ImageTooLarge, match=r"^packed 3: over 178956970 pixels, over the"):
        decode_image(bomb_png(20000), "packed 3")
    with pytest.raises(ImageTooLarge, match=r"10000x10000 = 100000000 pixels"):
        decode_image(bomb_png(10000), "packed 3")
    with pytest.raises(ImageTooLarge, match="over the limit of 50"):
        decode_image(png(), "packed 3", max_pixels=50)
    assert decode_image(png(), "packed 3").shape == (40, 50, 3)
    # training on packed records: an empty example in its place, named once on stderr
    specs = write_all_formats(str(tmp_path / "src"), count=3)
    assert data_main(["pack", specs["coco"], str(tmp_path / "p"), "--shards", "1"]) == 0
    records = load_dataset(str(tmp_path / "p" / "spec.yaml"), "train").records
    loader = _ExampleLoader(TrainInput(records, 64, [[1.0, 1.0]], 2, 5, None), salt=0)
    capfd.readouterr()
    for position in range(2):
        boxes = np.array([[1.0, 1.0, 900.0, 900.0]])
        example = loader.from_packed(position, 64, bomb_png(10000), 7, 10000, 10000, boxes, [0])
        image, y_true, true_boxes = example
        assert image.shape == (64, 64, 3) and (image == FILL).all()
        assert not y_true.any() and not true_boxes.any()
    assert loader.unreadable == {7}
    err = capfd.readouterr().err
    assert err.count("warning:") == 1 and "(image id 7): 10000x10000 = 100000000" in err


def _declaring(data: bytes, height: int, width: int) -> bytes:
    """A JPEG's bytes with its frame header (SOF0 / SOF2) declaring height x width."""
    pos = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    return data[: pos + 5] + struct.pack(">HH", height, width) + data[pos + 9 :]


def test_the_plain_jpeg_header_parse_agrees_with_pillow(monkeypatch):
    from PIL import Image

    from detector.data.image_checks import check_pixels, plain_jpeg_size

    for data in (jpeg(), jpeg(True), jpeg() + MOTION, _declaring(jpeg(), 7, 9)):
        width, height = Image.open(io.BytesIO(data)).size
        assert plain_jpeg_size(data) == (height, width)
    # APP1 (EXIF / XMP: maybe an orientation), other formats, a cut header: Pillow's job
    for data in (with_thumbnail(jpeg()), png(), jpeg()[:100], b""):
        assert plain_jpeg_size(data) is None
    decoded = []
    monkeypatch.setattr(cv2, "imdecode", lambda *args: decoded.append(args))
    for side, found in ((20000, "over 178956970"), (10000, "10000x10000 = 100000000")):
        data = _declaring(jpeg(), side, side)
        assert plain_jpeg_size(data) == (side, side)
        with pytest.raises(ImageTooLarge, match=f"^packed: {found} pixels, over the"):
            decode_image(data, "packed")
        with pytest.raises(ImageTooLarge, match=f"^packed: {found} pixels, over the"):
            check_pixels(data, "packed")  # Pillow's parse: the same refusal
    assert decoded == []
