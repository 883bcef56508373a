"""Custom Keras layers of the detector; every one is registered and serializable."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="detector")
class SpaceToDepth(keras.layers.Layer):
    """YOLOv2's passthrough ("reorg"): moves each block_size² patch into channels.

    Input (B, H, W, C) with H and W multiples of block_size; output
    (B, H/b, W/b, b²·C). The channel order is that of ``tf.nn.space_to_depth``:
    output channel ``(dy·b + dx)·C + c`` holds input ``(b·y + dy, b·x + dx, c)``.

    Args:
        block_size: int. Side of the square block moved into channels. Defaults to 2.
    """

    def __init__(self, block_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        if int(block_size) < 1:
            raise ValueError(f"SpaceToDepth: block_size must be >= 1, got {block_size}")
        self.block_size = int(block_size)

    def call(self, inputs):
        b = self.block_size
        shape = ops.shape(inputs)
        batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
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
        return {**super().get_config(), "block_size": self.block_size}


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
