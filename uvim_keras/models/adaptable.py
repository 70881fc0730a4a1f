"""What a subclassed UViM model adds to `keras.Model` so that Keras'
quantization and LoRA adapt it, and the adapted model round-trips.

Every transformer projection is a `keras.layers.EinsumDense` (see
`uvim_keras.layers.transformer`), so `Model.quantize(mode)` and
`EinsumDense.enable_lora(rank)` apply to them directly. What a subclassed
model needs on top:

* **Quantized configs.** `quantize` swaps the kernels of every
  `EinsumDense`, `Dense` and `Embedding` for quantized ones and gives those
  layers a quantized dtype policy. A subclassed model builds its layers in
  `__init__`, so a config that only said "float32" would rebuild float layers
  and the saved int8 weights would not load. As keras-hub's `Backbone` does,
  the config carries a `keras.dtype_policies.DTypePolicyMap` {layer path:
  policy} of the quantized layers; every layer passes its policy to its
  sublayers, so the map reaches them when the model is built from that config.
* **LoRA** on the attention query and value projections, keras-hub's
  `Backbone.enable_lora` API (`enable_lora`, `default_lora_layer_names`).
"""

import gc
import warnings

import keras

# Keras warns once per layer it cannot quantize (norms, convolutions, position
# embeddings, the codebook, ...); they stay in float by design.
_NOT_QUANTIZABLE = r"Layer \w+ does not have a `quantize` method implemented"

#: Layers LoRA adapts by default: the attention query and value projections
#: (`MultiHeadDotProductAttention.query` / `.value`), as keras-hub does.
LORA_LAYER_NAMES = ("query", "value")


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


def quantized_layers(model):
    """{layer path: quantization mode} of the quantized layers of `model`."""
    return {
        layer.path: layer.quantization_mode
        for layer in model._flatten_layers(include_self=False)
        if layer.quantization_mode is not None
    }


def enable_lora(model, rank, target_layer_names=None, lora_alpha=None):
    """Freezes `model` and adds rank-`rank` LoRA kernels to every
    `EinsumDense` named in `target_layer_names` (default: `LORA_LAYER_NAMES`);
    only the LoRA kernels train. Returns the adapted layers' paths."""
    if int(rank) != rank or rank < 1:
        raise ValueError(f"rank={rank!r}: expected a positive integer.")
    names = LORA_LAYER_NAMES if target_layer_names is None else tuple(target_layer_names)
    targets = [layer for layer in model._flatten_layers(include_self=False)
               if layer.name in names and isinstance(layer, keras.layers.EinsumDense)]
    if not targets:
        raise ValueError(
            f"{model.name}: no EinsumDense layer is named {list(names)}; the attention "
            f"projections are named {list(LORA_LAYER_NAMES)} (and 'key', "
            "'attention_output', the MLP's 'dense_0' and 'dense_1')."
        )
    already = [layer.path for layer in targets if layer.lora_enabled]
    if already:
        raise ValueError(f"{model.name}: LoRA is already enabled on {already[:3]}.")
    for layer in model._flatten_layers(include_self=False):
        layer.trainable = False
    for layer in targets:
        layer.trainable = True
        layer.enable_lora(int(rank), lora_alpha=lora_alpha)
        if layer.bias is not None:
            layer.bias.trainable = False  # only the LoRA kernels train
    return [layer.path for layer in targets]


class AdaptableModel(keras.Model):
    """`keras.Model` that Keras' quantization and LoRA adapt, with the adapted
    state surviving `get_config`, `.keras` files and presets (see the module
    docstring).

    `quantize` checks that every layer is built before changing any (so a
    failure leaves the model as it was) and does not warn about the layers
    that stay in float by design.

    Example:
    >>> lm.quantize("int8")               # every transformer kernel, in one call
    >>> lm.save("lm_int8.keras")          # loads back quantized
    >>> lm.enable_lora(4)                 # query/value LoRA; only it trains
    """

    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        unbuilt = [layer.name for layer in self._flatten_layers() if not layer.built]
        if unbuilt:
            raise ValueError(
                f"{self.name}: cannot quantize, layers not built: {unbuilt[:5]}; "
                "build the model (call it once) first."
            )
        # Keras runs a full garbage collection each time a layer drops its
        # float kernel; with the objects that exist now frozen (set aside by
        # the collector until `unfreeze`) each one is cheap (benchmarks/README.md).
        gc.freeze()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_NOT_QUANTIZABLE)
                super().quantize(mode, config=config, filters=filters, **kwargs)
        finally:
            gc.unfreeze()

    def default_lora_layer_names(self):
        """Layer names `enable_lora` adapts by default (keras-hub's API)."""
        return list(LORA_LAYER_NAMES)

    def enable_lora(self, rank, target_layer_names=None, lora_alpha=None):
        """LoRA of rank `rank` on the attention query and value projections
        (or the `EinsumDense` layers named in `target_layer_names`); the rest
        of the model is frozen. Saving stores the merged kernels, so the saved
        model loads without LoRA. Returns the adapted layers' paths.

        Args:
          rank: the rank of the LoRA factors.
          target_layer_names: names of the layers to adapt (default
            `default_lora_layer_names()`).
          lora_alpha: LoRA's scale numerator (Keras' default: `rank`).
        """
        return enable_lora(self, rank, target_layer_names, lora_alpha)

    def get_config(self):
        return {**super().get_config(), "dtype": dtype_config(self)}
