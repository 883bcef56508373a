"""Moving conv weights between Keras models and darknet files (or other checkpoints).

A model's conv layers are found by name: ``conv_1`` .. ``conv_N`` (darknet's order) with
``bn_k`` when batch-normalised; this holds for ``detector.model.network.build_inference_model``
and for ``build_from_cfg``. Darknet's batch norm divides by ``sqrt(var) + 1e-6``, Keras'
by ``sqrt(var + eps)``; the stored variance is converted so both compute the same.
"""

from __future__ import annotations

import os

import keras
import numpy as np

from detector.darknet.cfg import layer_table, read_cfg
from detector.darknet.pair import naming_both
from detector.darknet.weights import (
    FLOAT,
    ConvSpec,
    ConvWeights,
    Header,
    read_header,
    read_weights,
    write_weights,
)

DARKNET_BN_EPSILON = 1e-6  # added to sqrt(var) in darknet's normalize_cpu


def _flat_layers(model: keras.Model) -> dict:
    """Every layer by name, looking inside nested models (a training model wraps one)."""
    found = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.update(_flat_layers(layer))
        found[layer.name] = layer
    return found


def conv_layers(model: keras.Model) -> list[tuple[keras.layers.Conv2D, object]]:
    """(conv_k, bn_k or None) for k = 1..N, in darknet's order.

    Raises:
        ValueError: a Conv2D not named conv_k, or the numbers are not 1..N.
    """
    layers = _flat_layers(model)
    convs = {}
    for name, layer in layers.items():
        if isinstance(layer, keras.layers.Conv2D):
            number = name.removeprefix("conv_")
            if not name.startswith("conv_") or not number.isdigit():
                raise ValueError(f"conv layer {name!r} is not named conv_<k>: no darknet order")
            convs[int(number)] = layer
    if sorted(convs) != list(range(1, len(convs) + 1)):
        raise ValueError(f"conv layers are numbered {sorted(convs)}, not 1..{len(convs)}")
    return [(convs[k], layers.get(f"bn_{k}")) for k in range(1, len(convs) + 1)]


def model_conv_specs(model: keras.Model) -> list[ConvSpec]:
    """The ConvSpec of each conv_k: what a darknet file stores for it."""
    specs = []
    for conv, bn in conv_layers(model):
        kh, kw, c_in, c_out = conv.kernel.shape
        if kh != kw:
            raise ValueError(f"{conv.name}: darknet kernels are square, got {kh}x{kw}")
        specs.append(ConvSpec(int(c_out), int(c_in), int(kh), bn is not None))
    return specs


def cfg_conv_specs(cfg: str) -> list[ConvSpec]:
    """The ConvSpec of each [convolutional] of a cfg (path or text), in order."""
    rows = layer_table(read_cfg(cfg))
    return [
        ConvSpec(r.filters, r.input[2], r.size, r.batch_normalize) for r in rows if r.kind == "conv"
    ]


def set_conv_weights(conv, bn, layer: ConvWeights) -> None:
    """Writes one darknet layer into conv (+ bn): kernel (n, c, k, k) -> (k, k, c, n).

    Batch norm: darknet divides by ``s = sqrt(var) + 1e-6``, Keras by
    ``sqrt(var' + eps)``; we store ``var' = s² - eps``. Where that would be negative
    (var below about eps, near-dead channels) ``var' = 0`` and the scale takes the
    difference, ``gamma' = gamma · sqrt(eps) / s``. Both are exact up to float32 rounding,
    for every var >= 0 including 0.
    """
    conv.kernel.assign(np.transpose(layer.weights, (2, 3, 1, 0)))
    if bn is None:
        if conv.use_bias:
            conv.bias.assign(layer.biases)
        return
    if conv.use_bias:
        conv.bias.assign(np.zeros_like(layer.biases))
    std = np.sqrt(layer.rolling_variance.astype(np.float64)) + DARKNET_BN_EPSILON
    variance = std**2 - bn.epsilon
    small = variance < 0
    gamma = layer.scales * np.where(small, np.sqrt(bn.epsilon) / std, 1.0)
    bn.gamma.assign(gamma.astype(np.float32))
    bn.beta.assign(layer.biases)
    bn.moving_mean.assign(layer.rolling_mean)
    bn.moving_variance.assign(np.where(small, 0.0, variance).astype(np.float32))


