"""Darknet interoperability: reorg order, cfg builder, BFLOPs, .weights I/O, parity, commands."""

import dataclasses

import keras
import numpy as np
import pytest

from detector.bench.step import conv_flops
from detector.config.schema import PUBLISHED_ANCHORS, LossConfig
from detector.darknet.build import build_from_cfg
from detector.darknet.cfg import format_table, layer_table, read_cfg, region_loss_config
from detector.darknet.inference import darknet_region_output
from detector.darknet.transfer import (
    cfg_conv_specs,
    conv_layers,
    get_conv_weights,
    load_darknet_weights,
    model_conv_specs,
    set_conv_weights,
)
from detector.darknet.weights import ConvWeights, Header, read_weights, write_weights
from detector.model.layers import SpaceToDepth
from detector.model.network import build_inference_model
from tests.helpers.darknet_reference import (
    CFG_DIR,
    CONV,
    TINY_CFG,
    darknet_conv,
    darknet_forward,
    darknet_reorg,
    needs_cfgs,
    random_layers,
)

# ---------------------------------------------------------------- reorg


@pytest.mark.parametrize("shape", [(2, 4, 6, 8), (1, 6, 4, 12)])
def test_darknet_reorg_matches_reorg_cpu_transcription(shape):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    expected = np.transpose(darknet_reorg(np.transpose(x, (0, 3, 1, 2)), 2), (0, 2, 3, 1))
    out = keras.ops.convert_to_numpy(SpaceToDepth(2, order="darknet")(x))
    np.testing.assert_array_equal(out, expected)
    # The quirk is real: darknet's order is not space_to_depth's.
    tf_order = keras.ops.convert_to_numpy(SpaceToDepth(2)(x))
    assert not np.array_equal(tf_order, expected)


