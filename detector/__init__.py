"""A YOLOv2-style object detector trained with TensorFlow 2 / Keras 3."""
