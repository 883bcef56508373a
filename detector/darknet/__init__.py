"""Darknet interoperability: cfg files, ``.weights`` files, and darknet's inference arithmetic.

- ``cfg``: parse a cfg (``section``: one section); darknet's layer table (shapes, BFLOPs);
  ``region``: the ``[region]`` options.
- ``build``: ``build_from_cfg`` -> the same kind of Keras model ``build_inference_model`` makes.
- ``weights``: the ``.weights`` binary format (reader, writer; both header versions).
- ``transfer``: Keras conv/BN layers <-> darknet values; ``load_init_weights`` for training.
- ``export``: whether a model is darknet-expressible; writing it.
- ``pair``: errors about a cfg and the weights or checkpoint beside it name both files.
- ``inference``: darknet's letterbox and region-layer output layout.

See docs/darknet.md.
"""

import importlib

# Public names and their modules, imported on first use so that the cfg tools (and
# ``python -m detector.darknet layers``) do not pay for importing TensorFlow.
_EXPORTS = {
    "build_from_cfg": "build",
    "RegionSpec": "region",
    "format_table": "cfg",
    "layer_table": "cfg",
    "read_cfg": "cfg",
    "region_loss_config": "cfg",
    "region_spec": "region",
    "total_bflops": "cfg",
    "darknet_letterbox": "inference",
    "darknet_region_output": "inference",
    "load_darknet_weights": "transfer",
    "load_init_weights": "transfer",
    "save_darknet_weights": "transfer",
    "ConvSpec": "weights",
    "ConvWeights": "weights",
    "Header": "weights",
    "read_weights": "weights",
    "write_weights": "weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
