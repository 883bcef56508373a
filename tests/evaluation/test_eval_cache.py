"""Evaluation on whole arrays and the validation images kept in memory across evaluations."""

import os

import numpy as np
import pytest

from detector.data.coco import ground_truth
from detector.data.spec import load_dataset
from detector.engine.callbacks.coco_ap import BestCocoAP
from detector.engine.eval_copy import EvalCopy
from detector.evaluation.coco import EvalImages, coco_metrics, evaluate_model
from detector.inference.detector import iter_results, to_image_boxes
from detector.inference.results import batch_coco_detections, coco_results
from detector.model.network import build_inference_model
from tests.helpers.data import synthetic_spec

SIZE = 64


@pytest.fixture()
def own_val(tmp_path):
    """A validation split of its own (its files get deleted), 6 images of 96 px."""
    spec = synthetic_spec(tmp_path, 5, 2, 6, 96)
    load_dataset(str(spec), "train")
    return load_dataset(str(spec), "val")


def untrained(val):
    # Untrained: every image gets many overlapping boxes, the matching has work to do.
    return build_inference_model(len(val.names), [[1, 1], [3, 2]], "tiny", 0.125, SIZE, val.names)


def delete_images(val) -> None:
    for record in val.records:
        os.remove(record.path)


def test_cached_second_evaluation_is_identical_and_reads_no_image(own_val):
    model, truth = untrained(own_val), ground_truth(own_val)
    images = EvalImages(own_val.records, cache_mb=1.0)
    first, results = evaluate_model(model, own_val, SIZE, truth, images=images, batch_size=4)
    # the array path gives what predict.iter_results gives, dict for dict
    assert results == [r for part, _ in iter_results(model, own_val, SIZE, 4) for r in part]
    assert len(results) >= 10 * len(own_val.records)
    assert first == coco_metrics(truth, [dict(r) for r in results])  # pycocotools' own
    delete_images(own_val)
    second, again = evaluate_model(model, own_val, SIZE, truth, images=images, batch_size=4)
    assert second == first and again == results  # per-class AP included, bit for bit
    with pytest.raises(Exception, match="val"):  # without the cache the files are gone
        evaluate_model(model, own_val, SIZE, truth, images=EvalImages(own_val.records, 0.0))


def test_images_over_the_budget_are_read_at_every_evaluation(own_val):
    images = EvalImages(own_val.records, cache_mb=6 * SIZE * SIZE * 3 / 1e6 - 1e-6)
    assert not images.fits(SIZE) and EvalImages(own_val.records, 0.1).fits(SIZE)
    model = untrained(own_val)
    evaluate_model(model, own_val, SIZE, images=images, batch_size=4)
    delete_images(own_val)
    with pytest.raises(Exception, match="val"):
        evaluate_model(model, own_val, SIZE, images=images, batch_size=4)


def test_best_coco_ap_keeps_the_images_between_epochs(own_val, tmp_path):
    model = untrained(own_val)
    callback = BestCocoAP(
        EvalCopy(model),
        own_val,
        ground_truth(own_val),
        lambda epoch: True,
        batch_size=4,
        cache_mb=1.0,
    )
    callback.set_model(model)
    callback.on_train_begin()
    first = callback.evaluate()
    delete_images(own_val)
    assert callback.evaluate() == first


@pytest.mark.parametrize("letterbox", [False, True])
def test_batch_conversion_equals_the_per_image_one(letterbox):
    rng = np.random.default_rng(3)
    b, k, categories = 5, 7, [4, 9, 2]
    boxes = rng.uniform(-0.2, 1.2, (b, k, 4)).astype(np.float32)
    scores = np.sort(rng.uniform(0, 1, (b, k)).astype(np.float32), axis=1)[:, ::-1]
    classes = rng.integers(0, 3, (b, k)).astype(np.int32)
    valid = np.array([7, 0, 3, 1, 7], np.int32)
    shapes = np.array([[480, 640], [100, 100], [333, 77], [64, 900], [1, 1]])
    image_ids = np.array([11, 3, 5, 8, 13])
    expected = []
    for i in range(b):
        n, (h, w) = valid[i], shapes[i]
        pixels = to_image_boxes(boxes[i, :n], h, w, 96, letterbox)
        expected += coco_results(pixels, scores[i, :n], classes[i, :n], image_ids[i], categories)
    outputs = (boxes, scores, classes, valid)
    got = batch_coco_detections(outputs, shapes, image_ids, 96, letterbox, categories)
    assert got.to_results() == expected and len(got) == valid.sum()
    annotations = got.to_annotations()
    assert [a["id"] for a in annotations] == list(range(1, len(expected) + 1))
    assert [a["area"] for a in annotations] == [r["bbox"][2] * r["bbox"][3] for r in expected]