def test_darknet_reorg_config_and_keras_round_trip(tmp_path):
    layer = SpaceToDepth(2, order="darknet", name="reorg_27")
    clone = SpaceToDepth.from_config(layer.get_config())
    assert (clone.order, clone.block_size, clone.name) == ("darknet", 2, "reorg_27")
    assert SpaceToDepth.from_config(SpaceToDepth(2).get_config()).order == "tf"
    inputs = keras.Input((None, None, 8))
    model = keras.Model(inputs, SpaceToDepth(2, order="darknet")(inputs))
    path = str(tmp_path / "reorg.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    x = np.random.default_rng(1).normal(size=(1, 4, 6, 8)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_reorg_rejects_bad_order_and_channels():
    with pytest.raises(ValueError, match="order"):
        SpaceToDepth(2, order="caffe")
    with pytest.raises(ValueError, match="multiple of block_size"):
        SpaceToDepth(2, order="darknet")(np.zeros((1, 4, 4, 6), "float32"))


# ---------------------------------------------------------------- cfg, shapes and BFLOPs


def keras_shapes(model: keras.Model, size: int) -> list[tuple]:
    """(h, w, c) of every conv's output at a square input, by shape inference only."""
    convs = [conv for conv, _ in conv_layers(model)]
    probe = keras.Model(model.inputs, [c.output for c in convs])
    specs = probe.compute_output_spec(keras.KerasTensor((1, size, size, 3)))
    return [tuple(s.shape[1:]) for s in specs]


@pytest.fixture(scope="module")
def shared_models():
    """The five shared cfgs built once (darknet19_448 as a backbone)."""
    names = ["yolov2", "yolov2-voc", "yolov2-tiny", "yolov2-tiny-voc", "darknet19_448"]
    return {
        n: build_from_cfg(str(CFG_DIR / f"{n}.cfg"), backbone_only=n == "darknet19_448")
        for n in names
    }


@needs_cfgs
@pytest.mark.parametrize(
    "name, size, published",
    [
        ("yolov2", 608, 62.94),
        ("yolov2-voc", 416, None),
        ("yolov2-tiny", 416, 5.41),
        ("yolov2-tiny-voc", 416, 6.97),
        ("darknet19_448", 448, 22.33),
    ],
)
def test_shared_cfgs_build_with_darknet_shapes_and_bflops(shared_models, name, size, published):
    rows = layer_table(read_cfg(str(CFG_DIR / f"{name}.cfg")), size)
    model = shared_models[name]
    conv_rows = [r for r in rows if r.kind == "conv"]
    expected = [(r.output[1], r.output[0], r.output[2]) for r in conv_rows]
    assert keras_shapes(model, size) == expected
    assert conv_flops(model, size) == pytest.approx(sum(r.bflops for r in rows) * 1e9, rel=1e-12)
    if published is not None:
        assert round(sum(r.bflops for r in rows), 2) == published


@needs_cfgs
def test_yolov2_608_is_darknets_32_layer_list():
    rows = layer_table(read_cfg(str(CFG_DIR / "yolov2.cfg")), 608)
    assert len(rows) == 32
    assert [r.kind for r in rows[23:]] == [
        "conv",
        "conv",
        "route",
        "conv",
        "reorg",
        "route",
        "conv",
        "conv",
        "region",
    ]
    assert rows[25].sources == [16] and rows[28].sources == [27, 24]
    assert rows[26].output == (38, 38, 64) and rows[27].output == (19, 19, 256)
    assert rows[28].output == (19, 19, 1280) and rows[30].output == (19, 19, 425)
    assert rows[29].bflops == pytest.approx(8.517, abs=5e-4)
    table = format_table(rows)
    assert "   31 detection" in table and "Total BFLOPs 62.938" in table


@needs_cfgs
def test_tiny_cfgs_keep_the_13x13_grid_through_the_stride_1_pool():
    rows = layer_table(read_cfg(str(CFG_DIR / "yolov2-tiny.cfg")), 416)
    pools = [r for r in rows if r.kind == "max"]
    assert (pools[-1].size, pools[-1].stride) == (2, 1)
    assert pools[-1].input == pools[-1].output == (13, 13, 512)
    # Odd sizes: darknet's output is ceil(in / stride), as Keras' "same" gives.
    assert layer_table(read_cfg(str(CFG_DIR / "yolov2-tiny.cfg")), 416 + 32)[9].output[0] == 14


@needs_cfgs
@pytest.mark.parametrize(
    "name, variant, classes, anchors, size",
    [
        ("yolov2", "darknet19", 80, "coco", 608),
        ("yolov2-voc", "darknet19", 20, "voc", 416),
        ("yolov2-tiny", "tiny", 80, "coco", 416),
    ],
)
def test_our_builder_matches_darknet_cfgs_conv_for_conv(
    shared_models, name, variant, classes, anchors, size
):
    ours = build_inference_model(classes, PUBLISHED_ANCHORS[anchors], variant, 1.0, size)
    # Same convs in the same order: darknet weights map 1:1 onto conv_k.
    assert model_conv_specs(ours) == cfg_conv_specs(str(CFG_DIR / f"{name}.cfg"))
    assert conv_flops(ours, size) == pytest.approx(conv_flops(shared_models[name], size))


@needs_cfgs
def test_darknet19_backbone_fits_the_first_18_convs_of_yolov2(shared_models):
    backbone = model_conv_specs(shared_models["darknet19_448"])
    # darknet19_448.conv.23 = darknet's layers 0..22, which hold 18 convs.
    assert backbone[:18] == cfg_conv_specs(str(CFG_DIR / "yolov2.cfg"))[:18]
    assert (
        sum(
            r.kind == "conv" for r in layer_table(read_cfg(str(CFG_DIR / "darknet19_448.cfg")))[:23]
        )
        == 18
    )
    with pytest.raises(ValueError, match="backbone_only"):
        build_from_cfg(str(CFG_DIR / "darknet19_448.cfg"))


@needs_cfgs
def test_region_options_map_onto_our_loss_config():
    loss = region_loss_config(str(CFG_DIR / "yolov2-tiny.cfg"))
    assert set(loss) <= {f.name for f in dataclasses.fields(LossConfig)}
    assert loss["ignore_thresh"] == 0.6 and loss["object_scale"] == 5 and not loss["rescore"]
    LossConfig(**loss)


def test_cfg_errors_name_the_line():
    with pytest.raises(ValueError, match=r"cfg:2: unsupported section \[yolo\]"):
        read_cfg("[net]\n[yolo]\n")
    with pytest.raises(ValueError, match="must name earlier layers"):
        layer_table(read_cfg("[net]\nwidth=32\nheight=32\n[route]\nlayers=3\n"))
    with pytest.raises(ValueError, match="previous layer has 8 channels"):
        layer_table(
            read_cfg(
                TINY_CFG.replace("filters=16\nactivation=linear", "filters=8\nactivation=linear")
            )
        )


# ---------------------------------------------------------------- .weights reader and writer


@pytest.mark.parametrize("header", [Header(0, 1, 0, 123456), Header(0, 2, 0, 2**40 + 7)])
def test_writer_reader_round_trip_is_bit_exact(tmp_path, header):
    layers = random_layers(TINY_CFG)
    path = tmp_path / "tiny.weights"
    write_weights(str(path), layers, header)
    floats = sum(spec.floats for spec in cfg_conv_specs(TINY_CFG))
    assert path.stat().st_size == (16 if header.minor == 1 else 20) + 4 * floats
    got_header, got = read_weights(str(path), cfg_conv_specs(TINY_CFG))
    assert got_header == header
    for a, b in zip(layers, got, strict=True):
        for x, y in zip(a.arrays(), b.arrays(), strict=True):
            assert x.shape == y.shape and x.tobytes() == y.tobytes()
    again = tmp_path / "again.weights"
    write_weights(str(again), got, got_header)
    assert again.read_bytes() == path.read_bytes()


def test_wrong_size_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.weights"
    write_weights(str(path), random_layers(TINY_CFG))
    floats = sum(spec.floats for spec in cfg_conv_specs(TINY_CFG))
    path.write_bytes(path.read_bytes() + b"\0" * 8)
    with pytest.raises(
        ValueError, match=rf"bad.weights.*{floats + 2} floats.*need {floats} floats"
    ):
        read_weights(str(path), cfg_conv_specs(TINY_CFG))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match=rf"{floats - 8} floats \({4 * (floats - 8)} bytes\)"):
        read_weights(str(path), cfg_conv_specs(TINY_CFG))
    with pytest.raises(ValueError, match="layer boundary"):  # ends inside the last layer
        read_weights(str(path), cfg_conv_specs(TINY_CFG), allow_partial=True)


