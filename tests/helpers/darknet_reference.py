"""Darknet's arithmetic transcribed to numpy (the reference the darknet tests compare with),
and the small cfgs they use."""

from pathlib import Path

import numpy as np
import pytest

from detector.darknet.cfg import layer_table, read_cfg
from detector.darknet.transfer import (
    cfg_conv_specs,
)
from detector.darknet.weights import ConvWeights

CFG_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "darknet" / "cfg"
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
