"""Monocular depth as classification over depth bins (UViM's NYU setup)."""

import keras
import numpy as np
from keras import ops

from uvim_keras.metrics.depth import DepthMetrics
from uvim_keras.tasks.base import UViMTask, label_channel, one_hot, softmax_cross_entropy
from uvim_keras.visualize import colors


@keras.saving.register_keras_serializable(package="uvim_keras")
class DepthTask(UViMTask):
    """Depth in `bins` equal bins over [min_depth, max_depth].

    * labels: float (B, H, W, 1) depth; bin = floor((d - min) / (max - min) *
      bins), clipped to [0, bins - 1];
    * loss: per-pixel softmax cross-entropy over bins, zeroed where the
      target bin is 0 (pixels without depth), averaged over all pixels
      (as big_vision does);
    * output: float32 (B, H, W) depth; `output="argmax"` (the default,
      big_vision's rule) gives the centre of the most likely bin,
      `output="mean"` the expected depth, the bins' centres weighted by the
      softmax over the bins. The mean is what a squared error (RMSE)
      rewards: on the demo's synthetic rooms it lowers every model's RMSE,
      the oracle's included (benchmarks/README.md, "Depth under a squared
      error"). This departs from big_vision, so it is not the default.

    Args:
      bins: number of depth bins (>= 2).
      min_depth, max_depth: the depth range the bins cover (metres).
      output: "argmax" or "mean" (above).

    Example:
    >>> task = DepthTask(bins=256, min_depth=1e-3, max_depth=10.0)
    >>> # A trained UViM's outputs as expected depths:
    >>> # UViM.from_stage1(uvim.lm, uvim.stage1, task=DepthTask(256, 1e-3, 10.0, output="mean"))
    """

    name = "depth"
    label_depth = 1
    label_kind = "float"
    title = "monocular depth estimation"
    caption = "Colour = depth in metres (scale at the right): yellow near, purple far."
    keras_hub_task = "UViMDepthEstimator"
    keras_hub_class = "DepthEstimator"
    pipeline_tag = "depth-estimation"
    output_resize = ("bilinear", (-2, -1))
    headline_metric = ("RMSE", "lower")

    OUTPUTS = ("argmax", "mean")

    def __init__(self, bins=256, min_depth=1e-3, max_depth=10.0, output="argmax"):
        if bins < 2 or not max_depth > min_depth:
            raise ValueError(
                f"bins={bins}, min_depth={min_depth}, max_depth={max_depth}; "
                "expected bins >= 2 and max_depth > min_depth."
            )
        if output not in self.OUTPUTS:
            raise ValueError(f"output={output!r}; expected one of {self.OUTPUTS}.")
        self.bins = int(bins)
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.output = output

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
        logits = logits["depth"]
        if self.output == "argmax":
            return self.bins_to_depth(ops.argmax(logits, axis=-1))
        probs = ops.softmax(ops.cast(logits, "float32"), axis=-1)
        return ops.sum(probs * self.bins_to_depth(ops.arange(self.bins)), axis=-1)

    # -- evaluation, pictures, model card ------------------------------------------
    def metric(self, nyu_eval_crop=False):
        """`DepthMetrics` (RMSE, abs_RE, log10, delta1-3) over the task's
        depth range; `nyu_eval_crop`: big_vision's crop of raw 480x640 NYU
        labels."""
        return DepthMetrics(self.min_depth, self.max_depth, nyu_eval_crop=nyu_eval_crop)

    def update_metric(self, metric, labels, outputs):
        labels = np.asarray(labels)
        metric.update_state(labels[..., 0] if labels.ndim == 4 else labels, outputs)

    def describe_outputs(self):
        rule = " (the expected depth over the bins)" if self.output == "mean" else ""
        return (f"Monocular depth as {self.bins} bins over [{self.min_depth}, {self.max_depth}] "
                f"m; output (H, W) float32 depth in metres{rule}.")

    def output_rgb(self, output):
        x = np.asarray(output)
        return colors.depth_to_rgb(x[..., 0] if x.ndim == 3 else x, self.min_depth,
                                   self.max_depth)

    def figure_key(self, outputs=()):
        return ("scale", self.min_depth, self.max_depth, "depth")

    def picture_panels(self, image, predictions):
        """Colour maps over the predictions' own range, with its scale."""
        lo, hi = self._value_range(*predictions)
        return ([colors.depth_to_rgb(np.asarray(p), lo, hi) for p in predictions],
                ("scale", lo, hi, "depth"))

    def get_config(self):
        return {"bins": self.bins, "min_depth": self.min_depth, "max_depth": self.max_depth,
                "output": self.output}
