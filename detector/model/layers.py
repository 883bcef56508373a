"""Custom Keras layers of the detector; every one is registered and serializable."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="detector")
class SpaceToDepth(keras.layers.Layer):
    """YOLOv2's passthrough ("reorg"): moves each block_size² patch into channels.

    Input (B, H, W, C) with H and W multiples of block_size; output
    (B, H/b, W/b, b²·C). Two channel orders:

    - ``"tf"``: that of ``tf.nn.space_to_depth``: output channel ``(dy·b + dx)·C + c``
      holds input ``(b·y + dy, b·x + dx, c)``.
    - ``"darknet"``: exactly what darknet's ``[reorg]`` layer computes. Its forward pass
      calls ``reorg_cpu(input, w, h, c, batch, stride, forward=0, output)`` with the
      layer's *input* sizes, so (in NCHW, per image) the output buffer read as
      (C, H, W) at ``[k, j, i]`` takes the input buffer read as (C/b², b·H, b·W) at
      ``[k mod C/b², b·j + (k div C/b²) div b, b·i + (k div C/b²) mod b]``, and the
      output is that buffer read as (b²·C, H/b, W/b). An output cell then mixes values
      from several input rows: this is not a per-block permutation of space_to_depth,
      but YOLOv2's published weights were trained with it. C must be a multiple of b².

    Args:
        block_size: int. Side of the square block moved into channels. Defaults to 2.
        order: str. ``"tf"`` or ``"darknet"``, see above. Defaults to ``"tf"``.
    """

    ORDERS = ("tf", "darknet")

    def __init__(self, block_size: int = 2, order: str = "tf", **kwargs):
        super().__init__(**kwargs)
        if int(block_size) < 1:
            raise ValueError(f"SpaceToDepth: block_size must be >= 1, got {block_size}")
        if order not in self.ORDERS:
            raise ValueError(f"SpaceToDepth: order must be one of {self.ORDERS}, got {order!r}")
        self.block_size = int(block_size)
        self.order = order

    def build(self, input_shape):
        channels = input_shape[-1]
        b2 = self.block_size**2
        if self.order == "darknet" and channels is not None and channels % b2:
            raise ValueError(
                f"SpaceToDepth(order='darknet'): channels ({channels}) must be a multiple "
                f"of block_size² ({b2}), as darknet's reorg needs"
            )
        super().build(input_shape)

    def call(self, inputs):
        b = self.block_size
        shape = ops.shape(inputs)
        batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
        if self.order == "darknet":
            x = ops.transpose(inputs, (0, 3, 1, 2))
            x = ops.reshape(x, (batch, channels // (b * b), height, b, width, b))
            x = ops.transpose(x, (0, 3, 5, 1, 2, 4))
            x = ops.reshape(x, (batch, b * b * channels, height // b, width // b))
            return ops.transpose(x, (0, 2, 3, 1))
        x = ops.reshape(inputs, (batch, height // b, b, width // b, b, channels))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (batch, height // b, width // b, b * b * channels))

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        b = self.block_size
        return (
            batch,
            None if height is None else height // b,
            None if width is None else width // b,
            None if channels is None else channels * b * b,
        )

    def get_config(self):
        return {**super().get_config(), "block_size": self.block_size, "order": self.order}


@keras.saving.register_keras_serializable(package="detector")
class YoloHead(keras.layers.Layer):
    """Reshapes the flat prediction map to one row per anchor, and carries the metadata.

    Input (B, S_h, S_w, A·(5 + C)); output (B, S_h, S_w, A, 5 + C) holding, per
    anchor, the raw ``tx, ty, tw, th, to`` and C class logits. The layer has no
    weights; it keeps what a checkpoint needs to be used alone (anchors, class
    names, input size), so ``evaluate.py`` can run on a ``.keras`` file and nothing else.

    Args:
        anchors: list of [w, h]. Anchor sizes in grid cells (darknet convention).
        class_names: list of str. Class names, index = class index.
        input_size: int. Input side in pixels the model is evaluated at.
        category_ids: list of int or None. The dataset's own id of each class.
            Defaults to 1..C.
        letterbox: bool. Whether images are letterboxed (else plainly resized) to the
            input. Defaults to False.
    """

    def __init__(
        self, anchors, class_names, input_size, category_ids=None, letterbox=False, **kwargs
    ):
        super().__init__(**kwargs)
        self.letterbox = bool(letterbox)
        self.anchors = [[float(w), float(h)] for w, h in anchors]
        self.class_names = [str(n) for n in class_names]
        self.input_size = int(input_size)
        ids = category_ids if category_ids is not None else range(1, len(class_names) + 1)
        self.category_ids = [int(i) for i in ids]

    @property
    def num_outputs(self) -> int:
        return 5 + len(self.class_names)

    def call(self, inputs):
        shape = ops.shape(inputs)
        new_shape = (shape[0], shape[1], shape[2], len(self.anchors), self.num_outputs)
        return ops.reshape(inputs, new_shape)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:3], len(self.anchors), self.num_outputs)

    def get_config(self):
        return {
            **super().get_config(),
            "anchors": self.anchors,
            "class_names": self.class_names,
            "input_size": self.input_size,
            "category_ids": self.category_ids,
            "letterbox": self.letterbox,
        }
