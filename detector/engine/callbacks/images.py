"""Validation images with their predicted boxes in TensorBoard, at each evaluation."""

from detector.engine.callbacks.listeners import EvalListener, Evaluation
from detector.inference.detector import draw_predictions


class ValImages(EvalListener):
    """A part of `BestCocoAP`: the first `count` validation images with the evaluated
    model's predictions, written to TensorBoard (``val_predictions``, step = the 1-based
    epoch) where the evaluation ran (with ``eval.async``: in the worker thread, with the
    snapshot model).

    Args:
        log_dir: str. The TensorBoard folder of the images.
        dataset: Dataset. The validation split.
        count: int. Images drawn. Defaults to 4.
    """

    def __init__(self, log_dir: str, dataset, count: int = 4):
        self.log_dir = log_dir
        self.dataset = dataset
        self.count = count
        self.writer = None

    def on_train_begin(self) -> None:
        import tensorflow as tf

        self.writer = tf.summary.create_file_writer(self.log_dir)

    def on_evaluated(self, evaluation: Evaluation) -> None:
        import tensorflow as tf

        model, predict_fn = evaluation.model, evaluation.predict_fn
        drawn = draw_predictions(model, self.dataset, predict_fn, self.count)
        with self.writer.as_default():
            step = evaluation.epoch + 1
            tf.summary.image("val_predictions", drawn, step=step, max_outputs=self.count)
        self.writer.flush()

    def on_train_end(self) -> None:
        if self.writer is not None:
            self.writer.close()
