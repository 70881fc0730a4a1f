"""A new UViM task in one file: semantic segmentation.

This is the worked example of adding a task without touching uvim_keras:
subclass `UViMTask`, register it, and pass it to `UViMStage1` / `UViM`.

    from custom_task_semantic import SemanticSegmentationTask
    stage1 = UViMStage1(SemanticSegmentationTask(num_classes=21), input_size=256, ...)
    stage1.fit(dataset)  # batches {"image": (B, H, W, 3), "labels": (B, H, W, 1) int}
"""

import keras
from keras import ops

from uvim_keras.tasks import UViMTask, label_channel, one_hot, softmax_cross_entropy


@keras.saving.register_keras_serializable(package="uvim_examples")
class SemanticSegmentationTask(UViMTask):
    """Per-pixel classes: labels int (B, H, W, 1) in [0, num_classes).

    The oracle sees the one-hot label; the base model predicts class logits;
    the loss is the mean per-pixel softmax cross-entropy (pixels of
    `ignore_class`, if set, are not trained on); the output is the argmax
    class map (B, H, W) int32.
    """

    name = "semantic"
    label_depth = 1
    label_kind = "int"

    def __init__(self, num_classes, ignore_class=None):
        self.num_classes = int(num_classes)
        self.ignore_class = ignore_class

    @property
    def label_channels(self):
        return {"classes": self.num_classes}

    def check_label_values(self, labels):
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"labels range over [{labels.min()}, {labels.max()}]; "
                f"expected classes in [0, {self.num_classes})."
            )

    # `axis` is the channel axis: -1 for image layout (B, H, W, c), -2 for the
    # patch layout (B, G, c, P) the stage-I model trains in. Pixel-wise code
    # only has to pick the channel and reduce over that axis.
    def encode_labels(self, labels, axis=-1):
        classes = ops.cast(label_channel(labels, 0, axis), "int32")
        return {"classes": one_hot(classes, self.num_classes, axis)}

    def loss(self, labels, logits, axis=-1):
        target = self.encode_labels(labels, axis)["classes"]
        xent = softmax_cross_entropy(target, logits["classes"], axis)
        if self.ignore_class is not None:
            keep = label_channel(labels, 0, axis) != self.ignore_class
            xent = xent * ops.cast(keep, xent.dtype)
        return ops.mean(xent)

    def predict_outputs(self, logits):
        return ops.cast(ops.argmax(logits["classes"], axis=-1), "int32")

    def get_config(self):
        return {"num_classes": self.num_classes, "ignore_class": self.ignore_class}
