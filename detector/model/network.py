"""The YOLOv2 networks (functional API): Darknet-19 with passthrough, and the tiny variant.

Layer names are predictable so darknet weights can be mapped onto them: the k-th
convolution (1-based, in darknet's order) is ``conv_k`` with ``bn_k`` and ``leaky_k``;
the last convolution (the prediction, linear, with bias) is ``conv_N``.
"""

import keras
import numpy as np

from detector.model.layers import SpaceToDepth, YoloHead
from detector.model.loss import YoloLoss

# Darknet-19 as in darknet's yolov2.cfg: (filters, kernel) per conv, "M" = 2x2 max-pool.
DARKNET19_BODY = [
    (32, 3),
    "M",
    (64, 3),
    "M",
    (128, 3),
    (64, 1),
    (128, 3),
    "M",
    (256, 3),
    (128, 1),
    (256, 3),
    "M",
    (512, 3),
    (256, 1),
    (512, 3),
    (256, 1),
    (512, 3),
    "P",
    "M",
    (1024, 3),
    (512, 1),
    (1024, 3),
    (512, 1),
    (1024, 3),
    (1024, 3),
    (1024, 3),
]
# yolov2-tiny.cfg; "m" is the size-2 stride-1 max-pool that keeps the 13x13 grid.
TINY_BODY = [
    (16, 3),
    "M",
    (32, 3),
    "M",
    (64, 3),
    "M",
    (128, 3),
    "M",
    (256, 3),
    "M",
    (512, 3),
    "m",
    (1024, 3),
    (512, 3),
]
VARIANTS = {"darknet19": DARKNET19_BODY, "tiny": TINY_BODY}
PASSTHROUGH_FILTERS = 64


def scaled_filters(filters: int, width: float) -> int:
    """Filters after the width multiplier, rounded to a multiple of 8 (at least 8)."""
    return max(8, int(round(filters * width / 8)) * 8)


def conv_block(x, filters: int, kernel: int, index: int, sync_bn: bool = False):
    """Conv (no bias) + BatchNorm + LeakyReLU(0.1), named ``conv_i``/``bn_i``/``leaky_i``.

    ``sync_bn``: under tf.distribute, batch statistics over all replicas' images."""
    x = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"conv_{index}")(
        x
    )
    x = keras.layers.BatchNormalization(
        momentum=0.97, epsilon=1e-5, synchronized=sync_bn, name=f"bn_{index}"
    )(x)
    return keras.layers.LeakyReLU(negative_slope=0.1, name=f"leaky_{index}")(x)


