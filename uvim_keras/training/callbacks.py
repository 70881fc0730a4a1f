"""Keras callbacks for long runs: checkpoints, a stop on NaN/inf, logs.

All three count the *global* step -- batches consumed since the start of
the run, i.e. the optimizer's ``iterations`` -- so that they continue where
a resumed run left off (Keras' own batch indices restart every epoch and
`keras.callbacks.TensorBoard`'s batch step restarts at 0 in every ``fit``).

>>> model.fit(ds, epochs=..., steps_per_epoch=..., callbacks=[
...     StopOnNonFinite(),                                  # first: a NaN step is never saved
...     ResumableCheckpoint("workdir/checkpoints", every_n_steps=1000),
...     TrainingLogger("workdir/logs", every_n_steps=50)])
"""

import json
import math
import os
import time
import warnings

import keras
import numpy as np

from uvim_keras.training.checkpoint import (
    is_main_process,
    latest_checkpoint,
    optimizer_step,
    save_checkpoint,
)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""

    def __init__(self, step, name, value, logs, note=None):
        self.step, self.name, self.value, self.logs = step, name, value, dict(logs)
        self.note = note
        shown = ", ".join(f"{k}={v:.6g}" for k, v in self.logs.items()
                          if isinstance(v, (int, float)))
        super().__init__(
            f"non-finite {name} at step {step}: {name}={value} ({shown}). Keras logs the mean "
            "since the start of the epoch, so this is the first step whose loss was not finite. "
            "Training stopped; checkpoints written before this step are intact."
            + (f" {note}" if note else ""))


def _scalar_logs(logs):
    out = {}
    for k, v in (logs or {}).items():
        try:
            out[k] = float(np.asarray(v))
        except (TypeError, ValueError):
            continue
    return out


def _loss_keys(logs):
    return [k for k in logs if k == "loss" or k.endswith("_loss")]


def _non_finite_loss(logs):
    """(name, value) of the first loss in `logs` that is NaN/inf, else None."""
    for k in _loss_keys(logs):
        if not math.isfinite(logs[k]):
            return k, logs[k]
    return None


