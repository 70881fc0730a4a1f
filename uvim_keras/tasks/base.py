"""The task interface: how labels enter the oracle and logits become outputs.

A task tells the stage-I model

* which label keys exist and how many channels each has once encoded
  (`label_channels`, e.g. {"semantics": 134, "instances": 100});
* how raw labels (B, H, W, ...) become those channels (`encode_labels`, e.g.
  one-hot);
* the reconstruction loss between raw labels and the base model's logits
  (`loss`);
* how logits become the task's outputs (`predict_outputs`).

Logits and encoded labels are dicts of image-layout tensors (B, H, W, c).
Everything uses `keras.ops`, so a task runs on every backend and inside
`fit`. To add a task, subclass `UViMTask` in one file and register it with
`@keras.saving.register_keras_serializable`; see `tasks/semantic.py` for a
worked example.
"""

import keras
import numpy as np


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

    def encode_labels(self, labels):
        """Raw labels (B, H, W, label_depth) -> {key: (B, H, W, channels)}."""
        raise NotImplementedError

    def loss(self, labels, logits):
        """Mean reconstruction loss (scalar) of `logits` against raw `labels`."""
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
        values = _concrete(labels)
        if values is not None:
            self.check_label_values(values)

    def check_label_values(self, labels):
        """Checks the values of a concrete numpy label array."""
        if self.label_kind == "float" and not np.all(np.isfinite(labels)):
            raise ValueError(f"labels contain NaN or infinite values ({self.name} task).")

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def _concrete(x):
    """x as a numpy array if it holds values (not a symbolic/traced tensor)."""
    if isinstance(x, np.ndarray):
        return x
    try:
        return keras.ops.convert_to_numpy(x)
    except Exception:  # traced or symbolic tensors have no values
        return None
