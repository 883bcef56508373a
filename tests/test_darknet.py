"""Darknet interoperability: reorg order, cfg builder, BFLOPs, .weights I/O, parity, commands."""

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pytest

from detector.bench import conv_flops
from detector.config import PUBLISHED_ANCHORS, LossConfig
from detector.darknet.__main__ import main as darknet_main
from detector.darknet.build import build_from_cfg
from detector.darknet.cfg import format_table, layer_table, read_cfg, region_loss_config
from detector.darknet.export import export_problems
from detector.darknet.inference import darknet_letterbox, darknet_region_output
from detector.darknet.transfer import (
    cfg_conv_specs,
    conv_layers,
    get_conv_weights,
    load_darknet_weights,
    load_init_weights,
    model_conv_specs,
    save_darknet_weights,
    set_conv_weights,
)
from detector.darknet.weights import ConvWeights, Header, read_weights, write_weights
from detector.layers import SpaceToDepth
from detector.model import build_inference_model

CFG_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "darknet" / "cfg"
needs_cfgs = pytest.mark.skipif(not CFG_DIR.is_dir(), reason="../shared/data is absent")

CONV = (
    "[convolutional]\nbatch_normalize=1\nfilters={}\nsize={}\nstride=1\npad=1\nactivation=leaky\n"
)
# Layers 0..14: conv, max/2, conv, max/2, 1x1 conv, max/2, conv, max size 2 stride 1, route 4
# (absolute), 1x1 conv, reorg, route -1,-4, conv, linear prediction conv, region.
TINY_CFG = "\n".join(
    [
        "[net]\nwidth=64\nheight=64\nchannels=3\n",
        CONV.format(8, 3),
        "[maxpool]\nsize=2\nstride=2\n",
        CONV.format(16, 3),
        "[maxpool]\nsize=2\nstride=2\n",
        CONV.format(8, 1),
        "[maxpool]\nsize=2\nstride=2\n",
        CONV.format(16, 3),
        "[maxpool]\nsize=2\nstride=1\n",
        "[route]\nlayers=4\n",
        CONV.format(8, 1),
        "[reorg]\nstride=2\n",
        "[route]\nlayers=-1, -4\n",
        CONV.format(16, 3),
        "[convolutional]\nsize=1\nstride=1\npad=1\nfilters=16\nactivation=linear\n",
        "# darknet skips comment lines\n[region]\nanchors = 1.0,1.5, 2.5,3.0\nclasses=3\nnum=2\n"
        "softmax=1\nthresh=.55\nobject_scale=4\nnoobject_scale=0.5\nclass_scale=2\n"
        "coord_scale=3\nrescore=1\nbias_match=1\n",
    ]
)


# ---------------------------------------------------------------- darknet's arithmetic in numpy


def reorg_cpu(x, w, h, c, batch, stride, forward, out):
    """darknet's reorg_cpu (blas.c), index by index."""
    out_c = c // (stride * stride)
    for b in range(batch):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    in_index = i + w * (j + h * (k + c * b))
                    c2, offset = k % out_c, k // out_c
                    w2 = i * stride + offset % stride
                    h2 = j * stride + offset // stride
                    out_index = w2 + w * stride * (h2 + h * stride * (c2 + out_c * b))
                    if forward:
                        out[out_index] = x[in_index]
                    else:
                        out[in_index] = x[out_index]


