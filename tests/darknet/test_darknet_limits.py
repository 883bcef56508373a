"""Hostile darknet cfg and .weights files: refused with one message naming the file, the
section and the key, before Keras allocates anything or the weights' body is read."""

import keras
import pytest

from detector.darknet import limits
from detector.darknet.__main__ import main as darknet_main
from detector.darknet.build import build_from_cfg
from detector.darknet.cfg import layer_table, read_cfg
from detector.darknet.transfer import cfg_conv_specs
from detector.darknet.weights import read_weights, write_weights
from tests.helpers.darknet_reference import TINY_CFG, random_layers

NET = "[net]\nwidth=64\nheight=64\nchannels=3\n"
CONV = "[convolutional]\nfilters={}\nsize=3\nstride=1\npad=1\nactivation=leaky\n"
REGION = "[region]\nanchors=1,1\nclasses=3\nnum=1\nsoftmax=1\n"
HEAD = "[convolutional]\nfilters=8\nsize=1\nstride=1\nactivation=linear\n" + REGION


def cfg_with(*sections: str) -> str:
    return "\n".join([NET, *sections])


# (cfg text, what the message must contain): every number darknet reads, out of range.
BAD_CFGS = {
    "width 0": (
        cfg_with(CONV.format(8)).replace("width=64", "width=0"),
        "section 0 [net]: width=0",
    ),
    "width huge": (
        cfg_with(CONV.format(8)).replace("width=64", "width=100000"),
        "width=100000 is outside [1, 8192]",
    ),
    "channels 0": (NET.replace("channels=3", "channels=0") + CONV.format(8), "channels=0"),
    "filters 0": (cfg_with(CONV.format(0)), "section 1 [conv]: filters=0 is outside"),
    "filters negative": (cfg_with(CONV.format(-4)), "filters=-4"),
    "filters inf": (cfg_with(CONV.format("inf")), "filters='inf' is not a number"),
    "filters nan": (cfg_with(CONV.format("nan")), "filters='nan' is not a number"),
    "size 0": (cfg_with(CONV.format(8).replace("size=3", "size=0")), "size=0"),
    "stride 0": (cfg_with(CONV.format(8).replace("stride=1", "stride=0")), "stride=0"),
    "pad negative": (cfg_with(CONV.format(8).replace("pad=1", "pad=-1")), "pad=-1"),
    "groups 0": (cfg_with(CONV.format(8) + "groups=0\n"), "groups=0"),
    "kernel params": (
        cfg_with(CONV.format(8), CONV.format(60000), CONV.format(60000)),
        "section 3 [conv]: filters=60000: 3x3 kernel x 60000 in x 60000 out",
    ),
    "feature map": (
        NET.replace("width=64", "width=8192").replace("height=64", "height=8192")
        + CONV.format(8)
        + CONV.format(1024).replace("size=3", "size=1"),
        "section 2 [conv]: output 8192x8192x1024",
    ),
    "maxpool stride 0": (cfg_with("[maxpool]\nsize=2\nstride=0\n"), "stride=0"),
    "reorg stride 0": (
        cfg_with(CONV.format(8), "[reorg]\nstride=0\n"),
        "section 2 [reorg]: stride=0",
    ),
    "route to a later layer": (
        cfg_with(CONV.format(8), "[route]\nlayers=5\n"),
        "section 2 [route]: layers='5' must name earlier layers",
    ),
    "route to itself": (cfg_with(CONV.format(8), "[route]\nlayers=1\n"), "must name earlier"),
    "route out of range": (cfg_with(CONV.format(8), "[route]\nlayers=-100\n"), "layers='-100'"),
    "route not integers": (cfg_with(CONV.format(8), "[route]\nlayers=a,b\n"), "not a list"),
    "classes 0": (cfg_with(CONV.format(8), HEAD.replace("classes=3", "classes=0")), "classes=0"),
    "num huge": (cfg_with(CONV.format(8), HEAD.replace("num=1", "num=99999")), "num=99999"),
    "anchors negative": (
        cfg_with(CONV.format(8), HEAD.replace("anchors=1,1", "anchors=-1,1")),
        "anchors",
    ),
    "anchors nan": (
        cfg_with(CONV.format(8), HEAD.replace("anchors=1,1", "anchors=nan,1")),
        "anchors",
    ),
    "scale inf": (cfg_with(CONV.format(8), HEAD + "object_scale=inf\n"), "object_scale='inf'"),
}


@pytest.mark.parametrize("name", sorted(BAD_CFGS))
def test_out_of_range_cfg_numbers_are_refused_naming_section_and_key(name):
    text, expected = BAD_CFGS[name]
    with pytest.raises(ValueError) as error:
        build_from_cfg(text)
    assert expected in str(error.value)
    assert len(str(error.value)) < 300


def test_huge_filters_are_refused_before_keras_allocates(tmp_path, monkeypatch, capsys):
    path = tmp_path / "big.cfg"
    path.write_text(cfg_with(CONV.format(8), CONV.format(99999999), HEAD))
    built = []
    monkeypatch.setattr(keras.layers, "Conv2D", lambda *a, **k: built.append(a))
    monkeypatch.setattr(keras, "Input", lambda *a, **k: built.append(a))
    with pytest.raises(ValueError, match=r"big.cfg:\d+ section 2 \[conv\]: filters=99999999"):
        build_from_cfg(str(path))
    assert built == []
    for argv in (["layers", str(path)], ["convert", str(path), "x.weights", "x.keras"]):
        assert darknet_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: big.cfg:")
        assert "section 2" in err[0] and "filters=99999999" in err[0]