def _unwrap_optimizer(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


class _GlobalStep(keras.callbacks.Callback):
    """Keeps `self.step`: batches consumed since the start of the run.

    Read from the optimizer's ``iterations`` when training begins (so it
    continues after `resume`), then counted from Keras' batch indices
    without touching the (on JAX, detached) model state.
    """

    def __init__(self):
        super().__init__()
        self.step = 0
        self._epoch_start = 0
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self.step = optimizer_step(self.model)
        self._epoch_start = self.step

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self.step
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.step = self._epoch_start + int(batch) + 1


class StopOnNonFinite(_GlobalStep):
    """Stops training at the first step whose loss is NaN or infinite.

    Checks ``loss`` and every ``*_loss`` in the logs after each step and
    raises `NonFiniteLossError` naming the step and the values (with
    `raise_error=False` it prints the same message and sets
    ``model.stop_training`` instead; `ResumableCheckpoint` never saves such
    a state). Put it before `ResumableCheckpoint` in the callback list.
    `note`: text (or a function of the model returning it) appended to the
    message. uvim_keras models add one to their ``fit`` by default (see
    `uvim_keras.training.nonfinite`).
    """

    def __init__(self, raise_error=True, note=None):
        super().__init__()
        self.raise_error = bool(raise_error)
        self.note = note
        self.error = None

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        logs = _scalar_logs(logs)
        bad = _non_finite_loss(logs)
        if bad is None:
            return
        note = self.note(self._model) if callable(self.note) else self.note
        self.error = NonFiniteLossError(self.step, bad[0], bad[1], logs, note=note)
        if self.raise_error:
            self.model  # noqa: B018  (on JAX: attaches the training state to the variables)
            raise self.error
        print(f"\n{self.error}", flush=True)
        self._model.stop_training = True


class ResumableCheckpoint(_GlobalStep):
    """Saves a resumable checkpoint every `every_n_steps` global steps.

    The checkpoint (`uvim_keras.training.save_checkpoint`) holds the model's
    variables (VQ dictionary and counts, seed-generator states included),
    the optimizer state and the step = the data position. Restore it with
    `uvim_keras.training.resume(model, directory)` before ``fit`` (or use
    `uvim_keras.training.fit_resumable`, which also skips the data consumed).

    Args:
      directory: where the ``ckpt-*`` directories go.
      every_n_steps: save period in global steps (with ``steps_per_execution``
        > 1: at the first step at or after each multiple).
      keep, keep_every_n_steps: see `save_checkpoint`.
      save_on_train_end: also save when ``fit`` returns normally.
      extra: JSON data stored in every checkpoint's meta.json.
    """

    def __init__(self, directory, every_n_steps=1000, keep=3, keep_every_n_steps=None,
                 save_on_train_end=True, extra=None, verbose=1):
        super().__init__()
        if int(every_n_steps) < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be >= 1.")
        self.directory = os.fspath(directory)
        self.every_n_steps = int(every_n_steps)
        self.keep = keep
        self.keep_every_n_steps = keep_every_n_steps
        self.save_on_train_end = bool(save_on_train_end)
        self.extra = dict(extra or {})
        self.verbose = verbose
        self.last_saved_step = None
        self._finite = True

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        latest = latest_checkpoint(self.directory)
        self.last_saved_step = None if latest is None else latest.step
        self._finite = True

    def on_train_batch_end(self, batch, logs=None):
        previous = self.step
        super().on_train_batch_end(batch, logs)
        if _non_finite_loss(_scalar_logs(logs)) is not None:
            self._finite = False
        if self.step // self.every_n_steps > previous // self.every_n_steps:
            self.save()

    def on_train_end(self, logs=None):
        if self.save_on_train_end and self.step != self.last_saved_step:
            self.save()

    def save(self):
        """Saves now (unless a loss was NaN/inf this run); returns the info or None."""
        if not self._finite:
            warnings.warn(f"not saving a checkpoint at step {self.step}: the loss was not "
                          "finite.", stacklevel=2)
            return None
        model = self.model  # on JAX: attaches the training state to the variables
        info = save_checkpoint(model, self.directory, self.step, epoch=self._epoch,
                               extra=self.extra, keep=self.keep,
                               keep_every_n_steps=self.keep_every_n_steps)
        self.last_saved_step = self.step
        if self.verbose and is_main_process():
            print(f"\nsaved checkpoint {info.path}", flush=True)
        return info


def _schedule(optimizer):
    schedule = getattr(_unwrap_optimizer(optimizer), "_learning_rate", None)
    if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return schedule
    return None


def learning_rate_at(optimizer, step):
    """The base learning rate of the update with 0-based index `step`.

    For a schedule this is ``schedule(step)``, computed without reading the
    optimizer's variables; a constant rate is read from the optimizer (on
    JAX, during ``fit``, only after the model state was attached, e.g. by
    reading ``callback.model``). Per-variable multipliers (e.g. the
    stage-II encoder's 0.1) are not included.
    """
    schedule = _schedule(optimizer)
    if schedule is not None:
        return float(keras.ops.convert_to_numpy(schedule(max(int(step), 0))))
    return float(keras.ops.convert_to_numpy(_unwrap_optimizer(optimizer).learning_rate))


def _scalar_metadata():
    """SummaryMetadata that makes TensorBoard show a value as a scalar."""
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


class TrainingLogger(_GlobalStep):
    """Logs losses, metrics and the learning rate every `every_n_steps` steps.

    Writes TensorBoard scalars (``<log_dir>/train``; validation metrics of an
    epoch under ``<log_dir>/validation``) at the global step -- ``loss``,
    every logged metric (for `UViMStage1`: ``reconstruction_loss``,
    ``codebook_max_ratio``, ``codebook_zeros_ratio``), ``learning_rate``
    (the base rate used by the step just taken) and ``steps_per_second`` --
    and appends the same as JSON lines to ``<log_dir>/metrics.jsonl``.
    TensorBoard output needs TensorFlow (not the tensorboard package); without
    it only the JSON lines are written. Values are Keras' running means since
    the start of the epoch. In a multi-host run only the first process writes.
    """

    def __init__(self, log_dir, every_n_steps=50, tensorboard=True, jsonl=True):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self.every_n_steps = int(every_n_steps)
        self.tensorboard = bool(tensorboard)
        self.jsonl = bool(jsonl)
        self._writers = None
        self._tf = None
        self._t0 = None

    def _writer(self, name):
        if not self.tensorboard:
            return None
        if self._writers is None:
            self._writers = {}
            try:
                import tensorflow as tf
            except ImportError:
                warnings.warn("TensorFlow is not installed: TrainingLogger writes only "
                              "metrics.jsonl.", stacklevel=2)
                self.tensorboard = False
                return None
            self._tf = tf
        if name not in self._writers:
            self._writers[name] = self._tf.summary.create_file_writer(
                os.path.join(self.log_dir, name))
        return self._writers[name]

    def write(self, split, step, scalars):
        """Writes `scalars` {name: float} at `step` (TensorBoard + JSON lines);
        in a multi-host run only the first process writes."""
        if not scalars or not is_main_process():
            return
        writer = self._writer(split)
        if writer is not None:
            tf = self._tf
            with writer.as_default(step=int(step)):
                for k, v in scalars.items():
                    # TensorBoard's scalar summary, written with TF core only
                    # (tf.summary.scalar needs the tensorboard package).
                    tf.summary.write(k, tf.constant(v, tf.float32),
                                     metadata=_scalar_metadata())
            writer.flush()
        if self.jsonl:
            os.makedirs(self.log_dir, exist_ok=True)
            with open(os.path.join(self.log_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps({"split": split, "step": int(step), **scalars}) + "\n")

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._t0, self._t0_step = time.time(), self.step

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if self.step % self.every_n_steps:
            return
        scalars = _scalar_logs(logs)
        # A schedule is evaluated at the step; a constant rate is a variable
        # that needs the (JAX) training state attached: `self.model` does that.
        model = self._model if _schedule(self._model.optimizer) is not None else self.model
        scalars["learning_rate"] = learning_rate_at(model.optimizer, self.step - 1)
        now = time.time()
        if self.step > self._t0_step:
            scalars["steps_per_second"] = (self.step - self._t0_step) / max(now - self._t0, 1e-9)
        self._t0, self._t0_step = now, self.step
        self.write("train", self.step, scalars)

    def on_epoch_end(self, epoch, logs=None):
        val = {k[4:]: v for k, v in _scalar_logs(logs).items() if k.startswith("val_")}
        self.write("validation", self.step, val)

    def on_train_end(self, logs=None):
        for writer in (self._writers or {}).values():
            writer.flush()


__all__ = ["NonFiniteLossError", "ResumableCheckpoint", "StopOnNonFinite", "TrainingLogger",
           "learning_rate_at"]
