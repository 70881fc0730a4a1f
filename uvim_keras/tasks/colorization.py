"""Colorization: predict RGB in [-1, 1] from a grey image."""

import keras
from keras import ops

from uvim_keras.metrics.fid import FID
from uvim_keras.metrics.pixelwise import ColourMetrics
from uvim_keras.tasks.base import UViMTask

#: How far colour labels may stray outside [-1, 1] (rounding) before they are refused.
RANGE_TOLERANCE = 1e-3


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
    title = "colorization"
    caption = "The model sees the grey input and predicts its colours."
    grey_input = True
    keras_hub_task = "UViMColorizer"
    keras_hub_class = "ImageToImage"
    pipeline_tag = "image-to-image"
    output_resize = ("bilinear", (-3, -2))
    headline_metric = ("colourfulness", "closer to the ground truth's")

    @property
    def label_channels(self):
        return {"color": 3}

    def check_label_values(self, labels):
        if labels.size:
            lo, hi = float(labels.min()), float(labels.max())
            if not (lo >= -1 - RANGE_TOLERANCE and hi <= 1 + RANGE_TOLERANCE):
                raise ValueError(
                    f"labels (colours) range over [{lo:.4g}, {hi:.4g}]; expected finite RGB "
                    "in [-1, 1] (x / 127.5 - 1 for uint8 colours).")

    def label_error(self, labels, axis=-1):
        labels = ops.cast(labels, "float32")  # NaN fails both comparisons
        inside = ops.logical_and(ops.min(labels) >= -1 - RANGE_TOLERANCE,
                                 ops.max(labels) <= 1 + RANGE_TOLERANCE)
        return ops.logical_not(inside)

    def label_error_hint(self):
        return "labels (colours) must be finite RGB in [-1, 1]"

    def encode_labels(self, labels, axis=-1):
        return {"color": ops.cast(labels, "float32")}  # per element: any layout

    def loss(self, labels, logits, axis=-1):
        err = ops.cast(logits["color"], "float32") - ops.cast(labels, "float32")
        return self.guard_loss(ops.mean(ops.square(err)), labels, axis)

    def predict_outputs(self, logits):
        return ops.clip(logits["color"], -1.0, 1.0)

    # -- evaluation, pictures, model card ------------------------------------------
    def metric(self, fid=None):
        """`ColourMetrics`: colourfulness of the outputs and of the ground
        truth, MSE, and FID when `fid` (an `FID` metric) is given."""
        return ColourMetrics(fid=fid)

    def update_metric(self, metric, labels, outputs):
        if isinstance(metric, FID):
            metric.update_state(real_images=labels, generated_images=outputs)
        else:
            metric.update_state(labels, outputs)

    def describe_outputs(self):
        return "Colorization: RGB in [-1, 1] from a grey image; output (H, W, 3)."

    def figure_key(self, outputs=()):
        return None
