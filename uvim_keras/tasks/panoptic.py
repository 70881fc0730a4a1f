"""Panoptic segmentation: labels (H, W, 2) = [semantic class, instance id]."""

import keras
import numpy as np
from keras import ops

from uvim_keras.metrics.panoptic_quality import PanopticQuality
from uvim_keras.tasks.base import UViMTask, label_channel, one_hot, softmax_cross_entropy
from uvim_keras.visualize import colors, figures


@keras.saving.register_keras_serializable(package="uvim_keras")
class PanopticTask(UViMTask):
    """COCO-style panoptic segmentation as UViM models it.

    * labels: int (B, H, W, 2); channel 0 the semantic class in
      [0, num_classes) (0 = void), channel 1 the instance id in
      [0, max_instances);
    * oracle input / base-model output: one-hot `semantics` and `instances`;
    * loss: the sum of the two per-pixel softmax cross-entropies, averaged;
    * output: each pixel's instance = argmax of the instance logits; each
      instance's class = argmax over classes of the **sum of raw semantic
      logits** over its pixels; instances whose pixel fraction is not above
      `min_fraction` are removed (both channels 0). int32 (B, H, W, 2).

    `class_names` (optional): one name per class, class 0 (void) included,
    e.g. the synthetic shapes' ("void", "sky", "ground", "disc", "square",
    "triangle"); pictures of predictions name the classes with them. Kept
    in the config only when given (presets saved without it load as
    before; pictures then fall back to COCO's names for 134 classes, else
    "class k").

    Example:
    >>> task = PanopticTask(num_classes=134, max_instances=100, min_fraction=0.0)
    """

    name = "panoptic"
    label_depth = 2
    label_kind = "int"
    title = "panoptic segmentation"
    caption = ("Colour = class (key at the right); shades of one colour = separate instances; "
               "dark lines = segment edges.")
    keras_hub_task = "UViMImageSegmenter"
    keras_hub_class = "ImageSegmenter"
    pipeline_tag = "image-segmentation"
    output_resize = ("nearest", (-3, -2))
    headline_metric = ("PQ", "higher")

    def __init__(self, num_classes=134, max_instances=100, min_fraction=0.0, class_names=None):
        if num_classes < 2 or max_instances < 1:
            raise ValueError(
                f"num_classes={num_classes}, max_instances={max_instances}; "
                "expected num_classes >= 2 and max_instances >= 1."
            )
        if class_names is not None:
            if isinstance(class_names, str) or not all(
                    isinstance(n, str) for n in class_names) or len(class_names) != num_classes:
                raise ValueError(
                    f"class_names={class_names!r:.120}; expected {num_classes} strings, one per "
                    "class (class 0 = void included).")
            class_names = tuple(class_names)
        self.num_classes = int(num_classes)
        self.max_instances = int(max_instances)
        self.min_fraction = float(min_fraction)
        self.class_names = class_names

    @property
    def label_channels(self):
        return {"semantics": self.num_classes, "instances": self.max_instances}

    def check_label_values(self, labels):
        for ch, key, limit in ((0, "semantic", self.num_classes),
                               (1, "instance", self.max_instances)):
            vals = labels[..., ch]
            if vals.size and (vals.min() < 0 or vals.max() >= limit):
                raise ValueError(
                    f"labels[..., {ch}] ({key} ids) range over "
                    f"[{vals.min()}, {vals.max()}]; expected ids in [0, {limit})."
                )

    def label_error(self, labels, axis=-1):
        ids = ops.cast(labels, "int32")
        bad = None
        for i, limit in enumerate((self.num_classes, self.max_instances)):
            channel = label_channel(ids, i, axis)
            out = ops.logical_or(ops.min(channel) < 0, ops.max(channel) >= limit)
            bad = out if bad is None else ops.logical_or(bad, out)
        return bad

    def label_error_hint(self):
        return (f"labels[..., 0] (semantic ids) must be in [0, {self.num_classes}) and "
                f"labels[..., 1] (instance ids) in [0, {self.max_instances})")

    def encode_labels(self, labels, axis=-1):
        labels = ops.cast(labels, "int32")
        return {
            key: one_hot(label_channel(labels, i, axis), depth, axis=axis)
            for i, (key, depth) in enumerate(self.label_channels.items())
        }

    def loss(self, labels, logits, axis=-1):
        target = self.encode_labels(labels, axis)
        per_pixel = sum(
            softmax_cross_entropy(target[k], logits[k], axis) for k in ("semantics", "instances")
        )
        return self.guard_loss(ops.mean(per_pixel), labels, axis)

    def predict_outputs(self, logits, min_fraction=None):
        min_fraction = self.min_fraction if min_fraction is None else min_fraction
        return panoptic_from_logits(logits["semantics"], logits["instances"], min_fraction)

    # -- evaluation, pictures, model card ------------------------------------------
    def metric(self, categories=None):
        """`PanopticQuality` over `categories` (dicts with id, name, isthing:
        the semantic ids of the labels, as panopticapi takes them)."""
        if categories is None:
            raise ValueError(
                "categories is None; panoptic evaluation needs the category list "
                "(dicts with id, name, isthing) of the semantic ids."
            )
        return PanopticQuality(categories)

    def metric_values(self, result):
        return {"PQ": 100 * result["All"]["pq"], "PQ_things": 100 * result["Things"]["pq"],
                "PQ_stuff": 100 * result["Stuff"]["pq"], "SQ": 100 * result["All"]["sq"],
                "RQ": 100 * result["All"]["rq"]}

    def describe_outputs(self):
        return (f"Panoptic segmentation: for each pixel a semantic class (of {self.num_classes}, "
                f"0 = void) and an instance id (< {self.max_instances}); output (H, W, 2) int32.")

    def output_rgb(self, output):
        return colors.panoptic_to_rgb(np.asarray(output), self.num_classes)

    def figure_key(self, outputs=()):
        """Every class's colour and name (for more than 32 classes, those
        present in `outputs`)."""
        names = figures.class_names(self.num_classes, self.class_names)
        palette = colors.class_colors(self.num_classes)
        ids = range(self.num_classes)
        if self.num_classes > 32 and len(outputs):
            present = np.unique(np.concatenate([np.asarray(a)[..., 0].ravel() for a in outputs]))
            ids = [int(k) for k in present if k < self.num_classes]
        return ("classes", [(tuple(int(c) for c in palette[k]), f"{k}: {names[k]}") for k in ids])

    def picture_panels(self, image, predictions):
        """The predictions blended over the image, and a legend of the
        classes present: instances and share of the pixels."""
        tiles = [figures.panoptic_overlay(image, p, self.num_classes) for p in predictions]
        entries = figures.legend_entries(predictions, self.num_classes, self.class_names)
        header = "class: instances, share of pixels" + (
            f" ({len(predictions)} samples)" if len(predictions) > 1 else "")
        return tiles, ("classes", [(e["color"], e["label"]) for e in entries], header)

    def get_config(self):
        config = {
            "num_classes": self.num_classes,
            "max_instances": self.max_instances,
            "min_fraction": self.min_fraction,
        }
        if self.class_names is not None:
            config["class_names"] = list(self.class_names)
        return config


