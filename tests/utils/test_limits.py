"""The shared numeric bounds (`detector.utils.limits`)."""

import pytest

from detector.utils.limits import (
    BYTES_PER_INPUT_PIXEL,
    MAX_BATCH_SIZE,
    MAX_DETECTIONS,
    MAX_INPUT_SIZE,
    available_bytes,
    check_batch_size,
    check_input_size,
    check_max_det,
)


def test_the_bounds_themselves_pass_and_one_past_them_is_refused_by_name():
    assert check_max_det("--max-det", MAX_DETECTIONS) == MAX_DETECTIONS
    assert check_input_size("--input-size", MAX_INPUT_SIZE) == MAX_INPUT_SIZE
    assert check_batch_size("--batch-size", MAX_BATCH_SIZE, 32, available=2**40) == MAX_BATCH_SIZE
    with pytest.raises(
        ValueError, match=rf"^--max-det: expected an integer in 1..{MAX_DETECTIONS}"
    ):
        check_max_det("--max-det", MAX_DETECTIONS + 1)
    with pytest.raises(ValueError, match=rf"^--input-size: {MAX_INPUT_SIZE + 32} px is over"):
        check_input_size("--input-size", MAX_INPUT_SIZE + 32)
    with pytest.raises(
        ValueError, match=rf"^--batch-size: expected an integer in 1..{MAX_BATCH_SIZE}"
    ):
        check_batch_size("--batch-size", MAX_BATCH_SIZE + 1, 32, available=2**40)


@pytest.mark.parametrize("value", [0, -1, 2.5, True, 10**9])
def test_max_det_out_of_range_or_not_an_integer(value):
    with pytest.raises(ValueError, match="^max_det: "):
        check_max_det("max_det", value)


@pytest.mark.parametrize("value", [0, -32, 100, 100_000])
def test_input_size_not_a_bounded_multiple_of_32(value):
    with pytest.raises(ValueError, match="^--sizes: "):
        check_input_size("--sizes", value)


def test_a_batch_over_half_the_available_memory_is_refused_before_allocating():
    need = 16 * 416**2 * BYTES_PER_INPUT_PIXEL
    assert check_batch_size("--batch-size", 16, 416, available=2 * need) == 16
    with pytest.raises(ValueError, match=r"^--batch-size: 16 images of 416 px need about 0\.4 GB"):
        check_batch_size("--batch-size", 16, 416, available=2 * need - 1)


def test_available_memory_is_known_here():
    assert available_bytes() > 2**20