def darknet_reorg(x: np.ndarray, stride: int) -> np.ndarray:
    """forward_reorg_layer on NCHW x: reorg_cpu(input, l.w, l.h, l.c, ..., forward=0)."""
    batch, c, h, w = x.shape
    out = np.zeros(x.size, x.dtype)
    reorg_cpu(x.ravel(), w, h, c, batch, stride, 0, out)
    return out.reshape(batch, c * stride * stride, h // stride, w // stride)


def darknet_conv(x, layer: ConvWeights, pad: int, leaky: bool):
    """forward_convolutional_layer on one CHW image, in float64."""
    n, c, k, _ = layer.weights.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    oh, ow = xp.shape[1] - k + 1, xp.shape[2] - k + 1
    out = np.zeros((n, oh, ow))
    for dy in range(k):
        for dx in range(k):
            out += np.einsum(
                "nc,chw->nhw", layer.weights[:, :, dy, dx], xp[:, dy : dy + oh, dx : dx + ow]
            )
    if layer.scales is not None:
        std = np.sqrt(layer.rolling_variance.astype(np.float64)) + 0.000001
        out = (out - layer.rolling_mean[:, None, None]) / std[:, None, None]
        out = out * layer.scales[:, None, None]
    out = out + layer.biases[:, None, None]
    return np.where(out > 0, out, 0.1 * out) if leaky else out


def darknet_maxpool(x, size: int, stride: int):
    """forward_maxpool_layer (padding = size - 1, offset -pad/2) on one CHW image."""
    c, h, w = x.shape
    pad = size - 1
    oh, ow = (h + pad - size) // stride + 1, (w + pad - size) // stride + 1
    out = np.full((c, oh, ow), -np.inf)
    for i in range(oh):
        for j in range(ow):
            for n in range(size):
                for m in range(size):
                    y, xx = -(pad // 2) + i * stride + n, -(pad // 2) + j * stride + m
                    if 0 <= y < h and 0 <= xx < w:
                        out[:, i, j] = np.maximum(out[:, i, j], x[:, y, xx])
    return out


def darknet_forward(cfg: str, image: np.ndarray, layers: list[ConvWeights]) -> np.ndarray:
    """The cfg's forward pass, layer by layer as darknet runs it, on one HWC image in 0..255.

    Returns the input of [region] (the last conv's output), CHW.
    """
    height, width = image.shape[:2]
    rows = layer_table(read_cfg(cfg))
    x = np.transpose(image, (2, 0, 1)).astype(np.float64) / 255.0
    outputs, convs = [], iter(layers)
    for row in rows:
        previous = outputs[-1] if outputs else x
        if row.kind == "conv":
            assert row.stride == 1
            y = darknet_conv(previous, next(convs), row.pad, row.activation == "leaky")
        elif row.kind == "max":
            y = darknet_maxpool(previous, row.size, row.stride)
        elif row.kind == "route":
            y = np.concatenate([outputs[i] for i in row.sources], axis=0)
        elif row.kind == "reorg":
            y = darknet_reorg(previous[None], row.stride)[0]
        else:
            y = previous
        outputs.append(y)
    return outputs[-1]


def random_layers(cfg: str, seed: int = 0) -> list[ConvWeights]:
    """Random darknet values for every conv of ``cfg`` (activations stay about 1)."""
    rng = np.random.default_rng(seed)
    layers = []
    for spec in cfg_conv_specs(cfg):
        n, c, k = spec.filters, spec.channels, spec.size
        fan_in = c * k * k
        weights = rng.normal(0, np.sqrt(2 / fan_in), (n, c, k, k)).astype("float32")
        biases = rng.normal(0, 0.1, n).astype("float32")
        if not spec.batch_normalize:
            layers.append(ConvWeights(biases, weights))
            continue
        variance = rng.uniform(0.5, 1.5, n).astype("float32")
        layers.append(
            ConvWeights(
                biases,
                weights,
                rng.uniform(0.5, 1.5, n).astype("float32"),
                rng.normal(0, 0.1, n).astype("float32"),
                variance,
            )
        )
    return layers


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
    [("yolov2", 608, 62.94), ("yolov2-voc", 416, None), ("yolov2-tiny", 416, 5.41),
     ("yolov2-tiny-voc", 416, 6.97), ("darknet19_448", 448, 22.33)],
)  # fmt: skip
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
    [("yolov2", "darknet19", 80, "coco", 608), ("yolov2-voc", "darknet19", 20, "voc", 416),
     ("yolov2-tiny", "tiny", 80, "coco", 416)],
)  # fmt: skip
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


# ---------------------------------------------------------------- init weights for training


def small_ours(classes: int) -> keras.Model:
    return build_inference_model(classes, [[1, 1], [2, 2]], "tiny", 0.25, 64)


def test_init_from_darknet_file_skips_a_different_prediction_conv(tmp_path):
    source, target = small_ours(3), small_ours(5)
    path = str(tmp_path / "ours.weights")
    save_darknet_weights(source, path)
    before = target.get_layer("conv_9").get_weights()[0].copy()
    assert load_init_weights(target, path) == (8, 9)
    np.testing.assert_array_equal(
        target.get_layer("conv_8").kernel.numpy(), source.get_layer("conv_8").kernel.numpy()
    )
    np.testing.assert_array_equal(target.get_layer("conv_9").get_weights()[0], before)
    partial = str(tmp_path / "ours.conv.4")
    write_weights(partial, [get_conv_weights(c, b) for c, b in conv_layers(source)[:4]])
    assert load_init_weights(small_ours(5), partial) == (4, 9)


