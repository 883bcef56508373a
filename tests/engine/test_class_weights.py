"""``loss.class_weights``: the auto formula on planted imbalances, the checks and the line
printed at the start of a run (`detector.engine.class_weights`)."""

import numpy as np
import pytest

from detector.config.schema import LossConfig
from detector.data.records import Dataset, Record
from detector.engine.class_weights import (
    MAX_RATIO,
    auto_class_weights,
    choose_class_weights,
    class_counts,
    describe,
)


def planted(per_image_classes: list[list[int]], names: list[str]) -> Dataset:
    """A dataset whose images hold boxes of the given classes (the boxes' places do not
    matter here)."""
    records = []
    for i, classes in enumerate(per_image_classes):
        boxes = np.tile(np.array([[1, 1, 5, 5]], np.float32), (len(classes), 1))
        records.append(
            Record(
                i, f"/nowhere/{i}.jpg", 10, 10, boxes, np.array(classes, np.int32), np.zeros((0, 4))
            )
        )
    return Dataset(records, names, list(range(1, len(names) + 1)), None)


def ninety_ten() -> Dataset:
    """90 % of the boxes of class 0, 10 % of class 1, class 2 absent, and 5 negatives."""
    images = [[0, 0, 0]] * 28 + [[0, 1]] * 6 + [[1]] * 4 + [[]] * 5
    return planted(images, ["common", "rare", "absent"])


def test_counts_are_boxes_per_class():
    assert class_counts(ninety_ten().records, 3).tolist() == [90, 10, 0]
    assert class_counts(planted([[0, 0], [1]], ["a", "b"]).records, 2).tolist() == [2, 1]
    assert class_counts([], 2).tolist() == [0, 0]


def test_auto_weights_of_a_ninety_ten_imbalance_are_the_formula_s_exact_values():
    """n = (90, 10): w = N·n^-1/2 / sum(n·n^-1/2) = 100·(1/√90, 1/√10) / (√90 + √10)
    = (5/6, 5/2); the rare class weighs 3 = √(90/10) times the common one, the per-box mean
    is 1 (90·5/6 + 10·5/2 = 100), and a class without boxes keeps 1."""
    weights = auto_class_weights(np.array([90, 10, 0]))
    np.testing.assert_allclose(weights, [5 / 6, 5 / 2, 1.0], rtol=1e-12)
    assert weights[1] > weights[0]
    np.testing.assert_allclose(np.dot([90, 10, 0], weights) / 100, 1.0, rtol=1e-12)


def test_auto_weights_clip_the_extremes_to_max_ratio():
    """A class seen once among 10 000 boxes would weigh 100 times the common one; the
    clip (counts raised to max / MAX_RATIO²) makes it exactly MAX_RATIO."""
    counts = np.array([10_000, 1, 400])
    weights = auto_class_weights(counts)
    assert weights[1] / weights[0] == pytest.approx(MAX_RATIO)
    assert weights[2] / weights[0] == pytest.approx(5.0)  # √(10000/400), not clipped
    assert np.dot(counts, weights) == pytest.approx(counts.sum())


def test_auto_weights_without_any_box_are_ones():
    assert auto_class_weights(np.array([0, 0])).tolist() == [1.0, 1.0]


def test_choose_auto_on_planted_records_gives_the_rare_class_the_larger_weight(capsys):
    weights = choose_class_weights(LossConfig(class_weights="auto"), ninety_ten())
    np.testing.assert_allclose(weights, [5 / 6, 5 / 2, 1.0], rtol=1e-12)
    assert isinstance(weights, list) and all(type(w) is float for w in weights)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("loss.class_weights auto (1/sqrt(box count)")
    assert lines[0].endswith(": common 0.833 (90 boxes), rare 2.5 (10 boxes), absent 1 (0 boxes)")


def test_choose_none_and_a_list(capsys):
    data = ninety_ten()
    assert choose_class_weights(LossConfig(), data) == "none"
    assert capsys.readouterr().out == ""
    given = choose_class_weights(LossConfig(class_weights=[1.0, 4.0, 2.0]), data)
    assert given == [1.0, 4.0, 2.0]
    assert capsys.readouterr().out == "loss.class_weights (list): common 1, rare 4, absent 2\n"


def test_a_list_of_the_wrong_length_is_one_error_line():
    with pytest.raises(ValueError) as info:
        choose_class_weights(LossConfig(class_weights=[1.0, 2.0]), ninety_ten())
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("loss.class_weights: 2 weights for the 3 classes")
    assert "'common', 'rare', 'absent'" in message


def test_the_line_for_many_classes_shows_the_extremes_only():
    names = [f"class{c}" for c in range(80)]
    counts = np.array([0] * 9 + list(range(1, 72)))
    weights = auto_class_weights(counts)
    line = describe(weights, names, counts, "auto")
    assert "\n" not in line and len(line) < 400
    assert "80 classes: lightest class79 " in line and "heaviest class9 " in line
    assert "9 classes without boxes weigh 1" in line and "class40" not in line
