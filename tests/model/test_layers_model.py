import keras
import numpy as np
import pytest

from detector.model.layers import SpaceToDepth
from detector.model.loss import YoloLoss
from detector.model.network import build_inference_model, build_training_model, scaled_filters

ANCHORS = [[0.5, 0.7], [1.5, 1.2], [3.0, 2.5]]


def space_to_depth_reference(x: np.ndarray, b: int) -> np.ndarray:
    """Loop transcription: out[n, y, x, (dy*b + dx)*C + c] = in[n, b*y + dy, b*x + dx, c]."""
    n, h, w, c = x.shape
    out = np.zeros((n, h // b, w // b, b * b * c), x.dtype)
    for yy in range(h // b):
        for xx in range(w // b):
            for dy in range(b):
                for dx in range(b):
                    k = (dy * b + dx) * c
                    out[:, yy, xx, k : k + c] = x[:, b * yy + dy, b * xx + dx, :]
    return out


@pytest.mark.parametrize("block", [2, 3])
def test_space_to_depth_matches_reference(block):
    x = np.random.default_rng(0).normal(size=(2, 6 * block, 4 * block, 5)).astype("float32")
    out = keras.ops.convert_to_numpy(SpaceToDepth(block)(x))
    np.testing.assert_array_equal(out, space_to_depth_reference(x, block))


def test_space_to_depth_config_and_keras_round_trip(tmp_path):
    layer = SpaceToDepth(2, name="reorg")
    clone = SpaceToDepth.from_config(layer.get_config())
    assert clone.block_size == 2 and clone.name == "reorg"
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, SpaceToDepth(2)(inputs))
    path = str(tmp_path / "s2d.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    x = np.random.default_rng(1).normal(size=(1, 8, 12, 3)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.output_shape == (None, None, None, 12)


def test_space_to_depth_rejects_bad_block():
    with pytest.raises(ValueError, match="block_size"):
        SpaceToDepth(0)


@pytest.mark.parametrize("size", [(64, 64), (96, 160)])
def test_grid_shape_follows_input(size):
    model = build_inference_model(3, ANCHORS, "darknet19", 0.125, 64)
    out = model(np.zeros((1, *size, 3), "float32"))
    assert out.shape == (1, size[0] // 32, size[1] // 32, 3, 8)


def test_darknet19_structure_and_names():
    model = build_inference_model(80, [[1, 1]] * 5, "darknet19", 1.0, 416)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    convs.sort(key=lambda c: int(c.name.split("_")[1]))
    assert [c.name for c in convs] == [f"conv_{i}" for i in range(1, 24)]
    assert [c.filters for c in convs[-5:]] == [1024, 1024, 64, 1024, 425]
    assert [c.kernel_size[0] for c in convs[-5:]] == [3, 3, 1, 3, 1]
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
    assert isinstance(model.get_layer("reorg"), SpaceToDepth)
    # The passthrough comes from the stride-16 (26x26 at 416) 512-channel map.
    assert model.get_layer("conv_21").input.shape[1:] == (None, None, 512)
    assert model.get_layer("route").output.shape[-1] == 256 + 1024


def test_tiny_variant_has_no_passthrough_and_keeps_grid():
    model = build_inference_model(20, [[1, 1]] * 5, "tiny", 1.0, 416)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 9
    assert model(np.zeros((1, 416, 416, 3), "float32")).shape == (1, 13, 13, 5, 25)


def test_width_multiplier_rounds_to_eight():
    assert [scaled_filters(f, 0.25) for f in (32, 64, 1024)] == [8, 16, 256]
    assert scaled_filters(16, 0.1) == 8


def test_inference_model_rebuilt_from_config_gives_identical_outputs(tmp_path):
    model = build_inference_model(3, ANCHORS, "darknet19", 0.125, 64, ["a", "b", "c"], [1, 7, 9])
    x = np.random.default_rng(2).uniform(0, 255, (2, 64, 96, 3)).astype("float32")
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(x), model(x), rtol=1e-5, atol=1e-5)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-5, atol=1e-5)
    head = loaded.get_layer("yolo_head")
    assert head.class_names == ["a", "b", "c"] and head.category_ids == [1, 7, 9]
    assert head.anchors == ANCHORS and head.input_size == 64


@pytest.fixture(scope="module")
def tiny_model():
    return build_inference_model(3, ANCHORS, "tiny", 0.25, 64)


def test_training_model_accepts_the_heads_anchors_in_float32(tiny_model):
    loss = YoloLoss(np.asarray(ANCHORS, np.float32), 3)  # 0.7 is not exact in float32
    model = build_training_model(tiny_model, loss, max_boxes=4)
    assert model.input_shape[1] == (None, None, None, len(ANCHORS), 6)


@pytest.mark.parametrize(
    "anchors", [[[0.5, 0.7], [1.5, 1.2], [3.0, 2.6]], [[0.5, 0.7], [1.5, 1.2]]]
)
def test_training_model_rejects_loss_with_other_anchors(tiny_model, anchors):
    with pytest.raises(ValueError, match="anchors") as error:
        build_training_model(tiny_model, YoloLoss(anchors, 3), max_boxes=4)
    assert str(anchors) in str(error.value) and str(ANCHORS) in str(error.value)


def test_training_model_rejects_loss_with_other_class_count(tiny_model):
    with pytest.raises(ValueError, match="num_classes 4 .* 3 classes"):
        build_training_model(tiny_model, YoloLoss(ANCHORS, 4), max_boxes=4)
