"""A train step that is not applied when its loss is NaN or infinite.

`AdaptableModel` (the base of every uvim_keras model) trains with this step
by default, and `fit` adds a `StopOnNonFinite` callback that raises
`NonFiniteLossError` at the first such step. So a NaN batch (NaN images,
labels a task cannot encode, a diverging learning rate) stops training with
the model as it was *before* that step: weights, optimizer slots and
iterations, and the state the forward pass updates (the VQ dictionary and
its counts, seed generators). ``fit(..., stop_on_nan=False)`` trains with
Keras' own step and no stop.

The step's finiteness is that of Keras' running mean of the loss (logged as
``loss``): NaN or infinite from the first non-finite step of the epoch on,
so the logs keep showing it and every later step of the epoch (with
``steps_per_execution`` > 1, the rest of the execution) is skipped too. Only
the loss is checked: a step whose loss is finite but whose gradients are
not is applied (its NaN weights then make the next loss NaN).

Per backend (all keep Keras' metrics updates, so the NaN shows in the logs):

* JAX: Keras' own stateless step, then ``where(finite, new, old)`` over the
  state (fused by XLA into the update);
* TensorFlow: the step with the optimizer update under ``tf.cond`` and the
  variables the forward pass assigns restored in the other branch (without
  a `tf.distribute` strategy; under one, Keras' own step runs);
* torch: the step checks the loss (one device sync) before the backward
  pass and restores the variables the forward pass assigned (a copy of
  them, not of the weights, is kept for the step).
"""

import keras

from uvim_keras.training.callbacks import NonFiniteLossError, StopOnNonFinite

__all__ = ["NonFiniteLossError", "StopOnNonFinite", "forward_state_variables",
           "guarded_train_step"]


def forward_state_variables(model):
    """The non-trainable variables the forward pass may assign: variables
    created non-trainable (the VQ dictionary and counts, ...) and seed
    generator states, not the frozen weights of a frozen or LoRA model."""
    weights = set()
    for layer in model._flatten_layers(include_self=True):
        weights.update(id(v) for v in getattr(layer, "_trainable_variables", ()))
    return [v for v in model.non_trainable_variables if id(v) not in weights]


def _batch_size(x):
    first = next(i for i in keras.tree.flatten(x) if i is not None)
    return first


def _jax_step(model, super_step, state, data):
    import jax.numpy as jnp

    logs, new_state = super_step(state, data)
    loss = logs.get("loss") if isinstance(logs, dict) else None
    if loss is None:
        return logs, new_state
    finite = jnp.isfinite(loss)

    def keep(new, old):
        return [jnp.where(finite, n, o) for n, o in zip(new, old)]

    trainable, non_trainable, optimizer, metrics = new_state
    old_trainable, old_non_trainable, old_optimizer, _ = state
    return logs, (keep(trainable, old_trainable), keep(non_trainable, old_non_trainable),
                  keep(optimizer, old_optimizer), metrics)


def _tf_step(model, super_step, data):
    import tensorflow as tf

    if tf.distribute.has_strategy() or not model.trainable_weights or model.optimizer is None:
        return super_step(data)
    state = forward_state_variables(model)
    saved = [tf.identity(v.value) for v in state]
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True) if model._call_has_training_arg else model(x)
        loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                   training=True)
        model._loss_tracker.update_state(loss, sample_weight=tf.shape(_batch_size(x))[0])
        scaled = model.optimizer.scale_loss(loss)
    trainable = model.trainable_weights
    gradients = tape.gradient(scaled, trainable)
    if not model.optimizer.built:
        model.optimizer.build(trainable)

    def apply():
        model.optimizer.apply_gradients(zip(gradients, trainable))
        return tf.constant(True)

    def skip():
        for v, value in zip(state, saved):
            v.assign(value)
        return tf.constant(False)

    tf.cond(tf.math.is_finite(loss), apply, skip)
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def _torch_step(model, super_step, data):
    import torch

    if not model.trainable_weights or model.optimizer is None:
        return super_step(data)
    state = forward_state_variables(model)
    with torch.no_grad():
        saved = [v.value.detach().clone() for v in state]
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    y_pred = model(x, training=True) if model._call_has_training_arg else model(x)
    model.zero_grad()
    loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                               training=True)
    model._loss_tracker.update_state(loss, sample_weight=_batch_size(x).shape[0])
    if bool(torch.isfinite(loss.detach())):
        loss = model.optimizer.scale_loss(loss)
        loss.backward()
        trainable = model.trainable_weights[:]
        with torch.no_grad():
            model.optimizer.apply([v.value.grad for v in trainable], trainable)
    else:
        with torch.no_grad():
            for v, value in zip(state, saved):
                v.assign(value)
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def guarded_train_step(model, super_step, *args):
    """`model`'s train step (Keras' `super_step`) that leaves the model as it
    was when the loss is not finite (module doc)."""
    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_step(model, super_step, *args)
    if backend == "tensorflow":
        return _tf_step(model, super_step, *args)
    if backend == "torch":
        return _torch_step(model, super_step, *args)
    return super_step(*args)
