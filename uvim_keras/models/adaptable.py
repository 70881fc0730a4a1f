"""What a subclassed UViM model adds to `keras.Model` so that Keras'
quantization and LoRA adapt it, and the adapted model round-trips.

Every transformer projection is a `keras.layers.EinsumDense` (see
`uvim_keras.layers.transformer`), so `Model.quantize(mode)` and
`EinsumDense.enable_lora(rank)` apply to them directly. What a subclassed
model needs on top:

* **Quantized configs.** `quantize` swaps the kernels of every
  `EinsumDense`, `Dense` and `Embedding` for quantized ones and gives those
  layers a quantized dtype policy. A subclassed model builds its layers in
  `__init__`, so a config that only said "float32" would rebuild float layers
  and the saved int8 weights would not load. As keras-hub's `Backbone` does,
  the config carries a `keras.dtype_policies.DTypePolicyMap` {layer path:
  policy} of the quantized layers; every layer passes its policy to its
  sublayers, so the map reaches them when the model is built from that config.
* **LoRA** on the attention query and value projections, keras-hub's
  `Backbone.enable_lora` API (`enable_lora`, `default_lora_layer_names`).

It also makes `fit` never train silently on bad data: a step whose loss is
NaN/inf is not applied and stops training with `NonFiniteLossError`
(`stop_on_nan`, see `AdaptableModel.fit` and `uvim_keras.training.nonfinite`),
and the labels of a task model are checked (in-memory arrays up front,
`tf.data` batches in the pipeline, compiled steps through the task's loss).
"""

import gc
import sys
import warnings

import keras
import numpy as np

from uvim_keras.models.sharding import MODEL_AXIS, uvim_layout_map

from uvim_keras.training.nonfinite import StopOnNonFinite, guarded_train_step

# Keras warns once per layer it cannot quantize (norms, convolutions, position
# embeddings, the codebook, ...); they stay in float by design.
_NOT_QUANTIZABLE = r"Layer \w+ does not have a `quantize` method implemented"

#: Layers LoRA adapts by default: the attention query and value projections
#: (`MultiHeadDotProductAttention.query` / `.value`), as keras-hub does.
LORA_LAYER_NAMES = ("query", "value")


def dtype_config(model):
    """The serialized dtype of `model` for `get_config`: its policy, or a
    `DTypePolicyMap` over it naming each quantized sublayer."""
    policy = model.dtype_policy
    if not isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        policy_map = keras.dtype_policies.DTypePolicyMap(default_policy=policy)
        for layer in model._flatten_layers(include_self=False):
            if layer.quantization_mode is not None:
                policy_map[layer.path] = layer.dtype_policy
        if len(policy_map):
            policy = policy_map
    return keras.dtype_policies.serialize(policy)


def quantized_layers(model):
    """{layer path: quantization mode} of the quantized layers of `model`."""
    return {
        layer.path: layer.quantization_mode
        for layer in model._flatten_layers(include_self=False)
        if layer.quantization_mode is not None
    }


def enable_lora(model, rank, target_layer_names=None, lora_alpha=None):
    """Freezes `model` and adds rank-`rank` LoRA kernels to every
    `EinsumDense` named in `target_layer_names` (default: `LORA_LAYER_NAMES`);
    only the LoRA kernels train. Returns the adapted layers' paths."""
    if int(rank) != rank or rank < 1:
        raise ValueError(f"rank={rank!r}: expected a positive integer.")
    names = LORA_LAYER_NAMES if target_layer_names is None else tuple(target_layer_names)
    targets = [layer for layer in model._flatten_layers(include_self=False)
               if layer.name in names and isinstance(layer, keras.layers.EinsumDense)]
    if not targets:
        raise ValueError(
            f"{model.name}: no EinsumDense layer is named {list(names)}; the attention "
            f"projections are named {list(LORA_LAYER_NAMES)} (and 'key', "
            "'attention_output', the MLP's 'dense_0' and 'dense_1')."
        )
    already = [layer.path for layer in targets if layer.lora_enabled]
    if already:
        raise ValueError(f"{model.name}: LoRA is already enabled on {already[:3]}.")
    for layer in model._flatten_layers(include_self=False):
        layer.trainable = False
    for layer in targets:
        layer.trainable = True
        layer.enable_lora(int(rank), lora_alpha=lora_alpha)
        if layer.bias is not None:
            layer.bias.trainable = False  # only the LoRA kernels train
    return [layer.path for layer in targets]