def build_inference_model(
    num_classes: int,
    anchors: list[list[float]],
    variant: str = "darknet19",
    width: float = 1.0,
    input_size: int = 416,
    class_names: list[str] | None = None,
    category_ids: list[int] | None = None,
    letterbox: bool = False,
    sync_bn: bool = False,
) -> keras.Model:
    """Builds the YOLOv2 inference network.

    Args:
        num_classes: int. Number of object classes C.
        anchors: list of [w, h]. A anchor sizes in grid cells (stride-32 units).
        variant: str. "darknet19" (with passthrough) or "tiny". Defaults to "darknet19".
        width: float. Channel multiplier for every conv but the prediction. Defaults to 1.0.
        input_size: int. Evaluation input side, recorded in the model. Defaults to 416.
        class_names: list of str or None. Defaults to "class_0".. "class_{C-1}".
        category_ids: list of int or None. Dataset ids of the classes. Defaults to 1..C.
        letterbox: bool. Recorded in the head: images are letterboxed to the input.
        sync_bn: bool. Synchronised BatchNorm (statistics over all replicas under
            tf.distribute; no effect on one device). Defaults to False.

    Returns:
        A functional model: images (B, H, W, 3) float pixels in 0..255 (RGB, any H and W
        multiple of 32) -> raw grid (B, H/32, W/32, A, 5 + C).
    """
    if variant not in VARIANTS:
        raise ValueError(f"model.variant: unknown {variant!r}; expected one of {list(VARIANTS)}")
    names = class_names or [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names given for {num_classes} classes")
    images = keras.Input(shape=(None, None, 3), name="images")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(images)
    index, pools, passthrough_source = 0, 0, None
    for spec in VARIANTS[variant]:
        if spec == "P":
            passthrough_source = x
        elif spec in ("M", "m"):
            pools += 1
            stride = 2 if spec == "M" else 1
            x = keras.layers.MaxPooling2D(2, stride, padding="same", name=f"pool_{pools}")(x)
        else:
            index += 1
            x = conv_block(x, scaled_filters(spec[0], width), spec[1], index, sync_bn)
    if passthrough_source is not None:
        index += 1
        route = conv_block(
            passthrough_source, scaled_filters(PASSTHROUGH_FILTERS, width), 1, index, sync_bn
        )
        route = SpaceToDepth(2, order="darknet", name="reorg")(route)  # as yolov2.weights
        x = keras.layers.Concatenate(name="route")([route, x])
        index += 1
        x = conv_block(x, scaled_filters(1024, width), 3, index, sync_bn)
    outputs = len(anchors) * (5 + num_classes)
    x = keras.layers.Conv2D(outputs, 1, name=f"conv_{index + 1}")(x)
    grid = YoloHead(anchors, names, input_size, category_ids, letterbox, name="yolo_head")(x)
    return keras.Model(images, grid, name=f"yolov2_{variant}")


def head_metadata(model: keras.Model) -> YoloHead:
    """The model's ``YoloHead`` layer, which carries anchors, class names and input size."""
    return model.get_layer("yolo_head")


def check_loss_matches_head(head: YoloHead, loss_layer: YoloLoss) -> None:
    """Raises ``ValueError`` if the loss's anchors or class count differ from the head's.

    Anchors are compared to float32 precision, the precision both layers compute in.
    """
    head_anchors = np.asarray(head.anchors, np.float64)
    loss_anchors = np.asarray(loss_layer.anchors, np.float64)
    same_shape = head_anchors.shape == loss_anchors.shape
    if not (same_shape and np.allclose(loss_anchors, head_anchors, rtol=1e-6, atol=0.0)):
        raise ValueError(
            f"build_training_model: loss anchors {loss_layer.anchors} differ from the "
            f"model head's anchors {head.anchors}"
        )
    if loss_layer.num_classes != len(head.class_names):
        raise ValueError(
            f"build_training_model: loss num_classes {loss_layer.num_classes} differs "
            f"from the model head's {len(head.class_names)} classes"
        )


def build_training_model(
    inference_model: keras.Model, loss_layer: YoloLoss, max_boxes: int
) -> keras.Model:
    """Wraps the inference model with the loss: ``[images, y_true, true_boxes]`` -> (B,) loss.

    Args:
        inference_model: keras.Model. From ``build_inference_model``; its ``YoloHead``
            is the source of truth for anchors and classes.
        loss_layer: YoloLoss. Must have the head's anchors and class count, else
            ``ValueError``.
        max_boxes: int. Rows M of ``true_boxes``.

    Returns:
        A functional model with inputs images (B, H, W, 3), y_true (B, H/32, W/32, A, 6)
        and true_boxes (B, M, 4), whose output is the per-image loss (B,). Compile it
        with ``loss=identity_loss`` and give ``fit`` any dummy target.
    """
    head = head_metadata(inference_model)
    check_loss_matches_head(head, loss_layer)
    images = keras.Input(shape=(None, None, 3), name="images")
    y_true = keras.Input(shape=(None, None, len(head.anchors), 6), name="y_true")
    true_boxes = keras.Input(shape=(max_boxes, 4), name="true_boxes")
    raw = inference_model(images)
    loss = loss_layer([raw, y_true, true_boxes])
    return keras.Model([images, y_true, true_boxes], loss, name="yolov2_training")


# Convolutions of darknet's ImageNet feature extractor at the start of each variant: the
# 18 of darknet19_448.conv.23 (Darknet-19 before its detection convs) and the 7 of
# ``darknet partial yolov2-tiny.cfg yolov2-tiny.weights yolov2-tiny.conv.13 13``.
BACKBONE_CONVS = {"darknet19": 18, "tiny": 7}


def freeze_layers(model: keras.Model, freeze: int | str) -> int:
    """Freezes the first convolutions ``conv_1..conv_N`` with their BatchNorm (fine-tuning).

    Frozen BatchNorm layers run in inference mode (Keras 3: a non-trainable
    ``BatchNormalization`` normalises with its moving statistics and never updates them),
    so a pre-trained backbone keeps the statistics it was trained with.

    Args:
        model: keras.Model. An inference model (``build_inference_model``).
        freeze: int or "backbone". N, or the variant's ImageNet feature extractor
            (`BACKBONE_CONVS`, read from the model's name). 0 freezes nothing.

    Returns:
        int. The number of convolutions frozen.

    Raises:
        ValueError: `freeze` names more convolutions than the model has before its
        prediction layer, or is not an int >= 0 / "backbone".
    """
    convs = [layer for layer in model.layers if layer.name.startswith("conv_")]
    if freeze == "backbone":
        variant = model.name.removeprefix("yolov2_")
        if variant not in BACKBONE_CONVS:
            raise ValueError(f"train.freeze: 'backbone' is unknown for the model {model.name!r}")
        count = BACKBONE_CONVS[variant]
    elif isinstance(freeze, int) and not isinstance(freeze, bool) and freeze >= 0:
        count = freeze
    else:
        raise ValueError(f"train.freeze: expected an int >= 0 or 'backbone', got {freeze!r}")
    if count > len(convs) - 1:
        raise ValueError(
            f"train.freeze: {count} convolutions asked, the model has {len(convs) - 1} "
            "before its prediction layer"
        )
    for k in range(1, count + 1):
        for name in (f"conv_{k}", f"bn_{k}"):
            model.get_layer(name).trainable = False
    return count


def float32_config(config):
    """A model config with every layer's dtype policy replaced by float32.

    Under a mixed-precision policy the variables are float32 already, so weights copy
    over unchanged; the evaluation model and the checkpoints it writes compute in float32.
    """
    if isinstance(config, dict):
        return {k: "float32" if k == "dtype" else float32_config(v) for k, v in config.items()}
    if isinstance(config, list):
        return [float32_config(v) for v in config]
    return config
