"""The task interface: how labels enter the oracle and logits become outputs.

A task tells the stage-I model

* which label keys exist and how many channels each has once encoded
  (`label_channels`, e.g. {"semantics": 134, "instances": 100});
* how raw labels (B, H, W, ...) become those channels (`encode_labels`, e.g.
  one-hot);
* the reconstruction loss between raw labels and the base model's logits
  (`loss`);
* how logits become the task's outputs (`predict_outputs`).

Labels are checked twice. `check_labels` / `check_label_values` check
concrete (numpy) labels on the host: the models call it eagerly,
`AdaptableModel.fit` on in-memory arrays before training and on every
batch of a `tf.data` pipeline (inside the pipeline). Inside a compiled
train step values cannot be checked on the host, so the built-in tasks'
`loss` ends with `guard_loss`: a batch whose labels the task cannot encode
(`label_error`: ids outside [0, num_classes), NaN depths, ...) gives a NaN
loss (a few reductions over the labels), which `fit` stops on before the
step is applied (`AdaptableModel.fit`, `stop_on_nan`). A custom task gets
the same by implementing `label_error` and ending its `loss` with
`return self.guard_loss(loss, labels, axis)`.

`encode_labels` and `loss` work in either of two layouts, named by `axis`,
the channel axis: image layout (B, H, W, c) with `axis=-1`, or patch layout
(B, G, c, P) with `axis=-2` (G patches of P pixels, see `layers.patches`).
The stage-I model calls them in patch layout, the layout its stems and heads
work in, so neither the encoded labels nor the logits (nor their gradients)
are transposed in a train step; the per-pixel quantities are the same, so a
task written for pixels does not care which. `predict_outputs` takes
image-layout logits. Everything uses `keras.ops`, so a task runs on every
backend and inside `fit`. To add a task, subclass `UViMTask` in one file and register it with
`@keras.saving.register_keras_serializable`; see
`examples/custom_task_semantic.py` for a worked example.

Around the model, the evaluation, the pictures and the model cards ask the
task what they need (`metric`, `output_rgb`, `figure_key`, `title`, ...);
the defaults here serve a new task of class maps (int labels: accuracy and
mIoU, class colours) or of values (float labels: MSE, a colour map), and
the built-in tasks override them.
"""

import keras
import numpy as np

from uvim_keras.metrics.pixelwise import MeanSquaredError, PixelAccuracy
from uvim_keras.visualize import colors


