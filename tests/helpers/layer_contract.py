"""The contract every custom layer keeps (keras-hub's ``run_serialization_test`` idea).

``check_layer_contract(layer, inputs)`` proves that a layer can be rebuilt from its config
and saved in a ``.keras`` file and loaded back with ``safe_mode=True`` and no
``custom_objects``, computing the same outputs each time.
"""

import json
import os
import tempfile

import keras
import numpy as np


def _as_list(inputs) -> list[np.ndarray]:
    return [np.asarray(x) for x in inputs] if isinstance(inputs, list) else [np.asarray(inputs)]


def _to_numpy(outputs) -> list[np.ndarray]:
    outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
    return [keras.ops.convert_to_numpy(y) for y in outputs]


def _assert_same_outputs(actual, expected, what: str) -> None:
    actual, expected = _to_numpy(actual), _to_numpy(expected)
    assert len(actual) == len(expected), what
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6, err_msg=what)


def _check_output_shape(layer: keras.layers.Layer, inputs, outputs) -> None:
    """``compute_output_shape`` agrees with the computed outputs (batch dim left free)."""
    arrays = _as_list(inputs)
    shapes = [(None, *x.shape[1:]) for x in arrays]
    declared = layer.compute_output_shape(shapes if isinstance(inputs, list) else shapes[0])
    (actual,) = _to_numpy(outputs)
    assert len(declared) == actual.ndim, (declared, actual.shape)
    for want, got in zip(declared[1:], actual.shape[1:], strict=True):
        assert want is None or want == got, (declared, actual.shape)


def _check_config_round_trip(layer: keras.layers.Layer, inputs, outputs) -> None:
    config = layer.get_config()
    json.dumps(config)  # a .keras file stores it as JSON
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is type(layer) and revived.get_config() == config
    for copy in (clone, revived):
        copy(inputs)  # builds the weights
        copy.set_weights(layer.get_weights())
        _assert_same_outputs(copy(inputs), outputs, f"{type(layer).__name__} from its config")


def _check_keras_file(layer: keras.layers.Layer, inputs, outputs, folder: str) -> None:
    arrays = _as_list(inputs)
    symbolic = [keras.Input(shape=x.shape[1:], dtype=str(x.dtype)) for x in arrays]
    symbolic = symbolic if isinstance(inputs, list) else symbolic[0]
    model = keras.Model(symbolic, layer(symbolic))
    path = os.path.join(folder, f"{layer.name}.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert type(loaded.get_layer(layer.name)) is type(layer)
    assert loaded.get_layer(layer.name).get_config() == layer.get_config()
    feed = arrays if isinstance(inputs, list) else arrays[0]
    _assert_same_outputs(loaded(feed), outputs, f"{type(layer).__name__} after .keras load")


def check_layer_contract(layer: keras.layers.Layer, inputs, tmp_path=None) -> None:
    """Asserts the serialization contract of ``layer`` on ``inputs``.

    Args:
        layer: keras.layers.Layer. A registered custom layer, not yet used in a model.
        inputs: array, or list of arrays for a multi-input layer; batch dimension first.
        tmp_path: path-like or None. Folder for the ``.keras`` file. Defaults to a
            temporary folder removed afterwards.

    Checks: ``compute_output_shape`` matches the outputs; ``get_config`` is JSON and
    ``from_config`` (directly and through Keras' registry) gives the same config and,
    with the same weights, the same outputs; a functional model holding the layer,
    saved as ``.keras`` and loaded with ``safe_mode=True``, gives the same outputs.
    """
    inputs = list(inputs) if isinstance(inputs, tuple) else inputs
    outputs = layer(inputs)
    _check_output_shape(layer, inputs, outputs)
    _check_config_round_trip(layer, inputs, outputs)
    if tmp_path is not None:
        _check_keras_file(layer, inputs, outputs, str(tmp_path))
        return
    with tempfile.TemporaryDirectory() as folder:
        _check_keras_file(layer, inputs, outputs, folder)