def test_partial_file_loads_into_the_first_layers(tmp_path):
    layers = random_layers(TINY_CFG)
    path = tmp_path / "tiny.conv.5"
    write_weights(str(path), layers[:3])
    _, got = read_weights(str(path), cfg_conv_specs(TINY_CFG), allow_partial=True)
    assert len(got) == 3
    model = build_from_cfg(TINY_CFG)
    untouched = model.get_layer("conv_4").get_weights()[0].copy()
    assert load_darknet_weights(model, str(path), allow_partial=True) == 3
    np.testing.assert_array_equal(
        model.get_layer("conv_3").kernel.numpy(), np.transpose(layers[2].weights, (2, 3, 1, 0))
    )
    np.testing.assert_array_equal(model.get_layer("conv_4").get_weights()[0], untouched)
    with pytest.raises(ValueError, match="need"):
        load_darknet_weights(model, str(path))


# ---------------------------------------------------------------- parity with darknet's forward


def assert_matches_darknet(model, cfg, layers, height, width, tolerance):
    """The model's raw output vs darknet_forward, before and after the region activations."""
    image = np.random.default_rng(4).uniform(0, 255, (height, width, 3)).astype("float32")
    raw = keras.ops.convert_to_numpy(model(image[None]))
    reference = darknet_forward(cfg, image, layers)  # (A·(5+C), h, w)
    _, h, w, anchors, entries = raw.shape
    assert reference.shape == (anchors * entries, h, w)
    ours = np.transpose(raw.reshape(1, h, w, anchors * entries), (0, 3, 1, 2))[0]
    assert 0.5 < np.abs(reference).max() < 100  # a scale where the tolerance means something
    assert np.max(np.abs(ours - reference)) <= tolerance
    region = reference.reshape(anchors, entries, h, w).copy()
    region[:, [0, 1, 4]] = 1 / (1 + np.exp(-region[:, [0, 1, 4]]))
    region[:, 5:] = np.exp(region[:, 5:]) / np.exp(region[:, 5:]).sum(axis=1, keepdims=True)
    assert np.max(np.abs(darknet_region_output(raw)[0] - region)) <= tolerance
    return np.max(np.abs(ours - reference))


