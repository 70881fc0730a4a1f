"""`fit_resumable`: ``model.fit`` that survives a killed job.

>>> result = fit_resumable(model, make_dataset, workdir="runs/panoptic_stage1",
...                        total_steps=111_515, steps_per_epoch=111,
...                        checkpoint_every=1000, log_every=50)

Run the same command again after a kill: it restores the newest complete
checkpoint in ``<workdir>/checkpoints`` (model, optimizer, VQ and RNG
state), positions the data at the step it holds and trains on to
`total_steps`. With a deterministic pipeline the weights equal those of an
uninterrupted run (tested on JAX to 1e-6).

Data position: the number of batches consumed, which is the optimizer's
``iterations``. `data` is either

* a callable ``make_dataset(start_step)`` returning the stream positioned at
  `start_step` (recommended: it can build the pipeline afresh and position
  it cheaply, e.g. by re-seeding); or
* a ``tf.data.Dataset`` (repeated): ``dataset.skip(start_step)``. The
  skipped batches are read and preprocessed again, which costs time on
  long runs. Pass a freshly built dataset: iterating the same dataset
  object a second time in one process reshuffles it (tf.data's
  ``reshuffle_each_iteration``), so only the first iteration of a freshly
  built pipeline reproduces the order of the uninterrupted run. Build it
  under the same TensorFlow global seed too (``keras.utils.set_random_seed``
  or ``tf.random.set_seed``): tf.data combines it with ``shuffle``'s seed; or
* another iterable of batches (a generator, ...): its first `start_step`
  batches are dropped.

`fit_resumable` builds the model symbolically from the data's element spec
before ``fit``: otherwise Keras draws a batch to build an unbuilt model and
then restarts the dataset, so the data would depend on whether the model
happened to be built.

Keras epochs are windows of `steps_per_epoch` steps (progress bar, metric
averages, validation); after a resume in the middle of a window, windows
start at the resume step, so only their boundaries move, not the training.
"""

import dataclasses
import inspect
import itertools
import math
import os

import keras

from uvim_keras.training import checkpoint as ckpt
from uvim_keras.training.callbacks import (
    ResumableCheckpoint,
    StopOnNonFinite,
    TrainingLogger,
    _GlobalStep,
)


@dataclasses.dataclass
class FitResult:
    """What `fit_resumable` did: trained from `start_step` to `step`."""

    start_step: int
    step: int
    restored: object  # the CheckpointInfo resumed from, or None
    history: object  # keras History (None when there was nothing to do)


class StopAtStep(_GlobalStep):
    """Stops ``fit`` once the global step reaches `total_steps`."""

    def __init__(self, total_steps):
        super().__init__()
        self.total_steps = int(total_steps)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if self.step >= self.total_steps:
            self._model.stop_training = True


def _is_tf_dataset(data):
    try:
        import tensorflow as tf
    except ImportError:
        return False
    return isinstance(data, tf.data.Dataset)


def position_data(data, start_step):
    """`data` positioned after its first `start_step` batches (module doc)."""
    start_step = int(start_step)
    if _is_tf_dataset(data):
        return data.skip(start_step) if start_step else data
    if callable(data):
        return data(start_step)
    if isinstance(data, (dict, list, tuple)) or hasattr(data, "shape"):
        raise TypeError(
            "fit_resumable needs a stream of batches: a tf.data.Dataset, a callable "
            "make_dataset(start_step) or an iterable of batches; got in-memory "
            f"{type(data).__name__} (wrap it with tf.data.Dataset.from_tensor_slices(...)"
            ".repeat().batch(...)).")
    try:
        iterator = iter(data)
    except TypeError:
        raise TypeError(f"data of type {type(data).__name__} is not iterable.") from None

    def batches():
        yield from itertools.islice(iterator, start_step, None)

    return batches()


def _with_example(data):
    """(data, a batch or batch spec of it) without consuming a batch."""
    if _is_tf_dataset(data):
        specs = keras.tree.flatten(data.element_spec)
        if any(s.shape.rank is None for s in specs):
            return data, None  # unknown rank: fit builds the model from a batch
        return data, keras.tree.map_structure(
            lambda s: keras.KerasTensor(tuple(s.shape), s.dtype.name), data.element_spec)
    iterator = iter(data)

    def as_tuple(batch):  # Keras takes generator batches as (x,) / (x, y) / (x, y, w)
        return batch if isinstance(batch, tuple) else (batch,)

    try:
        first = as_tuple(next(iterator))
    except StopIteration:
        raise ValueError("data yielded no batch.") from None

    def batches():
        yield first
        for batch in iterator:
            yield as_tuple(batch)

    return batches(), first


