"""Where predictions' images come from (`detector.inference.sources`): files, folders, globs, lists,
videos, arrays; unreadable files are frames with an error, never an exception."""

import cv2
import numpy as np
import pytest
from PIL import Image

from detector.inference.sources import as_inputs, open_source, relative_names

RED_BGR = (0, 0, 255)


def write_image(path, colour_bgr=RED_BGR, shape=(30, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*shape, 3), colour_bgr, np.uint8))
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "pics"
    write_image(root / "a.png")
    write_image(root / "sub" / "b.png", (255, 0, 0))
    (root / "bad.jpg").write_bytes(b"not an image at all")
    (root / "notes.txt").write_text("not listed: no image extension\n")
    return root


def test_folder_lists_images_recursively_and_reports_the_unreadable_one(folder):
    source = open_source(str(folder))
    frames = list(source)
    assert source.kind == "images" and source.total == 3 and not source.is_video
    assert [f.name for f in frames] == ["a.png", "bad.jpg", "sub/b.png"]
    assert [f.index for f in frames] == [1, 2, 3]
    bad = frames[1]
    assert bad.image is None and "cannot read image" in bad.error
    assert bad.path == str(folder / "bad.jpg")
    np.testing.assert_array_equal(frames[0].image[0, 0], [255, 0, 0])  # RGB: red first
    np.testing.assert_array_equal(frames[2].image[0, 0], [0, 0, 255])
    assert frames[2].stem == "sub/b"


def test_glob_and_list_sources(folder, tmp_path):
    frames = list(open_source(str(folder / "**" / "*.png")))
    assert [f.name for f in frames] == ["a.png", "sub/b.png"]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# images\npics/sub/b.png\n\n{folder / 'a.png'}\npics/missing.png\n")
    source = open_source(str(listing))
    frames = list(source)
    assert source.total == 3
    assert [f.path for f in frames] == [
        str(tmp_path / "pics/sub/b.png"),
        str(folder / "a.png"),
        str(tmp_path / "pics/missing.png"),
    ]
    assert [f.name for f in frames] == ["sub/b.png", "a.png", "missing.png"]
    assert frames[0].image is not None and frames[2].image is None and frames[2].error


def test_single_image_keeps_its_name_and_exif_orientation(tmp_path):
    raw = np.zeros((40, 80, 3), np.uint8)
    raw[:, :10] = 255  # a white band on the left of the stored pixels
    image = Image.fromarray(raw)
    exif = image.getexif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise: the band is then on top
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif.tobytes())
    (frame,) = list(open_source(str(path)))
    assert frame.name == "phone.jpg" and frame.image.shape == (80, 40, 3)
    assert frame.image[:8].mean() > 200 and frame.image[12:].mean() < 30


def test_video_frames_in_order_as_rgb(tmp_path):
    path = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for _ in range(5):
        writer.write(np.full((48, 64, 3), RED_BGR, np.uint8))
    writer.release()
    source = open_source(path)
    frames = list(source)
    assert source.kind == "video" and source.is_video and source.total == 5
    assert source.fps == pytest.approx(10.0)
    assert [f.index for f in frames] == [1, 2, 3, 4, 5] and all(f.video for f in frames)
    assert frames[2].stem == "clip_3" and frames[2].path == path
    red, _, blue = frames[0].image[24, 32].astype(int)
    assert red > 200 and blue < 60


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: str(p / "nope.jpg"), "SOURCE: not found: "),
        (lambda p: str(p), "SOURCE: no image files in "),
        (lambda p: str(p / "*.png"), "SOURCE: no image files in "),
        (lambda p: "7", "SOURCE: cannot open webcam 7"),
    ],
)
def test_nothing_to_read_is_an_error_naming_the_source(tmp_path, make, message):
    source = make(tmp_path)
    with pytest.raises(ValueError, match=message) as error:
        open_source(source)
    assert source in str(error.value)


def test_relative_names_keep_files_from_different_folders_apart(tmp_path):
    paths = [str(tmp_path / "x" / "a.jpg"), str(tmp_path / "y" / "a.jpg")]
    assert relative_names(paths) == ["x/a.jpg", "y/a.jpg"]
    assert relative_names(paths[:1]) == ["a.jpg"]


def test_arrays_are_rgb_unless_bgr_and_batches_split(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200
    assert next(as_inputs(rgb))[0][0, 0, 0] == 200
    assert next(as_inputs(rgb, bgr=True))[0][0, 0, 2] == 200
    gray = next(as_inputs(np.full((4, 6), 7, np.uint8)))[0]
    assert gray.shape == (4, 6, 3) and (gray == 7).all()
    batch = list(as_inputs(np.stack([rgb, rgb, rgb])))
    assert len(batch) == 3 and all(path is None for _, path in batch)
    path = write_image(tmp_path / "r.png")
    image, got = next(as_inputs([path]))
    assert got == str(path) and tuple(image[0, 0]) == (255, 0, 0)
    with pytest.raises(ValueError, match="uint8"):
        next(as_inputs(rgb.astype(np.float32)))
    with pytest.raises(ValueError, match=r"\(4, 6, 4\)"):
        next(as_inputs(np.zeros((4, 6, 4), np.uint8)))
    with pytest.raises(ValueError, match="missing.png"):
        next(as_inputs(str(tmp_path / "missing.png")))


def test_images_sharing_a_name_without_extension_get_label_files_apart(tmp_path):
    """a.jpg and a.png beside each other would both write labels/a.txt: each keeps its
    extension in its label name instead; lone names keep the stem."""
    for name in ("a.jpg", "a.png", "b.jpg", "sub/a.png"):
        write_image(tmp_path / name)
    frames = list(open_source(str(tmp_path)))
    stems = {f.name: f.stem for f in frames}
    assert stems == {"a.jpg": "a.jpg", "a.png": "a.png", "b.jpg": "b", "sub/a.png": "sub/a"}
    assert len(set(stems.values())) == len(frames)