class UViMTask:
    """Base class of UViM tasks.

    Subclasses set `name`, `default_temperature` and implement
    `label_channels`, `encode_labels`, `loss`, `predict_outputs` and
    `get_config`; `check_labels` validates concrete label arrays.

    Example:
    >>> task = PanopticTask(num_classes=134, max_instances=100)
    >>> task.label_channels
    {'semantics': 134, 'instances': 100}
    """

    name = "task"
    #: sampling temperature `UViM.predict` uses for this task by default.
    default_temperature = 0.0
    #: number of channels of the raw label array (last axis).
    label_depth = 1
    #: dtype kind of raw labels: "int" or "float".
    label_kind = "float"

    @property
    def label_channels(self):
        raise NotImplementedError

    def encode_labels(self, labels, axis=-1):
        """Raw labels -> {key: encoded labels}, channels on `axis`.

        Image layout (`axis=-1`): (B, H, W, label_depth) -> (B, H, W, channels);
        patch layout (`axis=-2`): (B, G, label_depth, P) -> (B, G, channels, P).
        """
        raise NotImplementedError

    def loss(self, labels, logits, axis=-1):
        """Mean reconstruction loss (scalar) of `logits` against raw `labels`,
        both with their channels on `axis` (see `encode_labels`)."""
        raise NotImplementedError

    def predict_outputs(self, logits):
        """Logits {key: (B, H, W, c)} -> the task's output tensor."""
        raise NotImplementedError

    # -- validation -------------------------------------------------------
    def check_labels(self, labels, image_size=None):
        """Raises ValueError on malformed concrete labels; no-op on tensors
        being traced (shapes are still checked)."""
        shape = tuple(labels.shape)
        if len(shape) != 4 or shape[-1] != self.label_depth:
            raise ValueError(
                f"labels has shape {shape}; expected (batch, height, width, "
                f"{self.label_depth}) for the {self.name} task."
            )
        if image_size is not None and tuple(shape[1:3]) != tuple(image_size):
            raise ValueError(
                f"labels has spatial size {tuple(shape[1:3])}; expected "
                f"{tuple(image_size)} (the model's input_size)."
            )
        values = concrete_values(labels)
        if values is not None:
            self.check_label_values(values)

    def check_label_values(self, labels):
        """Checks the values of a concrete numpy label array."""
        if self.label_kind == "float" and not np.all(np.isfinite(labels)):
            raise ValueError(f"labels contain NaN or infinite values ({self.name} task).")

    # -- in-graph check (compiled training) ------------------------------------
    def label_error(self, labels, axis=-1):
        """A boolean scalar tensor, True when raw `labels` (channels on
        `axis`) hold values the task cannot encode; None when the task checks
        nothing. Float tasks: any NaN or infinity. Runs inside the train
        step (keras.ops only; a few reductions over the labels)."""
        if self.label_kind == "float":
            finite = keras.ops.isfinite(keras.ops.cast(labels, "float32"))
            return keras.ops.logical_not(keras.ops.all(finite))
        return None

    def guard_loss(self, loss, labels, axis=-1):
        """`loss`, made NaN when `label_error(labels, axis)` is True, so that
        a compiled step never trains on labels the task cannot encode: `fit`
        stops on the NaN before the step is applied (see the module doc)."""
        bad = self.label_error(labels, axis)
        if bad is None:
            return loss
        return loss + keras.ops.where(bad, float("nan"), 0.0)

    def label_error_hint(self):
        """What valid labels are, for the message of a NaN loss in `fit`."""
        if self.label_kind == "float":
            return "labels must be finite"
        return ""

    # -- around the model: evaluation, pictures, model cards ---------------------
    #: what figures and model cards call the task (defaults to `name`).
    title = None
    #: one caption line of figures: how to read the task's tiles.
    caption = ""
    #: the model's image input is grey (replicated to 3 channels).
    grey_input = False
    #: the keras-hub task class (registered name) a preset of the task saves as,
    #: the keras-hub class its model card names and its Hugging Face pipeline tag.
    keras_hub_task = "UViMStage2Task"
    keras_hub_class = None
    pipeline_tag = None
    #: how one output returns to an input's own size: (interpolation, (height
    #: axis, width axis)), interpolation "nearest" or "bilinear"; None: outputs
    #: stay at the model's size.
    output_resize = None

    @property
    def headline_metric(self):
        """(name, which way is better) of the metric tables lead with."""
        if self.label_kind == "int":
            return "accuracy", "higher"
        return "MSE", "lower"

    def metric(self, **options):
        """A new stateful metric of the task's outputs: `update_metric(metric,
        labels, outputs)` adds a batch, `metric.result()` reads it. Default:
        `PixelAccuracy` (int labels; with mIoU when the task has
        `num_classes`) or `MeanSquaredError` (float labels). `options`: what
        a task's metric takes (e.g. panoptic's `categories`)."""
        _no_options(self, options)
        if self.label_kind == "int":
            return PixelAccuracy(num_classes=getattr(self, "num_classes", None),
                                 ignore_class=getattr(self, "ignore_class", None))
        return MeanSquaredError()

    def update_metric(self, metric, labels, outputs):
        """Adds a batch of raw `labels` and the model's `outputs` to `metric`."""
        metric.update_state(labels, outputs)

    def metric_values(self, result):
        """`metric.result()` as a flat {name: float} (with `headline_metric`)."""
        return {k: float(v) for k, v in result.items()}

    def describe_outputs(self):
        """One sentence for model cards: what the labels and outputs are."""
        return f"{self.title or self.name}: labels (H, W, {self.label_depth}) {self.label_kind}."

    def output_rgb(self, output):
        """uint8 RGB (H, W, 3) picture of one label or output: class colours
        for class maps, a colour map over the values for value maps, the
        colours themselves for 3-channel values in [-1, 1]."""
        x = np.asarray(output)
        if x.ndim == 3 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.ndim == 3 and x.shape[-1] == 3 and x.dtype.kind == "f":
            return colors.image_to_uint8(x)
        if x.ndim != 2:
            raise ValueError(f"{type(self).__name__}.output_rgb: an output of shape {x.shape}; "
                             "expected (H, W) or (H, W, 1) (override output_rgb for others).")
        if x.dtype.kind in "iub":
            palette = colors.class_colors(self._num_classes(x))
            return palette[np.clip(x, 0, len(palette) - 1)]
        lo, hi = self._value_range(x)
        return colors.depth_to_rgb(x, lo, hi)

    def figure_key(self, outputs=()):
        """What a figure of `outputs` shows beside its tiles: ("classes",
        [(rgb, label), ...]) for class maps, ("scale", lo, hi, title) for
        value maps, or None."""
        arrays = [np.asarray(a) for a in outputs]
        if not arrays or arrays[0].dtype.kind == "f" and arrays[0].shape[-1] == 3:
            return None
        if arrays[0].dtype.kind in "iub":
            k = max(self._num_classes(a) for a in arrays)
            present = np.unique(np.concatenate([a.ravel() for a in arrays]))
            names = getattr(self, "class_names", None) or [f"class {i}" for i in range(k)]
            palette = colors.class_colors(k)
            return ("classes", [(tuple(int(c) for c in palette[i]), f"{i}: {names[i]}")
                                for i in present if 0 <= i < k])
        lo, hi = self._value_range(*arrays)
        return ("scale", lo, hi, self.title or self.name)

    def picture_panels(self, image, predictions):
        """`uvim-keras predict`'s picture of one image: (a tile per
        prediction, the key beside them, as `figure_key`)."""
        return [self.output_rgb(p) for p in predictions], self.figure_key(predictions)

    def _num_classes(self, x):
        return getattr(self, "num_classes", None) or int(np.max(x, initial=0)) + 1

    def _value_range(self, *arrays):
        lo = float(min(np.min(a) for a in arrays))
        hi = float(max(np.max(a) for a in arrays))
        return lo, (hi if hi > lo else lo + 1e-3)

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _no_options(task, options):
    if options:
        raise TypeError(f"{type(task).__name__}.metric takes no option {sorted(options)}.")


