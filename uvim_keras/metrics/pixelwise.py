"""Per-pixel metrics: class accuracy, squared error, colour (host-side numpy).

The default metrics of tasks without a metric of their own
(`UViMTask.metric`), and colorization's: each has `update_state(labels,
outputs)` / `result()` / `reset_state()` like the other metrics here.

>>> from uvim_keras.metrics.pixelwise import PixelAccuracy
>>> m = PixelAccuracy(num_classes=3)
>>> m.update_state(np.array([[0, 1], [2, 2]]), np.array([[0, 1], [2, 0]]))
>>> m.result()["accuracy"]
0.75
"""

import numpy as np

from uvim_keras.metrics.host import to_numpy


def colourfulness(rgb):
    """Mean over pixels of max - min of the RGB channels (0 for grey)."""
    rgb = np.asarray(rgb, "float64")
    return float(np.mean(rgb.max(-1) - rgb.min(-1)))


def _matching(labels, outputs):
    """`labels` without a trailing channel of 1 when `outputs` has none."""
    labels, outputs = to_numpy(labels), to_numpy(outputs)
    if labels.ndim == outputs.ndim + 1 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.shape != outputs.shape:
        raise ValueError(f"labels of shape {labels.shape} and outputs of shape {outputs.shape}: "
                         "expected the same shape (labels may have one more axis of size 1).")
    return labels, outputs


class PixelAccuracy:
    """Share of pixels whose class is right, and the mean intersection over
    union of the classes seen (with `num_classes`).

    Args:
      num_classes: number of classes (None: accuracy only).
      ignore_class: a label value whose pixels are not counted (None: all).
    """

    def __init__(self, num_classes=None, ignore_class=None):
        self.num_classes = num_classes
        self.ignore_class = ignore_class
        self.reset_state()

    def reset_state(self):
        self.correct, self.total = 0, 0
        k = self.num_classes or 0
        self.confusion = np.zeros((k, k), "int64")

    def update_state(self, labels, outputs):
        labels, outputs = _matching(labels, outputs)
        labels, outputs = labels.astype("int64").ravel(), outputs.astype("int64").ravel()
        if self.ignore_class is not None:
            keep = labels != self.ignore_class
            labels, outputs = labels[keep], outputs[keep]
        self.correct += int(np.sum(labels == outputs))
        self.total += labels.size
        if self.num_classes:
            k = self.num_classes
            inside = (labels >= 0) & (labels < k) & (outputs >= 0) & (outputs < k)
            np.add.at(self.confusion, (labels[inside], outputs[inside]), 1)

    def result(self):
        out = {"accuracy": self.correct / max(self.total, 1)}
        if self.num_classes:
            union = self.confusion.sum(0) + self.confusion.sum(1) - np.diag(self.confusion)
            seen = union > 0
            iou = np.diag(self.confusion)[seen] / union[seen]
            out["mIoU"] = float(iou.mean()) if iou.size else 0.0
        return out


class MeanSquaredError:
    """Mean squared error over all values seen."""

    def __init__(self):
        self.reset_state()

    def reset_state(self):
        self.total, self.count = 0.0, 0

    def update_state(self, labels, outputs):
        labels, outputs = _matching(labels, outputs)
        diff = outputs.astype("float64") - labels.astype("float64")
        self.total += float(np.sum(diff**2))
        self.count += diff.size

    def result(self):
        return {"MSE": self.total / max(self.count, 1)}


class ColourMetrics:
    """Colorization: the colourfulness of the outputs and of the ground
    truth (mean max - min over RGB; a model that keeps the grey input scores
    0), the mean squared error, and FID when an `FID` metric is given.

    Args:
      fid: an `uvim_keras.metrics.FID` to update with (labels, outputs), or None.
    """

    def __init__(self, fid=None):
        self.fid = fid
        self.reset_state()

    def reset_state(self):
        self.mse = MeanSquaredError()
        self.colour = self.colour_truth = 0.0
        self.pixels = 0
        if self.fid is not None:
            self.fid.reset_state()

    def update_state(self, labels, outputs):
        labels, outputs = _matching(labels, outputs)
        self.mse.update_state(labels, outputs)
        n = int(np.prod(outputs.shape[:-1]))
        self.colour += colourfulness(outputs) * n
        self.colour_truth += colourfulness(labels) * n
        self.pixels += n
        if self.fid is not None:
            self.fid.update_state(real_images=labels, generated_images=outputs)

    def result(self):
        pixels = max(self.pixels, 1)
        out = {"colourfulness": self.colour / pixels,
               "colourfulness_ground_truth": self.colour_truth / pixels, **self.mse.result()}
        if self.fid is not None:
            out["FID"] = float(self.fid.result())
        return out
