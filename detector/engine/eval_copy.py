"""The run's evaluation model: a float32 copy of the network being trained that takes its
weights (the optimiser's EMA of them when it keeps one) on demand. `BestCocoAP` evaluates
it, `SaveLast` saves it."""

import keras
import numpy as np

from detector.model.network import float32_config


def ema_weights(inference_model, optimizer) -> list[np.ndarray]:
    """The inference model's weights with each trainable variable replaced by the
    optimiser's moving average of it (Keras ``use_ema``), in ``get_weights`` order.
    Without EMA, the weights themselves.

    Under ``mixed_float16`` Keras wraps the optimiser in a ``LossScaleOptimizer``, which
    refuses ``use_ema`` itself: the averages are kept by its ``inner_optimizer``.
    """
    while optimizer is not None and hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    averages = {}
    if optimizer is not None and getattr(optimizer, "use_ema", False) and optimizer.built:
        pairs = zip(
            optimizer._trainable_variables,
            optimizer._model_variables_moving_average,
            strict=True,
        )
        averages = {id(var): avg for var, avg in pairs if avg is not None}
    return [np.asarray(averages.get(id(v), v)) for v in inference_model.weights]


class EvalCopy:
    """A float32 copy of the inference model, rebuilt from its config (no custom_objects:
    every layer is registered), that takes the training weights on demand.

    Args:
        inference_model: keras.Model. The network being trained (its weights are read,
            never swapped).
    """

    def __init__(self, inference_model: keras.Model):
        self.inference_model = inference_model
        self._model = None

    @property
    def model(self) -> keras.Model:
        """The evaluation model (built on first use, outside the training's scope)."""
        if self._model is None:
            config = float32_config(self.inference_model.get_config())
            self._model = keras.Model.from_config(config)
        return self._model

    def sync(self, optimizer=None) -> keras.Model:
        """Copies the current weights in (the optimiser's EMA of them when it keeps one)
        and returns the evaluation model."""
        self.model.set_weights(ema_weights(self.inference_model, optimizer))
        return self.model

    def snapshot(self, optimizer=None) -> list[np.ndarray]:
        """A copy of the weights `sync` would copy in, in ``get_weights`` order: later
        training steps do not change it."""
        return [np.array(w, copy=True) for w in ema_weights(self.inference_model, optimizer)]