def label_channel(labels, index, axis=-1):
    """Channel `index` of raw labels whose channels are on `axis` (that axis
    dropped): `labels[..., index]` in image layout."""
    return keras.ops.take(labels, index, axis=axis)


def one_hot(ids, depth, axis=-1):
    """`keras.ops.one_hot` with the classes on `axis` of the result; a
    negative axis counts from the end of the result (TensorFlow's one_hot
    accepts no negative axis other than -1)."""
    rank = len(ids.shape) + 1
    return keras.ops.one_hot(ids, depth, axis=axis % rank)


def softmax_cross_entropy(target, logits, axis=-1):
    """Per-pixel softmax cross-entropy over the class axis `axis` (float32).

    `target` is one-hot (or probabilities summing to 1) on that axis, so
    -sum(target * log_softmax(logits)) = logsumexp(logits) - sum(target *
    logits). Written with reductions only: TensorFlow's (log_)softmax
    transposes any axis but the last one to the end and back.
    """
    logits = keras.ops.cast(logits, "float32")
    return keras.ops.logsumexp(logits, axis=axis) - keras.ops.sum(target * logits, axis=axis)


def concrete_values(x):
    """x as a numpy array if it holds values (not a symbolic/traced tensor)."""
    if isinstance(x, np.ndarray):
        return x
    try:
        return keras.ops.convert_to_numpy(x)
    except Exception:  # traced or symbolic tensors have no values
        return None