def get_conv_weights(conv, bn) -> ConvWeights:
    """Reads conv (+ bn) back into darknet's layout (inverse of ``set_conv_weights``).

    The variance is ``(sqrt(var' + eps) - 1e-6)²`` and the scale gamma: the same function
    in darknet; for channels whose scale took the difference on loading, another (scale,
    variance) pair than the original file's.
    """
    kernel = np.transpose(keras.ops.convert_to_numpy(conv.kernel), (3, 2, 0, 1)).astype(FLOAT)
    bias = keras.ops.convert_to_numpy(conv.bias) if conv.use_bias else None
    if bn is None:
        if bias is None:
            bias = np.zeros(kernel.shape[0], FLOAT)
        return ConvWeights(bias.astype(FLOAT), kernel)
    if not (bn.center and bn.scale):
        raise ValueError(f"{bn.name}: darknet batch norm has both a scale and a shift")
    mean = keras.ops.convert_to_numpy(bn.moving_mean).astype(np.float64)
    if bias is not None:  # a conv bias before BN only shifts the mean
        mean = mean - bias
    var = keras.ops.convert_to_numpy(bn.moving_variance).astype(np.float64)
    std = np.sqrt(np.maximum(var + bn.epsilon, 0.0)) - DARKNET_BN_EPSILON
    return ConvWeights(
        keras.ops.convert_to_numpy(bn.beta).astype(FLOAT),
        kernel,
        keras.ops.convert_to_numpy(bn.gamma).astype(FLOAT),
        mean.astype(FLOAT),
        (np.maximum(std, 0.0) ** 2).astype(FLOAT),
    )


def load_darknet_weights(
    model: keras.Model, path: str, cfg: str | None = None, allow_partial: bool = False
) -> int:
    """Loads a darknet ``.weights`` file into the model's conv_k (+ bn_k) layers.

    Args:
        model: keras.Model. Whose conv layers match the file's, in order.
        path: str. The weights file.
        cfg: str or None. The cfg the file was written for; None = the model's own convs.
        allow_partial: bool. Accept a file with only the first N conv layers.

    Returns:
        The number of conv layers loaded.

    Raises:
        ValueError: a size mismatch (see ``read_weights``), or a layer whose shape differs
        between the cfg and the model; given a cfg, its errors and the file's name both.
    """
    targets = conv_layers(model)
    with naming_both(cfg=cfg, weights=path if cfg else None):
        specs = cfg_conv_specs(cfg) if cfg else model_conv_specs(model)
        _, layers = read_weights(path, specs, allow_partial)
        model_specs = model_conv_specs(model)
        for k, layer in enumerate(layers, 1):
            if k > len(targets) or layer.spec != model_specs[k - 1]:
                raise ValueError(
                    f"{os.path.basename(path)}: conv {k} of the file is "
                    f"{layer.spec}, the model's is "
                    f"{model_specs[k - 1] if k <= len(targets) else 'missing'}"
                )
            set_conv_weights(*targets[k - 1], layer)
    return len(layers)


def save_darknet_weights(model: keras.Model, path: str, header: Header | None = None) -> int:
    """Writes the model's conv layers as a darknet ``.weights`` file; returns how many."""
    layers = [get_conv_weights(conv, bn) for conv, bn in conv_layers(model)]
    write_weights(path, layers, header)
    return len(layers)


