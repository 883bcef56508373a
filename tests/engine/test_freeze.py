"""train.freeze: fine-tuning from darknet weights with the first convolutions frozen."""

import keras
import numpy as np
import pytest

from detector.config.schema import load_config
from detector.darknet.transfer import get_conv_weights, load_init_weights, model_conv_specs
from detector.darknet.weights import ConvWeights, write_weights
from detector.engine.build import make_training_model
from detector.model.network import BACKBONE_CONVS, build_inference_model, freeze_layers
from detector.model.targets import encode_targets

ANCHORS = [[1.0, 1.5], [3.0, 2.0]]


def _random_darknet_layers(specs, seed: int = 0) -> list[ConvWeights]:
    """Random values in darknet's layout (biases, weights, BN scales, means, variances)."""
    rng = np.random.default_rng(seed)
    layers = []
    for spec in specs:
        n, c, k = spec.filters, spec.channels, spec.size
        weights = rng.normal(0, np.sqrt(2 / (c * k * k)), (n, c, k, k)).astype("float32")
        stats = [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n)]
        layers.append(
            ConvWeights(rng.normal(0, 0.1, n).astype("float32"), weights, *map(np.float32, stats))
        )
    return layers


def _batch(size: int, anchors, max_boxes: int = 4, count: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (count, size, size, 3)).astype("float32")
    targets = [
        encode_targets(
            np.array([[8.0, 10.0, 40.0, 50.0]], np.float32),
            np.array([1], np.int32),
            (size, size),
            np.asarray(anchors, np.float32),
            max_boxes,
        )
        for _ in range(count)
    ]
    y_true = np.stack([t[0] for t in targets])
    true_boxes = np.stack([t[1] for t in targets])
    return (images, y_true, true_boxes), np.zeros(count, np.float32)


def test_backbone_freeze_keeps_darknet_weights_and_bn_statistics(tmp_path):
    cfg = load_config(
        overrides=[
            "model.variant=tiny",
            "model.width=0.25",
            "train.freeze=backbone",
            "data.max_boxes=4",
        ]
    )
    model = build_inference_model(2, ANCHORS, "tiny", 0.25, 64)
    backbone = BACKBONE_CONVS["tiny"]
    file_layers = _random_darknet_layers(model_conv_specs(model)[:backbone])
    path = str(tmp_path / "tiny.conv.13")
    write_weights(path, file_layers)
    loaded, _ = load_init_weights(model, path)
    assert loaded == backbone
    assert freeze_layers(model, cfg.train.freeze) == backbone
    head_before = [w.copy() for w in model.get_layer(f"bn_{backbone + 1}").get_weights()]
    train_model = make_training_model(cfg, model, cfg.train.lr)
    train_model.fit(*_batch(64, ANCHORS), batch_size=4, epochs=2, verbose=0)

    for k, expected in enumerate(file_layers, 1):
        got = get_conv_weights(model.get_layer(f"conv_{k}"), model.get_layer(f"bn_{k}"))
        for name in ("weights", "biases", "scales", "rolling_mean", "rolling_variance"):
            np.testing.assert_allclose(
                getattr(got, name), getattr(expected, name), rtol=1e-6, atol=1e-6, err_msg=name
            )
    # the first trainable block learns and its BatchNorm follows the batch statistics
    head_after = model.get_layer(f"bn_{backbone + 1}").get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(head_before, head_after, strict=True))
    trainable = {v.path.split("/")[0] for v in train_model.trainable_variables}
    assert f"conv_{backbone}" not in trainable and f"conv_{backbone + 1}" in trainable


def test_freeze_counts_and_refusals():
    model = build_inference_model(3, ANCHORS, "darknet19", 0.0625, 64)
    assert freeze_layers(model, "backbone") == 18
    assert not model.get_layer("bn_18").trainable and model.get_layer("bn_19").trainable
    frozen = build_inference_model(3, ANCHORS, "tiny", 0.125, 64)
    assert freeze_layers(frozen, 0) == 0
    assert all(layer.trainable for layer in frozen.layers)
    with pytest.raises(ValueError, match="train.freeze: 9 convolutions asked"):
        freeze_layers(frozen, 9)  # tiny: 8 convolutions before the prediction


@pytest.mark.parametrize("value", ["head", "-1", "1.5", "true"])
def test_freeze_config_refuses(value):
    with pytest.raises(ValueError, match="train.freeze"):
        load_config(overrides=[f"train.freeze={value}"])


def test_frozen_model_round_trips_through_keras_file(tmp_path):
    model = build_inference_model(2, ANCHORS, "tiny", 0.125, 64)
    freeze_layers(model, 3)
    path = str(tmp_path / "m.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert not restored.get_layer("conv_3").trainable and restored.get_layer("conv_4").trainable
