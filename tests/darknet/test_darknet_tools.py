"""Darknet interop used for training and deployment: init weights, letterbox, the region
output layout, and the darknet commands."""

import keras
import numpy as np
import pytest

from detector.darknet.__main__ import main as darknet_main
from detector.darknet.build import build_from_cfg
from detector.darknet.export import export_problems
from detector.darknet.inference import darknet_letterbox, darknet_region_output
from detector.darknet.transfer import (
    cfg_conv_specs,
    conv_layers,
    get_conv_weights,
    load_init_weights,
    save_darknet_weights,
)
from detector.darknet.weights import Header, read_weights, write_weights
from detector.model.network import build_inference_model
from tests.helpers.darknet_reference import CONV, TINY_CFG, random_layers

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
    from detector.cli.train import evaluate_main

    four = TINY_CFG.replace("classes=3", "classes=4")
    four = four.replace("filters=16\nactivation=linear", "filters=18\nactivation=linear")
    cfg, weights, out = tmp_path / "four.cfg", tmp_path / "four.weights", tmp_path / "four.keras"
    cfg.write_text(four)
    write_weights(str(weights), random_layers(four, seed=11))
    assert darknet_main(["convert", str(cfg), str(weights), str(out)]) == 0
    assert evaluate_main([str(out), "--data", str(tiny_spec), "--input-size", "64"]) == 0
    assert "Average Precision" in capsys.readouterr().out
