"""keras-hub's backbone of UViM presets: the stage-I model.

`UViMStage1Backbone` (`keras_hub.models.Backbone`) holds a whole
`UViMStage1`: restricted oracle + vector quantizer (EMA dictionary and counts,
saved as weights) + base model. Its config is the `UViMStage1` config
(`config.json`), its weights `model.weights.h5`. A complete UViM preset adds
the stage-II LM as a keras-hub task on this backbone (`tasks.py`), so it also
is a stage-I preset.
"""

import keras
import keras_hub

from uvim_keras.models.adaptable import LORA_LAYER_NAMES, dtype_config, quantized_layers
from uvim_keras.models.stage1 import UViMStage1
from uvim_keras.presets.saving import arch_config as stage1_arch_config


@keras.saving.register_keras_serializable(package="uvim_keras")
class UViMStage1Backbone(keras_hub.models.Backbone):
    """keras-hub backbone holding a UViM stage-I model (`self.stage1`).

    Takes the `UViMStage1` arguments (task, input_size, ..., seed). Built at
    the end of `__init__`, so keras-hub can load weights into it right away;
    the quantizer's EMA `dictionary` and `counts` are weights and round-trip.
    Calling it runs the stage-I model (`{"image", "labels"}` -> logits,
    codes, ...).

    Example:
    >>> backbone = UViMStage1Backbone.from_stage1(stage1)
    >>> backbone.save_to_preset("my_preset")
    >>> keras_hub.models.Backbone.from_preset("my_preset").stage1
    """

    def __init__(self, task, dtype=None, name=None, trainable=True, stage1_dtype=None,
                 **stage1_kwargs):
        model = stage1_kwargs.pop("_stage1", None)
        super().__init__(dtype=dtype, name=name, trainable=trainable)
        if model is None:
            model = UViMStage1(task, dtype=stage1_dtype or self.dtype_policy, name="stage1",
                               **UViMStage1.upgrade_config(stage1_kwargs))
        self.stage1 = model
        self.built = True

    @classmethod
    def from_stage1(cls, stage1, name=None):
        """Wraps an existing `UViMStage1` (weights shared, not copied)."""
        if not isinstance(stage1, UViMStage1):
            raise TypeError(f"expected a UViMStage1, got {type(stage1).__name__}.")
        return cls(dtype=stage1.dtype_policy, name=name, _stage1=stage1,
                   **stage1_arch_config(stage1))

    # Convenient views of the parts.
    @property
    def task(self):
        return self.stage1.task

    @property
    def oracle(self):
        return self.stage1.oracle

    @property
    def quantizer(self):
        return self.stage1.quantizer

    @property
    def base_model(self):
        return self.stage1.base_model

    def call(self, inputs, training=None):
        return self.stage1(inputs, training=training)

    def default_lora_layer_names(self):
        return list(LORA_LAYER_NAMES)

    def enable_lora(self, rank, target_layer_names=None):
        """keras-hub's LoRA (so `save_lora_weights` works) on the attention
        query/value projections; their biases stay frozen as well, so only
        the LoRA kernels train."""
        super().enable_lora(rank, target_layer_names)
        for layer in self._flatten_layers(include_self=False):
            if getattr(layer, "lora_enabled", False) and layer.bias is not None:
                layer.bias.trainable = False

    def get_config(self):
        config = {**super().get_config(), **stage1_arch_config(self.stage1)}
        if quantized_layers(self.stage1):
            # keras-hub's `Backbone.from_preset` replaces the saved "dtype" by
            # the caller's (None), which would drop the quantized layers' map.
            config["stage1_dtype"] = dtype_config(self.stage1)
        return config