def test_init_from_keras_checkpoint_copies_matching_layers(tmp_path):
    source = small_ours(3)
    x = np.random.default_rng(6).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    source(x, training=True)  # move the BN statistics away from their initial values
    path = str(tmp_path / "best.keras")
    source.save(path)
    target = small_ours(5)
    assert load_init_weights(target, path) == (8, 9)
    np.testing.assert_array_equal(
        target.get_layer("bn_8").moving_mean.numpy(), source.get_layer("bn_8").moving_mean.numpy()
    )
    same = small_ours(3)
    assert load_init_weights(same, path) == (9, 9)
    np.testing.assert_allclose(same(x), source(x), atol=1e-6)


def test_init_with_cfg_into_a_model_with_other_classes(tmp_path):
    path = str(tmp_path / "tiny.weights")
    write_weights(path, random_layers(TINY_CFG))
    five = TINY_CFG.replace("classes=3", "classes=5")
    five = five.replace("filters=16\nactivation=linear", "filters=20\nactivation=linear")
    assert load_init_weights(build_from_cfg(five), path, cfg_path=TINY_CFG) == (6, 7)
    other = (
        "[net]\nwidth=32\nheight=32\n" + CONV.format(4, 3) + "[convolutional]\nfilters=14\n"
        "activation=linear\n[region]\nanchors=1,1\nclasses=9\nnum=1\nsoftmax=1\n"
    )
    with pytest.raises(ValueError, match="no layer"):
        load_init_weights(build_from_cfg(other), path, cfg_path=TINY_CFG)


# ---------------------------------------------------------------- letterbox and layout


def darknet_resize_loops(im: np.ndarray, w: int, h: int) -> np.ndarray:
    """resize_image (image.c) pixel by pixel on a float32 HWC image."""
    f32 = np.float32
    ih, iw, _ = im.shape
    part = np.zeros((ih, w, 3), f32)
    w_scale, h_scale = f32(iw - 1) / f32(w - 1), f32(ih - 1) / f32(h - 1)
    for r in range(ih):
        for c in range(w):
            if c == w - 1 or iw == 1:
                part[r, c] = im[r, iw - 1]
            else:
                sx = f32(c) * w_scale
                ix = int(sx)
                dx = sx - f32(ix)
                part[r, c] = (f32(1) - dx) * im[r, ix] + dx * im[r, ix + 1]
    out = np.zeros((h, w, 3), f32)
    for r in range(h):
        sy = f32(r) * h_scale
        iy = int(sy)
        dy = sy - f32(iy)
        out[r] = (f32(1) - dy) * part[iy]
        if r != h - 1 and ih != 1:
            out[r] += dy * part[iy + 1]
    return out


def test_darknet_letterbox_keeps_aspect_centres_and_pads_grey():
    image = np.random.default_rng(7).integers(0, 256, (20, 40, 3), dtype=np.uint8)
    boxed = darknet_letterbox(image, 64)
    assert boxed.shape == (64, 64, 3) and boxed.dtype == np.float32
    # 40x20 -> 64x32, rows 16..47; the rest is 0.5 grey.
    assert np.all(boxed[:16] == 127.5) and np.all(boxed[48:] == 127.5)
    expected = darknet_resize_loops((image / 255.0).astype("float32"), 64, 32) * 255
    np.testing.assert_allclose(boxed[16:48], expected, atol=1e-3)
    tall = darknet_letterbox(np.zeros((50, 30, 3), np.uint8), (32, 64))
    # 30x50 into 32 wide, 64 high: 32/30 < 64/50, so width 32 and height 50·32/30 = 53.
    assert np.all(tall[:5] == 127.5) and np.all(tall[5:58] == 0) and np.all(tall[58:] == 127.5)


