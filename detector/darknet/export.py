"""Whether a Keras model can be written for darknet, and writing it.

A ``.weights`` file holds only the conv values; darknet gets the architecture from a cfg.
So a model is exportable when every layer is one darknet has with the same arithmetic
(conv + batch norm + leaky/linear/relu/logistic, max-pool, route, reorg, region) and its
convs are named conv_1..conv_N in cfg order.
"""

from __future__ import annotations

import math

import keras

from detector.darknet.pair import naming_both
from detector.darknet.transfer import (
    cfg_conv_specs,
    conv_layers,
    load_checkpoint,
    model_conv_specs,
    save_darknet_weights,
)
from detector.darknet.weights import ConvSpec
from detector.model.layers import SpaceToDepth, YoloHead


def export_problems(model: keras.Model) -> list[str]:
    """Why ``model`` has no darknet equivalent: one line per offending layer (or [])."""
    problems = []
    try:
        conv_layers(model)
    except ValueError as error:
        problems.append(str(error))
    for layer in model.layers:
        problem = _layer_problem(layer)
        if problem:
            problems.append(f"{layer.name} ({type(layer).__name__}): {problem}")
    return problems


def _layer_problem(layer) -> str | None:
    """What keeps one layer from darknet, or None."""
    if isinstance(layer, keras.layers.Conv2D):
        return _conv_problem(layer)
    if isinstance(layer, keras.layers.MaxPooling2D):
        (ph, pw), (sh, sw) = layer.pool_size, layer.strides
        if ph != pw or sh != sw or layer.padding != "same" or (sh > 1 and ph > 2):
            return "darknet pools are square, 'same', and size 2 or stride 1"
        return None
    if isinstance(layer, SpaceToDepth):
        if layer.order != "darknet":
            return (
                "channel order 'tf'; darknet's [reorg] orders channels differently, so "
                "darknet would compute another function with these weights"
            )
        return None
    if isinstance(layer, keras.layers.BatchNormalization):
        return None if layer.center and layer.scale else "needs both scale and shift"
    if isinstance(layer, keras.layers.LeakyReLU):
        return None if math.isclose(layer.negative_slope, 0.1) else "darknet's leaky slope is 0.1"
    if isinstance(layer, keras.layers.Rescaling):
        ok = math.isclose(float(layer.scale), 1 / 255) and float(layer.offset) == 0
        return None if ok else "darknet feeds pixels / 255"
    if isinstance(layer, keras.layers.ZeroPadding2D):
        (top, bottom), (left, right) = layer.padding
        return None if top == bottom == left == right else "darknet pads symmetrically"
    if isinstance(layer, keras.layers.Activation):
        name = keras.activations.serialize(layer.activation)
        name = name if isinstance(name, str) else name.get("config", {}).get("name", name)
        return None if name in ("sigmoid", "linear") else f"activation {name}"
    allowed = (keras.layers.InputLayer, keras.layers.Concatenate, keras.layers.ReLU, YoloHead)
    return None if isinstance(layer, allowed) else "no darknet layer computes this"


def _conv_problem(conv: keras.layers.Conv2D) -> str | None:
    (kh, kw), (sh, sw) = conv.kernel_size, conv.strides
    if kh != kw or sh != sw or tuple(conv.dilation_rate) != (1, 1) or conv.groups != 1:
        return "darknet convs are square, undilated, ungrouped"
    if conv.padding == "same" and (sh != 1 or kh % 2 == 0):
        return "'same' padding with stride > 1 or an even kernel is asymmetric"
    if keras.activations.serialize(conv.activation) not in ("linear", None):
        return "an activation inside the conv"
    return None


def export_weights(checkpoint: str, out: str, cfg: str | None = None) -> int:
    """Writes a checkpoint's conv layers as a darknet ``.weights`` file (header 0.2.0).

    Args:
        checkpoint: str. A ``.keras`` inference model (e.g. from ``convert`` or training).
        out: str. The ``.weights`` file to write.
        cfg: str or None. Check the model's convs against this cfg before writing.

    Returns:
        The number of conv layers written.

    Raises:
        ValueError: the model is not darknet-expressible, or does not match ``cfg``.
    """
    model = load_checkpoint(checkpoint)
    problems = export_problems(model)
    if problems:
        raise ValueError("the model has no darknet equivalent: " + "; ".join(problems))
    if cfg:
        with naming_both(cfg=cfg, checkpoint=checkpoint):
            _check_against_cfg(model_conv_specs(model), cfg_conv_specs(cfg))
    return save_darknet_weights(model, out)


def _check_against_cfg(mine: list[ConvSpec], theirs: list[ConvSpec]) -> None:
    """ValueError naming the first conv where a model's convs and a cfg's differ."""
    if mine == theirs:
        return
    k = next((i for i, (a, b) in enumerate(zip(mine, theirs, strict=False)) if a != b), len(mine))
    raise ValueError(
        f"the model's {len(mine)} convs do not match the cfg's "
        f"{len(theirs)}; first difference at conv {k + 1}: model "
        f"{mine[k] if k < len(mine) else '-'}, cfg "
        f"{theirs[k] if k < len(theirs) else '-'}"
    )