def load_init_weights(
    model: keras.Model, path: str, cfg_path: str | None = None
) -> tuple[int, int]:
    """Initialises ``model`` (before training) from a checkpoint or a darknet file.

    - ``.keras``: every layer whose name and weight shapes match is copied; others stay.
    - anything else is read as darknet weights (``.weights``, ``.conv.23``, ...), partial
      files allowed, conv k of the file into ``conv_k``. Layers whose shape differs are
      skipped: typically the prediction conv when the number of classes differs. Without
      ``cfg_path`` the file must follow the model's own convs, except the last one.

    Args:
        model: keras.Model. An inference model (``build_inference_model`` or
            ``build_from_cfg``), or a model that contains one.
        path: str. The file.
        cfg_path: str or None. For darknet files: the cfg they were written for.

    Returns:
        (conv layers loaded, conv layers in the model).

    Raises:
        ValueError: missing file, a file that fits neither the cfg nor the model, or
        nothing at all loaded; given a cfg, its errors and the file's name both.
    """
    if not os.path.isfile(path):
        raise ValueError(f"model.init_weights: file not found: {path}")
    darknet = not path.endswith(".keras")
    with naming_both(**({"cfg": cfg_path, "weights": path} if darknet and cfg_path else {})):
        if darknet:
            loaded = _load_matching_convs(model, path, cfg_path)
        else:
            loaded = _copy_matching(load_checkpoint(path), model)
        if loaded == 0:
            raise ValueError(f"model.init_weights: no layer of {path} fits the model")
    return loaded, len(conv_layers(model))


def _load_matching_convs(model: keras.Model, path: str, cfg_path: str | None) -> int:
    """Loads conv k of the darknet file into ``conv_k`` where the shapes agree (see
    `load_init_weights`); returns how many."""
    targets = conv_layers(model)
    specs = cfg_conv_specs(cfg_path) if cfg_path else _file_specs(model, path)
    _, layers = read_weights(path, specs, allow_partial=True)
    loaded = 0
    model_specs = model_conv_specs(model)
    for k, layer in enumerate(layers[: len(targets)], 1):
        if layer.spec == model_specs[k - 1]:
            set_conv_weights(*targets[k - 1], layer)
            loaded += 1
    return loaded


def load_checkpoint(path: str) -> keras.Model:
    """A ``.keras`` checkpoint (safe mode, not compiled); any failure is a ValueError."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path}")
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # Keras raises several types for a damaged or foreign file
        raise ValueError(f"cannot read checkpoint {path}: {error}") from error


def _file_specs(model: keras.Model, path: str) -> list[ConvSpec]:
    """The model's conv specs, with the last conv's filters taken from the file's size.

    A detector file for another number of classes differs from the model only in the
    prediction conv's filters; its size tells how many.
    """
    specs = model_conv_specs(model)
    with open(path, "rb") as f:
        start = f.read(20)
    body = (os.path.getsize(path) - read_header(start, os.path.basename(path)).nbytes) // 4
    last = specs[-1]
    rest = body - sum(spec.floats for spec in specs[:-1])
    per_filter = (4 if last.batch_normalize else 1) + last.channels * last.size**2
    if rest > 0 and rest % per_filter == 0:
        specs[-1] = ConvSpec(rest // per_filter, last.channels, last.size, last.batch_normalize)
    return specs


def _copy_matching(source: keras.Model, target: keras.Model) -> int:
    """Copies weights of same-named, same-shaped layers; returns how many convs it copied."""
    sources = _flat_layers(source)
    copied = 0
    for name, layer in _flat_layers(target).items():
        other = sources.get(name)
        if not layer.weights or other is None or isinstance(layer, keras.Model):
            continue
        mine, theirs = layer.get_weights(), other.get_weights()
        if len(mine) == len(theirs) and all(
            a.shape == b.shape for a, b in zip(mine, theirs, strict=True)
        ):
            layer.set_weights(theirs)
            copied += isinstance(layer, keras.layers.Conv2D)
    return copied