class AdaptableModel(keras.Model):
    """`keras.Model` that Keras' quantization and LoRA adapt, with the adapted
    state surviving `get_config`, `.keras` files and presets (see the module
    docstring).

    `quantize` checks that every layer is built before changing any (so a
    failure leaves the model as it was) and does not warn about the layers
    that stay in float by design.

    Example:
    >>> lm.quantize("int8")               # every transformer kernel, in one call
    >>> lm.save("lm_int8.keras")          # loads back quantized
    >>> lm.enable_lora(4)                 # query/value LoRA; only it trains
    """

    @classmethod
    def get_layout_map(cls, device_mesh, model_axis=MODEL_AXIS):
        """The `keras.distribution.LayoutMap` that shards this model's large
        kernels (attention heads, MLP hidden units, the VQ dictionary) on
        `model_axis` of `device_mesh` (keras-hub's `Backbone.get_layout_map`;
        the rules are `models.sharding`'s, shared by every UViM model).

        Example:
        >>> mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "model"))
        >>> keras.distribution.set_distribution(keras.distribution.ModelParallel(
        ...     layout_map=UViM.get_layout_map(mesh), batch_dim_name="batch"))
        """
        return uvim_layout_map(device_mesh, model_axis)

    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        unbuilt = [layer.name for layer in self._flatten_layers() if not layer.built]
        if unbuilt:
            raise ValueError(
                f"{self.name}: cannot quantize, layers not built: {unbuilt[:5]}; "
                "build the model (call it once) first."
            )
        # Keras runs a full garbage collection each time a layer drops its
        # float kernel; with the objects that exist now frozen (set aside by
        # the collector until `unfreeze`) each one is cheap (benchmarks/README.md).
        gc.freeze()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_NOT_QUANTIZABLE)
                super().quantize(mode, config=config, filters=filters, **kwargs)
        finally:
            gc.unfreeze()

    def default_lora_layer_names(self):
        """Layer names `enable_lora` adapts by default (keras-hub's API)."""
        return list(LORA_LAYER_NAMES)

    def enable_lora(self, rank, target_layer_names=None, lora_alpha=None):
        """LoRA of rank `rank` on the attention query and value projections
        (or the `EinsumDense` layers named in `target_layer_names`); the rest
        of the model is frozen. Saving stores the merged kernels, so the saved
        model loads without LoRA. Returns the adapted layers' paths.

        Args:
          rank: the rank of the LoRA factors.
          target_layer_names: names of the layers to adapt (default
            `default_lora_layer_names()`).
          lora_alpha: LoRA's scale numerator (Keras' default: `rank`).
        """
        return enable_lora(self, rank, target_layer_names, lora_alpha)

    # -- training: never silently on NaN or bad labels --------------------------
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            *args, stop_on_nan=True, **kwargs):
        """`keras.Model.fit`, which by default stops at a non-finite loss.

        With `stop_on_nan=True` (the default) a step whose loss is NaN or
        infinite is not applied (weights, optimizer state, VQ dictionary and
        counts stay as they were before it; `uvim_keras.training.nonfinite`)
        and training stops with `uvim_keras.training.NonFiniteLossError`
        naming the step, the loss and what to check. `stop_on_nan=False`
        trains with Keras' own step and no stop (NaN weights and all).

        A model with a task (`UViMStage1`) checks its labels too: in-memory
        arrays (`x={"image": ..., "labels": ...}`) before training, every
        batch of a `tf.data.Dataset` inside the pipeline (one min/max pass per
        batch, off the training step); ValueError names the range found.
        Other data sources (generators, `PyDataset`) are checked by the
        task's loss in the compiled step: labels it cannot encode make the
        loss NaN, which stops training as above. The other arguments are
        `keras.Model.fit`'s.
        """
        stop_on_nan = bool(stop_on_nan)
        if stop_on_nan and callbacks is not None and not isinstance(callbacks, (list, tuple)):
            raise ValueError(
                f"callbacks of type {type(callbacks).__name__}: pass a list (fit adds its stop "
                "on a non-finite loss to it), or stop_on_nan=False.")
        if getattr(self, "_stop_on_nan", True) != stop_on_nan:
            self.train_function = None  # traced with the guard (or without)
        self._stop_on_nan = stop_on_nan
        callbacks = list(callbacks or [])
        if stop_on_nan:
            existing = [c for c in callbacks if isinstance(c, StopOnNonFinite)]
            for c in existing:
                if c.note is None:
                    c.note = non_finite_note
            if not existing:
                callbacks.insert(0, StopOnNonFinite(note=non_finite_note))
        task = getattr(self, "task", None)
        labels_error = {}
        if task is not None and hasattr(task, "check_label_values"):
            x = _checked_labels(task, x, labels_error)
        try:
            return super().fit(x, y, batch_size, epochs, verbose, callbacks, *args, **kwargs)
        except Exception as e:
            if "error" in labels_error:  # raised inside the tf.data pipeline
                raise labels_error["error"] from None
            raise e

    def train_step(self, *args):
        if not getattr(self, "_stop_on_nan", True):
            return super().train_step(*args)
        return guarded_train_step(self, super().train_step, *args)

    def get_config(self):
        return {**super().get_config(), "dtype": dtype_config(self)}


