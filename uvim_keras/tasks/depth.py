"""Monocular depth as classification over depth bins (UViM's NYU setup)."""

import keras
from keras import ops

from uvim_keras.tasks.base import UViMTask, label_channel, one_hot, softmax_cross_entropy


@keras.saving.register_keras_serializable(package="uvim_keras")
class DepthTask(UViMTask):
    """Depth in `bins` equal bins over [min_depth, max_depth].

    * labels: float (B, H, W, 1) depth; bin = floor((d - min) / (max - min) *
      bins), clipped to [0, bins - 1];
    * loss: per-pixel softmax cross-entropy over bins, zeroed where the
      target bin is 0 (pixels without depth), averaged over all pixels
      (as big_vision does);
    * output: the centre of the argmax bin, float32 (B, H, W).

    Example:
    >>> task = DepthTask(bins=256, min_depth=1e-3, max_depth=10.0)
    """

    name = "depth"
    label_depth = 1
    label_kind = "float"

    def __init__(self, bins=256, min_depth=1e-3, max_depth=10.0):
        if bins < 2 or not max_depth > min_depth:
            raise ValueError(
                f"bins={bins}, min_depth={min_depth}, max_depth={max_depth}; "
                "expected bins >= 2 and max_depth > min_depth."
            )
        self.bins = int(bins)
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)

    @property
    def label_channels(self):
        return {"depth": self.bins}

    def depth_to_bins(self, depth):
        scaled = (ops.cast(depth, "float32") - self.min_depth) / (self.max_depth - self.min_depth)
        bins = ops.cast(ops.floor(scaled * self.bins), "int32")
        return ops.clip(bins, 0, self.bins - 1)

    def bins_to_depth(self, bins):
        centre = (ops.cast(bins, "float32") + 0.5) / self.bins
        return centre * (self.max_depth - self.min_depth) + self.min_depth

    def encode_labels(self, labels, axis=-1):
        bins = self.depth_to_bins(label_channel(labels, 0, axis))
        return {"depth": one_hot(bins, self.bins, axis=axis)}

    def loss(self, labels, logits, axis=-1):
        bins = self.depth_to_bins(label_channel(labels, 0, axis))
        xent = softmax_cross_entropy(one_hot(bins, self.bins, axis=axis), logits["depth"], axis)
        return self.guard_loss(ops.mean(xent * ops.cast(bins != 0, xent.dtype)), labels, axis)

    def predict_outputs(self, logits):
        return self.bins_to_depth(ops.argmax(logits["depth"], axis=-1))

    def get_config(self):
        return {"bins": self.bins, "min_depth": self.min_depth, "max_depth": self.max_depth}