def panoptic_from_logits(semantics, instances, min_fraction=0.0):
    """(B, H, W, K) semantic and (B, H, W, N) instance logits -> (B, H, W, 2).

    Instance = argmax; class of an instance = argmax of its summed raw semantic
    logits; instances covering a fraction <= `min_fraction` are zeroed.
    """
    n = instances.shape[-1]
    ins = ops.cast(ops.argmax(instances, axis=-1), "int32")
    masks = ops.one_hot(ins, n, dtype="float32")
    votes = ops.einsum("bhwk,bhwn->bnk", ops.cast(semantics, "float32"), masks)
    label = ops.cast(ops.argmax(votes, axis=-1), "int32")  # (B, N)
    sem = ops.take_along_axis(label, ops.reshape(ins, (ops.shape(ins)[0], -1)), axis=1)
    sem = ops.reshape(sem, ops.shape(ins))
    pixels = ins.shape[1] * ins.shape[2]
    fraction = ops.sum(masks, axis=(1, 2)) / float(pixels)  # (B, N)
    big = ops.take_along_axis(
        fraction > min_fraction, ops.reshape(ins, (ops.shape(ins)[0], -1)), axis=1
    )
    keep = ops.cast(ops.reshape(big, ops.shape(ins)), "int32")
    return ops.stack([sem * keep, ins * keep], axis=-1)