def non_finite_note(model):
    """The end of the `NonFiniteLossError` message of a uvim_keras model."""
    parts = []
    if getattr(model, "_stop_on_nan", False):
        parts.append("The step was not applied: the model (weights, optimizer state, "
                     "VQ dictionary) is as it was before it.")
    task = getattr(model, "task", None)
    hint = task.label_error_hint() if hasattr(task, "label_error_hint") else ""
    if hint:
        parts.append(f"{task!r} makes its loss NaN for labels it cannot encode: {hint}.")
    parts.append("Check that batch for NaN/inf images or labels, or lower the learning rate; "
                 "fit(..., stop_on_nan=False) trains on regardless.")
    return " ".join(parts)


def _checked_labels(task, x, holder):
    """`x` with its labels checked: arrays now, a tf.data pipeline per batch
    (a failing batch stores its ValueError in `holder["error"]`)."""
    if isinstance(x, dict) and "labels" in x:
        labels = x["labels"]
        if isinstance(labels, np.ndarray) or keras.ops.is_tensor(labels):
            task.check_labels(labels)
        return x
    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(x, tf.data.Dataset):
        return x
    spec = x.element_spec
    first = spec[0] if isinstance(spec, tuple) and spec else spec
    if not isinstance(first, dict) or "labels" not in first:
        return x

    def check(labels):
        try:
            task.check_label_values(labels)
        except ValueError as e:
            holder.setdefault("error", ValueError(f"a batch of the dataset: {e}"))
            return False
        return True

    def checked(*element):
        inputs = element[0]
        ok = tf.numpy_function(check, [inputs["labels"]], tf.bool)
        ok = tf.debugging.Assert(ok, ["uvim_keras: labels out of range (fit raises ValueError)"])
        with tf.control_dependencies([ok]):
            inputs = {**inputs, "labels": tf.identity(inputs["labels"])}
        return (inputs, *element[1:]) if len(element) > 1 else inputs

    if isinstance(spec, tuple):
        return x.map(checked, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return x.map(lambda inputs: checked(inputs), num_parallel_calls=tf.data.AUTOTUNE,
                 deterministic=True)