def test_region_output_layout_is_anchor_entry_row_column():
    raw = np.random.default_rng(8).normal(size=(2, 3, 4, 2, 8)).astype("float32")
    out = darknet_region_output(raw)
    assert out.shape == (2, 2, 8, 3, 4)
    assert out[1, 1, 4, 2, 3] == pytest.approx(1 / (1 + np.exp(-raw[1, 2, 3, 1, 4])))
    assert out[1, 1, 2, 2, 3] == raw[1, 2, 3, 1, 2]
    np.testing.assert_allclose(out[:, :, 5:].sum(axis=2), 1.0, rtol=1e-6)
    # l.output index ((a·(5+C) + e)·H + y)·W + x is the NCHW conv output's.
    nchw = np.transpose(raw.reshape(2, 3, 4, 16), (0, 3, 1, 2)).reshape(2, -1)
    assert (
        out.reshape(2, -1)[1, ((1 * 8 + 3) * 3 + 2) * 4 + 1]
        == nchw[1, ((1 * 8 + 3) * 3 + 2) * 4 + 1]
    )


# ---------------------------------------------------------------- commands


def test_convert_export_and_layers_commands(tmp_path, capsys):
    cfg, weights = tmp_path / "tiny.cfg", tmp_path / "tiny.weights"
    cfg.write_text(TINY_CFG)
    layers = random_layers(TINY_CFG, seed=9)
    write_weights(str(weights), layers, Header(0, 1, 0, 64000))
    names = tmp_path / "tiny.names"
    names.write_text("cat\ndog\nbird\n")
    out = tmp_path / "tiny.keras"
    assert darknet_main(["convert", str(cfg), str(weights), str(out), "--names", str(names)]) == 0
    assert "loaded 7 conv layers" in capsys.readouterr().out
    model = keras.models.load_model(str(out), safe_mode=True)
    head = model.get_layer("yolo_head")
    assert head.class_names == ["cat", "dog", "bird"] and head.category_ids == [1, 2, 3]
    assert head.anchors == [[1.0, 1.5], [2.5, 3.0]] and head.input_size == 64 and head.letterbox
    assert model.get_layer("reorg_10").order == "darknet"
    back = tmp_path / "back.weights"
    assert darknet_main(["export", str(out), str(back), "--cfg", str(cfg)]) == 0
    _, got = read_weights(str(back), cfg_conv_specs(TINY_CFG))
    for a, b in zip(layers, got, strict=True):
        np.testing.assert_array_equal(a.weights, b.weights)
        if a.scales is not None:
            np.testing.assert_array_equal(a.rolling_mean, b.rolling_mean)
    assert darknet_main(["layers", str(cfg), "--input-size", "128"]) == 0
    table = capsys.readouterr().out
    assert "   10 reorg              / 2    32 x  32 x   8   ->    16 x  16 x  32" in table
    assert "   14 detection" in table and "Total BFLOPs" in table


def test_commands_fail_with_one_line_errors(tmp_path, capsys):
    cfg, weights = tmp_path / "tiny.cfg", tmp_path / "short.weights"
    cfg.write_text(TINY_CFG)
    write_weights(str(weights), random_layers(TINY_CFG)[:5])
    assert darknet_main(["convert", str(cfg), str(weights), str(tmp_path / "x.keras")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: short.weights") and "floats" in err[0]
    ours = build_inference_model(3, [[1, 1]], "darknet19", 0.125, 64)
    assert export_problems(ours) == []  # our Darknet-19 reorganises in darknet's order
    config = ours.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "SpaceToDepth":
            layer["config"]["order"] = "tf"
    plain = tmp_path / "plain.keras"
    keras.Model.from_config(config).save(str(plain))
    assert darknet_main(["export", str(plain), str(tmp_path / "o.weights")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reorg" in err[0] and "channel order 'tf'" in err[0]
    assert not (tmp_path / "o.weights").exists()
    assert export_problems(small_ours(3)) == []  # the tiny variant is darknet's yolov2-tiny
    assert darknet_main(["layers", str(tmp_path / "missing.cfg")]) == 2
    assert capsys.readouterr().err.startswith("error: cfg file not found")


def test_converted_checkpoint_is_accepted_by_evaluate(tmp_path, tiny_spec, capsys):
    from detector.cli import evaluate_main

    four = TINY_CFG.replace("classes=3", "classes=4")
    four = four.replace("filters=16\nactivation=linear", "filters=18\nactivation=linear")
    cfg, weights, out = tmp_path / "four.cfg", tmp_path / "four.weights", tmp_path / "four.keras"
    cfg.write_text(four)
    write_weights(str(weights), random_layers(four, seed=11))
    assert darknet_main(["convert", str(cfg), str(weights), str(out)]) == 0
    assert evaluate_main([str(out), "--data", str(tiny_spec), "--input-size", "64"]) == 0
    assert "Average Precision" in capsys.readouterr().out