def test_the_limits_leave_published_sizes_alone():
    rows = layer_table(read_cfg(TINY_CFG), input_size=1024)
    assert rows[0].output == (1024, 1024, 8)
    # YOLOv2's largest conv (3x3, 1280 -> 1024) and a 608-px first layer are well inside.
    assert 3 * 3 * 1280 * 1024 < limits.MAX_LAYER_PARAMS
    assert 608 * 608 * 32 < limits.MAX_FEATURE_VALUES


def test_unreadable_and_oversized_cfg_files_name_the_file(tmp_path, capsys):
    binary = tmp_path / "binary.cfg"
    binary.write_bytes(b"[net]\n\xff\xfe\x00width=3\n")
    oversized = tmp_path / "huge.cfg"
    oversized.write_text(NET + "#" * (limits.MAX_CFG_BYTES + 1))
    for path, expected in ((binary, "cannot read the cfg"), (oversized, "too large for a cfg")):
        assert darknet_main(["layers", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0] and expected in err[0]
    good = tmp_path / "tiny.cfg"
    good.write_text(TINY_CFG)
    assert darknet_main(["layers", str(good), "--input-size", "-32"]) == 2
    assert capsys.readouterr().err == "error: --input-size: width=-32 is outside [1, 8192]\n"


def test_weights_size_is_checked_before_the_body_is_read(tmp_path, monkeypatch):
    path = tmp_path / "huge.weights"
    write_weights(str(path), random_layers(TINY_CFG))
    with open(path, "r+b") as f:
        f.truncate(8 * 2**30)  # sparse: 8 GB that reading would have to allocate
    specs = cfg_conv_specs(TINY_CFG)
    floats = sum(spec.floats for spec in specs)
    read = []
    real_open = open

    def spy_open(*args, **kwargs):
        handle = real_open(*args, **kwargs)
        real_read = handle.read
        handle.read = lambda n=-1: read.append(n) or real_read(n)
        return handle

    monkeypatch.setattr("builtins.open", spy_open)
    with pytest.raises(ValueError) as error:
        read_weights(str(path), specs)
    message = str(error.value)
    assert f"({8 * 2**30 - 20} bytes)" in message and f"need {floats} floats" in message
    assert read == [20]  # the header only


# ---------------------------------------------------------------- a cfg and its weights


@pytest.fixture
def pair(tmp_path):
    """A tiny cfg file and a .weights file written for it."""
    cfg, weights = tmp_path / "tiny.cfg", tmp_path / "tiny.weights"
    cfg.write_text(TINY_CFG)
    write_weights(str(weights), random_layers(TINY_CFG))
    return cfg, weights


def one_error_line(capsys, argv: list[str]) -> str:
    assert darknet_main([str(a) for a in argv]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    return line


def test_convert_names_the_weights_beside_a_cfg_error(pair, tmp_path, capsys):
    cfg, weights = pair
    bad = tmp_path / "bad.cfg"
    bad.write_text(TINY_CFG.replace("filters=16\nsize=3", "filters=0\nsize=3", 1))
    line = one_error_line(capsys, ["convert", bad, weights, tmp_path / "x.keras"])
    assert line.startswith("error: bad.cfg:") and "filters=0 is outside" in line
    assert line.endswith(f"(cfg {bad}, weights {weights})")


def test_convert_names_the_cfg_beside_a_weights_error(pair, tmp_path, capsys):
    cfg, weights = pair
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size - 4)  # one float short
    line = one_error_line(capsys, ["convert", cfg, weights, tmp_path / "x.keras"])
    assert line.startswith("error: tiny.weights: after its 20-byte 0.2.0 header")
    assert line.endswith(f"(cfg {cfg}, weights {weights})")
    assert not (tmp_path / "x.keras").exists()


def test_export_names_the_checkpoint_beside_a_cfg_mismatch(pair, tmp_path, capsys):
    cfg, weights = pair
    checkpoint = tmp_path / "tiny.keras"
    assert darknet_main(["convert", str(cfg), str(weights), str(checkpoint)]) == 0
    other = tmp_path / "other.cfg"
    other.write_text(TINY_CFG.replace("filters=16\nsize=3", "filters=24\nsize=3", 1))
    out = tmp_path / "o.weights"
    line = one_error_line(capsys, ["export", checkpoint, out, "--cfg", other])
    assert "convs do not match the cfg's" in line
    assert line.endswith(f"(cfg {other}, checkpoint {checkpoint})") and not out.exists()


def test_the_python_api_names_both_files_of_a_pair(pair, tmp_path):
    from detector.darknet.transfer import load_darknet_weights, load_init_weights

    cfg, weights = pair
    bad = tmp_path / "bad.cfg"
    bad.write_text(TINY_CFG.replace("stride=1", "stride=0", 1))
    model = build_from_cfg(str(cfg))
    for call in (load_init_weights, load_darknet_weights):
        with pytest.raises(ValueError) as info:
            call(model, str(weights), str(bad))
        assert str(info.value).startswith("bad.cfg:") and "stride=0" in str(info.value)
        assert str(info.value).endswith(f"(cfg {bad}, weights {weights})")
    with pytest.raises(ValueError) as info:  # a cfg given as text is never quoted
        load_init_weights(model, str(weights), TINY_CFG.replace("stride=1", "stride=0", 1))
    assert str(info.value).startswith("cfg:") and str(info.value).endswith(f"(weights {weights})")
    assert "[net]" not in str(info.value)
