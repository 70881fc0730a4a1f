"""What a subclassed UViM model needs for Keras' quantization to round-trip.

`Model.quantize(mode)` swaps the kernels of every `EinsumDense`, `Dense` and
`Embedding` inside the model for quantized ones and gives those layers a
quantized dtype policy. A subclassed model builds its layers in `__init__`,
so a config that only said "float32" would rebuild float layers and the
saved int8 weights would not load. As keras-hub's `Backbone` does, the config
carries a `keras.dtype_policies.DTypePolicyMap` {layer path: policy} of the
quantized layers; every layer passes its policy to its sublayers, so the map
reaches them when the model is built from that config.
"""

import warnings

import keras

# Keras warns once per layer it cannot quantize (norms, convolutions, position
# embeddings, the codebook, ...); they stay in float by design.
_NOT_QUANTIZABLE = r"Layer \w+ does not have a `quantize` method implemented"


def dtype_config(model):
    """The serialized dtype of `model` for `get_config`: its policy, or a
    `DTypePolicyMap` over it naming each quantized sublayer."""
    policy = model.dtype_policy
    if not isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        policy_map = keras.dtype_policies.DTypePolicyMap(default_policy=policy)
        for layer in model._flatten_layers(include_self=False):
            if layer.quantization_mode is not None:
                policy_map[layer.path] = layer.dtype_policy
        if len(policy_map):
            policy = policy_map
    return keras.dtype_policies.serialize(policy)


class QuantizableModel(keras.Model):
    """`keras.Model` whose quantized state survives `get_config` / `.keras`
    files / presets (see the module docstring).

    `quantize` checks that every layer is built before changing any (so a
    failure leaves the model as it was) and does not warn about the layers
    that stay in float by design.
    """

    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        unbuilt = [layer.name for layer in self._flatten_layers() if not layer.built]
        if unbuilt:
            raise ValueError(
                f"{self.name}: cannot quantize, layers not built: {unbuilt[:5]}; "
                "build the model (call it once) first."
            )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NOT_QUANTIZABLE)
            super().quantize(mode, config=config, filters=filters, **kwargs)

    def get_config(self):
        return {**super().get_config(), "dtype": dtype_config(self)}


def quantized_layers(model):
    """Paths of the quantized layers of `model`, with their mode."""
    return {
        layer.path: layer.quantization_mode
        for layer in model._flatten_layers(include_self=False)
        if layer.quantization_mode is not None
    }


__all__ = ["QuantizableModel", "dtype_config", "quantized_layers"]
