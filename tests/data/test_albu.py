"""Tests of the users' albumentations stage (`detector.data.albu`, ``data.albumentations``):
boxes follow spatial transforms, examples are a function of (seed, stream position) with
any number of loading threads and after a resume, config errors are one line."""

import threading

import numpy as np
import pytest

from detector.data.albu import AlbumentationsStage, build_stage
from detector.data.pipeline import TrainInput, make_train_dataset
from tests.data.test_mosaic import augmenter, coloured_records

ANCHORS = [[1.0, 1.0], [2.0, 2.0]]
COLOUR = {"hue": 0.1, "saturation": 1.5, "exposure": 1.5}  # the colour jitter on, before
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
SPATIAL = [
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "Affine", "scale": [0.8, 1.2], "translate_percent": [-0.1, 0.1],
     "rotate": [-8, 8], "p": 1.0},
]  # fmt: skip
PHOTOMETRIC = [{"name": "CLAHE", "p": 0.5}, {"name": "RandomBrightnessContrast", "p": 0.5}]


def planted(size: int = 128):
    """A grey image with three solid rectangles of known colours (class = colour index)."""
    image = np.full((size, size, 3), 90, np.uint8)
    boxes = np.array([[10, 12, 50, 40], [70, 20, 118, 60], [30, 70, 90, 116]], np.float32)
    for (x1, y1, x2, y2), colour in zip(boxes.astype(int), COLOURS, strict=True):
        image[y1:y2, x1:x2] = colour
    return image, boxes, np.arange(3, dtype=np.int32)


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def test_boxes_follow_spatial_transforms_onto_their_coloured_pixels():
    stage = AlbumentationsStage(SPATIAL, min_visibility=0.3)
    image, boxes, classes = planted()
    kept = 0
    for seed in range(12):
        out, out_boxes, out_classes = stage(image, boxes, classes, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == np.uint8
        assert len(out_boxes) == len(out_classes) and set(out_classes) <= {0, 1, 2}
        assert (out_boxes >= 0).all() and (out_boxes <= 128).all()
        assert (out_boxes[:, 2:] - out_boxes[:, :2] >= 1).all()  # MIN_BOX_SIDE
        for box, c in zip(out_boxes, out_classes, strict=True):
            mask = np.all(np.abs(out.astype(int) - COLOURS[c]) < 60, axis=-1)
            ys, xs = np.nonzero(mask)
            found = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert iou(box, found) > 0.9, (seed, c, box, found)
            kept += 1
    assert kept >= 30  # most boxes stay: the test is not vacuous


def test_a_box_pushed_out_is_dropped_with_its_class():
    # shifted left by 70 % of the width: only the right-hand rectangle (class 1) can stay, cut
    shift = [{"name": "Affine", "translate_percent": {"x": [-0.7, -0.7], "y": [0, 0]}, "p": 1}]
    image, boxes, classes = planted()
    _, out_boxes, out_classes = AlbumentationsStage(shift, 0.3)(
        image, boxes, classes, np.random.default_rng(0)
    )
    assert out_classes.tolist() == [1] and out_boxes.shape == (1, 4)
    assert out_boxes[0, 0] == pytest.approx(0.0, abs=1) and out_boxes[0, 2] < 40


def test_a_pixel_only_stage_leaves_the_boxes_alone():
    stage = AlbumentationsStage([{"name": "OneOf", "transforms": PHOTOMETRIC, "p": 1.0}], 0.3)
    assert "bboxes" not in stage.compose().processors  # no bbox checks to pay for
    image, boxes, classes = planted()
    out, out_boxes, out_classes = stage(image, boxes, classes, np.random.default_rng(1))
    assert not np.array_equal(out, image)
    np.testing.assert_array_equal(out_boxes, boxes)
    np.testing.assert_array_equal(out_classes, classes)
    spatial = AlbumentationsStage([{"name": "OneOf", "transforms": SPATIAL}], 0.3)
    assert "bboxes" in spatial.compose().processors


def test_one_example_is_the_same_in_any_thread_and_differs_by_seed():
    stage = AlbumentationsStage(SPATIAL + PHOTOMETRIC, 0.3)
    image, boxes, classes = planted()

    def example(seed):
        return stage(image, boxes, classes, np.random.default_rng([7, seed]))

    serial = [example(s) for s in range(8)]
    threaded = [None] * 8

    def work(k):
        for s in range(k, 8, 2):
            threaded[s] = example(s)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for a, b in zip(serial, threaded, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(serial[0][0], serial[1][0])


def test_a_saved_file_is_the_same_stage_as_the_list(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")  # no PyPI request at its import
    import albumentations as A

    path = tmp_path / "aug.yaml"
    A.save(A.Compose([A.CLAHE(p=1.0), A.HorizontalFlip(p=0.5)]), str(path), data_format="yaml")
    listed = [{"name": "CLAHE", "p": 1.0}, {"name": "HorizontalFlip", "p": 0.5}]
    image, boxes, classes = planted()
    for seed in range(3):
        a = AlbumentationsStage(str(path), 0.3)(image, boxes, classes, np.random.default_rng(seed))
        b = AlbumentationsStage(listed, 0.3)(image, boxes, classes, np.random.default_rng(seed))
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    assert build_stage([], min_visibility=0.3) is None


def _batches(spec: TrainInput, count: int) -> list:
    return [(b[0][0].numpy(), b[0][2].numpy()) for b in make_train_dataset(spec).take(count)]


def test_training_batches_are_the_same_with_one_thread_autotune_and_after_a_resume(tmp_path):
    records = coloured_records(tmp_path)
    pipeline = SPATIAL + PHOTOMETRIC

    def spec(**changes):
        stage = build_stage(changes.pop("pipeline", pipeline), min_visibility=0.3)
        base = TrainInput(
            records, 64, ANCHORS, 2, 10, lambda: augmenter(stage=stage), seed=4,
            mosaic=0.5, mixup=0.5,
        )  # fmt: skip
        return TrainInput(**{**base.__dict__, **changes})

    one = _batches(spec(parallel_calls=1), 6)
    auto = _batches(spec(parallel_calls=-1), 6)
    resumed = _batches(spec(parallel_calls=-1, start_step=3), 3)
    for a, b in zip(one, auto, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    for a, b in zip(one[3:], resumed, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    plain = _batches(spec(pipeline=[]), 6)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(one, plain, strict=True))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[{name: CLAHEE, p: 0.1}]", "data.albumentations[0]: unknown albumentations "
         "transform 'CLAHEE' (did you mean 'CLAHE'?)"),
        ("[{name: CLAHE}, {name: MotionBlur, blurlimit: 7}]", "data.albumentations[1]: "
         "MotionBlur: unknown argument 'blurlimit' (did you mean 'blur_limit'?)"),
        ("[{name: MotionBlur, blur_limit: x}]", "data.albumentations[0]: MotionBlur: bad "
         "arguments: blur_limit"),
        ("[{name: OneOf, transforms: [{name: Blurr}]}]",
         "data.albumentations[0].transforms[0]: unknown albumentations transform 'Blurr'"),
        ("[{name: Normalize}]", "data.albumentations[0]: Normalize returns float"),
        ("[{p: 0.5}]", "data.albumentations[0]: expected {name: TransformName"),
        ("none/aug.json", "data.albumentations: file not found: none/aug.json"),
    ],
)  # fmt: skip
def test_config_errors_are_one_line_naming_the_entry(value, message):
    from detector.config.schema import load_config

    with pytest.raises(ValueError) as error:
        load_config("configs/default.yaml", [f"data.albumentations={value}"])
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_the_config_key_builds_the_stage_and_is_recorded(tmp_path):
    from detector.config.schema import load_config, save_config
    from detector.engine.build import make_augmenter

    value = "[{name: CLAHE, p: 0.1}, {name: MotionBlur, blur_limit: 7, p: 0.2}]"
    one_size = ["data.multiscale=[]", "model.input_size=64"]  # probed at the one size
    cfg = load_config("configs/default.yaml", [*one_size, f"data.albumentations={value}"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again.data.albumentations == cfg.data.albumentations
    assert again.data.albumentations[1] == {"name": "MotionBlur", "blur_limit": 7, "p": 0.2}
    stage = make_augmenter(again.data).stage
    assert isinstance(stage, AlbumentationsStage) and stage.pipeline == cfg.data.albumentations
    assert make_augmenter(load_config("configs/default.yaml").data).stage is None


def test_packed_records_get_the_stage_with_the_same_bytes_per_position(tmp_path):
    from detector.cli.data import main as data_main
    from detector.data.spec import load_dataset
    from tests.helpers.data import write_all_formats

    specs = write_all_formats(str(tmp_path / "src"), count=5)
    assert data_main(["pack", specs["coco"], str(tmp_path / "p"), "--shards", "2"]) == 0
    records = load_dataset(str(tmp_path / "p" / "spec.yaml"), "train").records
    grey = [{"name": "ToGray", "p": 1.0}, {"name": "Affine", "rotate": [-10, 10], "p": 0.5}]

    def stream(calls: int, start_step: int = 0):
        stage = build_stage(grey, min_visibility=0.3)
        spec = TrainInput(
            records, 64, ANCHORS, 2, 10, lambda: augmenter(**COLOUR, stage=stage), seed=2,
            parallel_calls=calls, start_step=start_step,
        )  # fmt: skip
        return _batches(spec, 4 - start_step)

    one, auto, resumed = stream(1), stream(-1), stream(-1, start_step=2)
    for a, b in zip(one, auto, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    for a, b in zip(one[2:], resumed, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    images = np.concatenate([images for images, _ in one]).astype(int)
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all()
    assert images.std() > 5  # not blank: the drawn rectangles, greyed