@pytest.mark.parametrize("height, width", [(64, 64), (64, 96)])
def test_converted_model_matches_numpy_darknet_forward(tmp_path, height, width):
    layers = random_layers(TINY_CFG, seed=3)
    path = tmp_path / "tiny.weights"
    write_weights(str(path), layers)
    model = build_from_cfg(TINY_CFG, class_names=["a", "b", "c"])
    assert load_darknet_weights(model, str(path)) == 7
    assert model.output_shape == (None, None, None, 2, 8)
    assert_matches_darknet(model, TINY_CFG, layers, height, width, 1e-4)


@needs_cfgs
@pytest.mark.parametrize("name", ["yolov2", "yolov2-tiny"])
def test_shared_cfg_models_match_numpy_darknet_forward_on_a_small_input(shared_models, name):
    cfg = str(CFG_DIR / f"{name}.cfg")
    layers = random_layers(cfg, seed=10)
    model = shared_models[name]
    for (conv, bn), layer in zip(conv_layers(model), layers, strict=True):
        set_conv_weights(conv, bn, layer)
    assert_matches_darknet(model, cfg, layers, 64, 96, 1e-4)


def test_batch_norm_matches_darknet_for_tiny_and_zero_variances(tmp_path):
    cfg = "[net]\nwidth=8\nheight=8\nchannels=3\n" + CONV.format(6, 3)
    layer = random_layers(cfg, seed=5)[0]
    layer.rolling_variance[:] = [0.0, 1e-12, 1e-9, 1e-6, 1e-4, 2.0]
    model = build_from_cfg(cfg, backbone_only=True)
    set_conv_weights(*conv_layers(model)[0], layer)
    image = np.random.default_rng(6).uniform(0, 255, (8, 8, 3)).astype("float32")
    ours = np.transpose(keras.ops.convert_to_numpy(model(image[None]))[0], (2, 0, 1))
    reference = darknet_conv(np.transpose(image, (2, 0, 1)) / 255.0, layer, 1, True)
    np.testing.assert_allclose(ours, reference, rtol=2e-5, atol=1e-6 * np.abs(reference).max())
    # Back in darknet's layout it is the same function: same scale / (sqrt(var) + 1e-6).
    back = get_conv_weights(*conv_layers(model)[0])
    np.testing.assert_array_equal(back.weights, layer.weights)
    np.testing.assert_array_equal(back.biases, layer.biases)
    np.testing.assert_array_equal(back.rolling_mean, layer.rolling_mean)

    def ratio(w: ConvWeights) -> np.ndarray:
        return w.scales / (np.sqrt(w.rolling_variance.astype(np.float64)) + 1e-6)

    np.testing.assert_allclose(ratio(back), ratio(layer), rtol=1e-6)
    np.testing.assert_allclose(back.rolling_variance[-2:], layer.rolling_variance[-2:], rtol=1e-5)
    np.testing.assert_array_equal(back.scales[-2:], layer.scales[-2:])
