"""Checkpoint selection: the float32 evaluation copy, best-COCO-AP and last checkpoints.

`EvalCopy` is the one evaluation model of a run (built from the inference model's config,
float32, receiving the EMA weights on demand); `BestCocoAP` evaluates it and keeps the
best checkpoint, `SaveLast` saves it at every epoch end. Both are handed the same
`EvalCopy` by ``build.make_callbacks``, so neither reaches into the other.
"""

import math
import os

import keras
import numpy as np

from detector.evaluation import STAT_NAMES, evaluate_model
from detector.io import atomic_save, atomic_write_json
from detector.predict import draw_predictions, make_predict_fn


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


class BestCocoAP(keras.callbacks.Callback):
    """Evaluates COCO AP on the evaluation copy and keeps the checkpoint with the best AP.

    On evaluation epochs, and at the last epoch, it syncs the copy, runs
    ``evaluate_model`` and puts the 12 COCO numbers into ``logs`` (NaN on epochs without
    evaluation, so CSV columns stay fixed). On a new best AP it saves ``best.keras`` and
    ``best.json`` atomically, and ``pr_curve.png``.

    Args:
        eval_copy: EvalCopy. Of the network being trained.
        dataset: Dataset. Validation split. coco_gt: its pycocotools ground truth.
        run_dir: str. Where best.keras / best.json go.
        is_eval_epoch: callable(int) -> bool. Whether a 1-based epoch is evaluated
            (``EvalConfig.is_eval_epoch``); the last epoch always is.
        best_ap: float. Best AP so far (a resumed run passes its own). Defaults to -1.
        patience: int. Stop training after this many evaluations without a better AP
            (0 = never). Defaults to 0.
        image_dir: str or None. TensorBoard log folder for a few validation images with
            their predicted boxes at each evaluation. Defaults to None (no images).
        batch_size: int. Images per forward pass. Defaults to 16.
        **predict_kwargs: score_threshold, nms_iou, max_detections (``make_predict_fn``).
    """

    def __init__(
        self,
        eval_copy: EvalCopy,
        dataset,
        coco_gt,
        run_dir: str,
        is_eval_epoch,
        *,
        best_ap: float = -1.0,
        patience: int = 0,
        image_dir: str | None = None,
        batch_size: int = 16,
        **predict_kwargs,
    ):
        super().__init__()
        self.eval_copy = eval_copy
        self.dataset = dataset
        self.coco_gt = coco_gt
        self.run_dir = run_dir
        self.is_eval_epoch = is_eval_epoch
        self.best_ap = best_ap
        self.patience = patience
        self.stale = 0
        self.early_stopped = False
        self.batch_size = batch_size
        self.predict_kwargs = predict_kwargs
        self.image_dir = image_dir
        self.image_writer = None
        self.predict_fn = None

    def on_train_begin(self, logs=None):
        self.predict_fn = make_predict_fn(self.eval_copy.model, **self.predict_kwargs)
        if self.image_dir:
            import tensorflow as tf

            self.image_writer = tf.summary.create_file_writer(self.image_dir)

    def on_train_end(self, logs=None):
        if self.image_writer is not None:
            self.image_writer.close()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        last = getattr(self.model, "stop_training", False) or epoch + 1 == self.params.get("epochs")
        if not (self.is_eval_epoch(epoch + 1) or last):
            logs.update(dict.fromkeys(STAT_NAMES, math.nan))
            return
        curves = {}
        metrics = self.evaluate(curves)
        logs.update({name: metrics[name] for name in STAT_NAMES})
        if self.image_writer is not None:
            self.log_images(epoch)
        if metrics["AP"] > self.best_ap:
            self.best_ap = metrics["AP"]
            self.stale = 0
            self.save_best(epoch, metrics, curves)
            return
        self.stale += 1
        if self.patience and self.stale >= self.patience:
            print(f"\nno better AP in {self.stale} evaluations: stopping (train.patience)")
            self.early_stopped = True
            self.model.stop_training = True

    def evaluate(self, curves=None) -> dict:
        """COCO metrics of the current (EMA) weights."""
        optimizer = getattr(self.model, "optimizer", None) if self.model is not None else None
        model = self.eval_copy.sync(optimizer)
        input_size = model.get_layer("yolo_head").input_size
        metrics, _ = evaluate_model(
            model,
            self.dataset,
            input_size,
            self.coco_gt,
            curves,
            batch_size=self.batch_size,
            predict_fn=self.predict_fn,
        )
        return metrics

    def log_images(self, epoch: int, count: int = 4) -> None:
        """The first `count` validation images with their predictions, in TensorBoard."""
        import tensorflow as tf

        drawn = draw_predictions(self.eval_copy.model, self.dataset, self.predict_fn, count)
        with self.image_writer.as_default():
            tf.summary.image("val_predictions", drawn, step=epoch + 1, max_outputs=count)
        self.image_writer.flush()

    def save_best(self, epoch: int, metrics: dict, curves: dict | None = None) -> None:
        path = os.path.join(self.run_dir, "best.keras")
        atomic_save(path, self.eval_copy.model.save, suffix=".keras")
        atomic_write_json(os.path.join(self.run_dir, "best.json"), {"epoch": epoch + 1, **metrics})
        if curves:
            from detector.plots import plot_pr

            title = f"best model (epoch {epoch + 1}): precision-recall, class mean"
            plot_pr(curves, os.path.join(self.run_dir, "pr_curve.png"), title)


class SaveLast(keras.callbacks.Callback):
    """Saves the evaluation copy (float32, the EMA weights when there are) to
    ``last.keras`` atomically at every epoch end.

    Args:
        eval_copy: EvalCopy. Of the network being trained.
        path: str. The checkpoint file.
    """

    def __init__(self, eval_copy: EvalCopy, path: str):
        super().__init__()
        self.eval_copy = eval_copy
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        model = self.eval_copy.sync(self.model.optimizer)
        atomic_save(self.path, model.save, suffix=".keras")