def _build_for_fit(model, example):
    """Builds the model's layers, metrics and optimizer from a batch spec.

    Otherwise ``fit`` draws one batch from the dataset to build them and then
    iterates the dataset again from the start -- for a tf.data pipeline with
    a reshuffling ``shuffle`` that second iteration has another order, and a
    resumed run (whose model may be built already) would see other data than
    the run it continues.
    """
    symbolic_build = getattr(model, "_symbolic_build", None)  # Keras 3 trainer
    if symbolic_build is not None and example is not None:
        symbolic_build(data_batch=example)


def fit_resumable(model, data, *, workdir, total_steps, steps_per_epoch=None,
                  checkpoint_every=1000, keep=3, keep_every_n_steps=None, log_every=50,
                  tensorboard=True, stop_on_nonfinite=True, resume=True, callbacks=(),
                  extra=None, verbose="auto", **fit_kwargs):
    """Trains `model` (compiled) to `total_steps` steps, resuming if possible.

    Args:
      model: a compiled Keras model (e.g. `UViMStage1`, `GuidingCodeLM`,
        `Stage2Model`).
      data: ``make_dataset(start_step)``, a repeated ``tf.data.Dataset`` or
        an iterable of batches (module doc).
      workdir: checkpoints go to ``<workdir>/checkpoints``, logs
        (TensorBoard + ``metrics.jsonl``) to ``<workdir>/logs``.
      total_steps: the length of the run in steps (batches).
      steps_per_epoch: Keras epoch length (default: `checkpoint_every`,
        at most `total_steps`).
      checkpoint_every, keep, keep_every_n_steps: `ResumableCheckpoint`.
      log_every: `TrainingLogger` period (None: no logger).
      tensorboard: write TensorBoard scalars (else only metrics.jsonl).
      stop_on_nonfinite: raise `NonFiniteLossError` at a NaN/inf loss (uvim_keras
        models also leave that step unapplied: `AdaptableModel.fit`); False
        trains on (``fit(..., stop_on_nan=False)`` for them).
      resume: restore the newest checkpoint of the workdir. With False, a
        workdir that already has checkpoints is an error.
      callbacks: more Keras callbacks (they run before the checkpoint).
      extra: JSON data stored with every checkpoint.
      **fit_kwargs: passed to ``model.fit`` (``validation_data``, ...).
    Returns:
      `FitResult`.
    """
    total_steps = int(total_steps)
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1.")
    for key in ("epochs", "initial_epoch", "steps_per_epoch", "x", "y", "batch_size"):
        if key in fit_kwargs:
            raise TypeError(f"fit_resumable sets {key!r} itself; do not pass it.")
    workdir = os.fspath(workdir)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if getattr(model, "optimizer", None) is None:
        raise ValueError("compile the model (with its optimizer) before fit_resumable.")
    restored = None
    if resume:
        restored = ckpt.resume(model, ckpt_dir)
    elif ckpt.list_checkpoints(ckpt_dir):
        raise ValueError(f"{ckpt_dir} already holds checkpoints; resume=True continues that "
                         "run, or use another workdir.")
    start = ckpt.optimizer_step(model)
    if start >= total_steps:
        return FitResult(start, start, restored, None)
    spe = int(steps_per_epoch or min(checkpoint_every, total_steps))
    initial_epoch = start // spe
    epochs = initial_epoch + math.ceil((total_steps - start) / spe)
    all_callbacks = [StopAtStep(total_steps)]
    if stop_on_nonfinite:
        all_callbacks.append(StopOnNonFinite())
    all_callbacks += list(callbacks)
    all_callbacks.append(ResumableCheckpoint(ckpt_dir, every_n_steps=checkpoint_every, keep=keep,
                                             keep_every_n_steps=keep_every_n_steps, extra=extra,
                                             verbose=1 if verbose else 0))
    if log_every:
        all_callbacks.append(TrainingLogger(os.path.join(workdir, "logs"), log_every,
                                            tensorboard=tensorboard))
    data, example = _with_example(position_data(data, start))
    _build_for_fit(model, example)
    fit_kwargs.setdefault("shuffle", False)  # a stream: nothing for Keras to shuffle
    if not stop_on_nonfinite and "stop_on_nan" in inspect.signature(model.fit).parameters:
        fit_kwargs.setdefault("stop_on_nan", False)  # uvim_keras models stop by default
    history = model.fit(data, epochs=epochs, initial_epoch=initial_epoch,
                        steps_per_epoch=spe, callbacks=all_callbacks, verbose=verbose,
                        **fit_kwargs)
    return FitResult(start, ckpt.optimizer_step(model), restored, history)


__all__ = ["FitResult", "StopAtStep", "fit_resumable", "position_data"]
