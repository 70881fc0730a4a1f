"""Colorization: predict RGB in [-1, 1] from a grey image."""

import keras
from keras import ops

from uvim_keras.tasks.base import UViMTask


@keras.saving.register_keras_serializable(package="uvim_keras")
class ColorizationTask(UViMTask):
    """RGB colorization with a squared-error reconstruction loss.

    * labels: float (B, H, W, 3) RGB in [-1, 1] (the model's image input is
      the grey version, replicated to 3 channels);
    * loss: mean squared error;
    * output: the logits clipped to [-1, 1].

    UViM samples colorization codes at temperature 1 by default: big_vision's
    maintainers advised it after users got grey results near T = 0.

    Example:
    >>> task = ColorizationTask()
    """

    name = "colorization"
    label_depth = 3
    label_kind = "float"
    default_temperature = 1.0

    @property
    def label_channels(self):
        return {"color": 3}

    def encode_labels(self, labels, axis=-1):
        return {"color": ops.cast(labels, "float32")}  # per element: any layout

    def loss(self, labels, logits, axis=-1):
        err = ops.cast(logits["color"], "float32") - ops.cast(labels, "float32")
        return ops.mean(ops.square(err))

    def predict_outputs(self, logits):
        return ops.clip(logits["color"], -1.0, 1.0)
