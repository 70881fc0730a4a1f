"""Stage-II data: guiding codes from a frozen stage-I model (the oracle).

Stage II trains `GuidingCodeLM` on ``{"image", "codes"}`` where the codes
are what the trained stage-I oracle emits for the example's label. Two ways:

1. **In the training step** (as big_vision does): `Stage2Model` wraps the LM
   and a frozen `UViMStage1`; its forward pass computes the codes with
   ``stage1.encode`` (inference mode: no code dropout, no dictionary update)
   from ``image_ctx`` (or ``image``) and ``labels``, then the LM's teacher-
   forced logits; the loss is the LM's token cross-entropy. Augmentations
   stay fresh every epoch; costs one oracle forward pass per step.

       model = Stage2Model(lm, stage1)
       model.compile(optimizer=...)
       model.fit(coco_panoptic_dataset("train[4096:]", size=512, batch_size=32))

2. **Precomputed once** (`precompute_codes`): the codes of a finite dataset
   (e.g. the eval-preprocessed training split) are computed once and stored
   with the images -- in memory (``directory=None``) or as ``.npz`` shards
   (`load_code_shards`) -- and the LM trains on them directly
   (``lm.fit(ds)``, or ``Stage2Model.fit`` which passes given ``codes``
   through). Cheaper per step, but any augmentation is frozen into the cache.

Batches for the in-step path: ``image`` at the LM's resolution, ``labels``
at stage I's, and ``image_ctx`` (stage I's image context) when the two
resolutions differ -- exactly what the data pipelines emit with
``size=<LM res>, label_size=<stage-I res>``. Without ``image_ctx`` the image is
resized to stage I's input size (bilinear, antialiased, as `UViM` does).
"""

import json
import os
import weakref

import keras
import numpy as np
from keras import ops

from uvim_keras.models.lm import GuidingCodeLM
from uvim_keras.models.stage1 import UViMStage1
from uvim_keras.metrics.host import to_numpy
from uvim_keras.runtime.backend import compile_stateless

INDEX_FILE = "index.json"


def _dtype_kind(x):
    dtype = keras.backend.standardize_dtype(x.dtype)
    if dtype == "bool":
        return "bool"
    return "int" if ("int" in dtype) else ("float" if "float" in dtype else dtype)


def oracle_inputs(stage1, batch):
    """``{"image", "labels"}`` for ``stage1.encode`` from a data batch.

    Uses ``image_ctx`` when present, else ``image`` (resized to stage I's
    input size if needed). ValueError on a missing key or labels whose dtype
    does not fit the task (e.g. float labels for panoptic).
    """
    if not isinstance(batch, dict):
        raise ValueError(f"batch: got {type(batch).__name__}; expected a dict with 'image' "
                         "(or 'image_ctx') and 'labels'.")
    if "labels" not in batch:
        raise ValueError(f"batch has no 'labels' (keys {sorted(batch)}); the frozen stage-I "
                         "oracle needs the label to compute the guiding code.")
    labels = batch["labels"]
    kind = _dtype_kind(labels)
    if kind != stage1.task.label_kind:
        raise ValueError(
            f"labels have dtype {keras.backend.standardize_dtype(labels.dtype)}; the "
            f"{stage1.task.name} task expects {stage1.task.label_kind} labels.")
    if "image_ctx" in batch:
        image = batch["image_ctx"]
    elif "image" in batch:
        image = batch["image"]
        if tuple(image.shape[1:3]) != tuple(stage1.input_size):
            image = ops.image.resize(ops.cast(image, "float32"), stage1.input_size,
                                     interpolation="bilinear", antialias=True)
    else:
        raise ValueError(f"batch has no 'image' or 'image_ctx' (keys {sorted(batch)}).")
    return {"image": image, "labels": labels}


def oracle_codes(stage1, batch):
    """The frozen oracle's guiding codes (B, code_len) int32 for a batch."""
    return stage1.encode(oracle_inputs(stage1, batch))


@keras.saving.register_keras_serializable(package="uvim_keras")
class Stage2Model(keras.Model):
    """Trains a `GuidingCodeLM` on codes computed in the step by a frozen stage I.

    ``stage1`` is set non-trainable (its weights and VQ state never change;
    its encode runs in inference mode). Batches: ``{"image", "labels"}``
    (+ ``image_ctx``) -- codes from the oracle -- or ``{"image", "codes"}``
    (precomputed codes, passed through). Forward output:
    ``{"logits": (B, code_len, vocab), "codes": (B, code_len)}``; loss: the
    LM's mean token cross-entropy. Only the LM's variables are trained; save
    ``model.lm`` for the stage-II weights.

    Example:
    >>> model = Stage2Model(lm, stage1)
    >>> model.compile(optimizer="adam")
    >>> model.fit(dataset_of_image_labels_batches)
    """

    def __init__(self, lm, stage1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(lm, dict):
            lm = keras.saving.deserialize_keras_object(lm)
        if isinstance(stage1, dict):
            stage1 = keras.saving.deserialize_keras_object(stage1)
        if not isinstance(lm, GuidingCodeLM) or not isinstance(stage1, UViMStage1):
            raise ValueError(f"expected a GuidingCodeLM and a UViMStage1; got "
                             f"{type(lm).__name__} and {type(stage1).__name__}.")
        bad = [(n, a, b) for n, a, b in (("code_len", lm.code_len, stage1.code_len),
                                         ("dict_size", lm.dict_size, stage1.dict_size))
               if a != b]
        if bad:
            raise ValueError("the LM and stage I do not fit together: "
                             + "; ".join(f"{n} {a} != {b}" for n, a, b in bad))
        self.lm = lm
        self.stage1 = stage1
        self.stage1.trainable = False
        self.built = True

    def codes_for(self, inputs):
        """Codes of a batch: given ``codes``, else the frozen oracle's."""
        if isinstance(inputs, dict) and "codes" in inputs:
            return ops.cast(inputs["codes"], "int32")
        return ops.stop_gradient(oracle_codes(self.stage1, inputs))

    def call(self, inputs, training=None):
        if not isinstance(inputs, dict) or "image" not in inputs:
            keys = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            raise ValueError(f"inputs must be a dict with 'image' (got {keys}); the LM needs it.")
        codes = self.codes_for(inputs)
        logits = self.lm({"image": inputs["image"], "codes": codes}, training=training)
        return {"logits": logits, "codes": codes}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        tokens = ops.cast(y_pred["codes"], "int32") + 1
        logp = ops.log_softmax(ops.cast(y_pred["logits"], "float32"), axis=-1)
        nll = -ops.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
        loss = ops.mean(nll)
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss

    def get_config(self):
        return {**super().get_config(),
                "lm": keras.saving.serialize_keras_object(self.lm),
                "stage1": keras.saving.serialize_keras_object(self.stage1)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# -- precomputed codes -----------------------------------------------------------
_ENCODERS = weakref.WeakKeyDictionary()


def _encoder(stage1):
    """``stage1.encode`` compiled once per stage-I model."""
    if stage1 not in _ENCODERS:
        _ENCODERS[stage1] = compile_stateless(
            stage1, lambda image, labels: stage1.encode({"image": image, "labels": labels}))
    return _ENCODERS[stage1]


def _iter_batches(dataset, num_batches):
    it = dataset.as_numpy_iterator() if hasattr(dataset, "as_numpy_iterator") else dataset
    for i, batch in enumerate(it):
        if num_batches is not None and i >= num_batches:
            return
        yield batch


def _write_npz(path, arrays):
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def precompute_codes(stage1, dataset, directory=None, keep=("image",), shard_size=4096,
                     num_batches=None, overwrite=False):
    """Computes the frozen oracle's codes once over a finite batched dataset.

    Args:
      stage1: the trained `UViMStage1`.
      dataset: batches ``{"image", "labels"(, "image_ctx")}`` -- a finite
        (not repeated) tf.data dataset or any iterable of dicts of arrays.
      directory: None keeps everything in memory; else ``.npz`` shards of
        `shard_size` examples and an ``index.json`` are written there (each
        file written atomically; the index last, so a killed run leaves no
        index and is redone).
      keep: batch keys stored next to ``codes`` (the LM needs ``image``).
      num_batches: stop after this many batches (None: the whole dataset).
      overwrite: replace an existing complete cache in `directory`.
    Returns:
      An unbatched ``tf.data.Dataset`` of ``{**keep, "codes": int32
      (code_len,)}``; shuffle/batch it for ``lm.fit``.
    """
    import tensorflow as tf

    if directory is not None:
        index_path = os.path.join(directory, INDEX_FILE)
        if os.path.exists(index_path) and not overwrite:
            raise ValueError(f"{index_path} exists; load it with load_code_shards(directory) "
                             "or pass overwrite=True.")
        os.makedirs(directory, exist_ok=True)
        if os.path.exists(index_path):
            os.remove(index_path)
    encode = _encoder(stage1)
    keep = tuple(keep)
    pending, shards, in_memory = [], [], []

    def flush(force=False):
        while pending and (force or sum(len(p["codes"]) for p in pending) >= shard_size):
            merged = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
            take = min(shard_size, len(merged["codes"]))
            shard = {k: v[:take] for k, v in merged.items()}
            rest = {k: v[take:] for k, v in merged.items()}
            pending.clear()
            if len(rest["codes"]):
                pending.append(rest)
            name = f"shard-{len(shards):05d}.npz"
            _write_npz(os.path.join(directory, name), shard)
            shards.append({"file": name, "num_examples": int(take)})

    for batch in _iter_batches(dataset, num_batches):
        missing = [k for k in keep if k not in batch]
        if missing:
            raise ValueError(f"batch has no key(s) {missing} to keep (keys {sorted(batch)}).")
        inputs = oracle_inputs(stage1, batch)
        codes = to_numpy(encode(inputs["image"], inputs["labels"])).astype(np.int32)
        part = {k: np.asarray(batch[k]) for k in keep}
        part["codes"] = codes
        if directory is None:
            in_memory.append(part)
        else:
            pending.append(part)
            flush()
    if directory is None:
        if not in_memory:
            raise ValueError("dataset yielded no batches.")
        arrays = {k: np.concatenate([p[k] for p in in_memory]) for k in in_memory[0]}
        return tf.data.Dataset.from_tensor_slices(arrays)
    flush(force=True)
    if not shards:
        raise ValueError("dataset yielded no batches.")
    first = np.load(os.path.join(directory, shards[0]["file"]))
    index = {
        "num_examples": sum(s["num_examples"] for s in shards),
        "code_len": stage1.code_len,
        "dict_size": stage1.dict_size,
        "keys": {k: {"dtype": str(first[k].dtype), "shape": list(first[k].shape[1:])}
                 for k in first.files},
        "shards": shards,
    }
    tmp = os.path.join(directory, INDEX_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(index, f, indent=1)
    os.replace(tmp, os.path.join(directory, INDEX_FILE))
    return load_code_shards(directory)


def load_code_shards(directory):
    """The unbatched ``tf.data.Dataset`` of a `precompute_codes` directory."""
    import tensorflow as tf

    index_path = os.path.join(directory, INDEX_FILE)
    if not os.path.exists(index_path):
        raise ValueError(f"{index_path} not found: no complete precomputed-code cache in "
                         f"{directory} (a killed precompute_codes run leaves none).")
    with open(index_path) as f:
        index = json.load(f)
    files = [os.path.join(directory, s["file"]) for s in index["shards"]]
    spec = {k: tf.TensorSpec([None] + v["shape"], tf.as_dtype(v["dtype"]))
            for k, v in index["keys"].items()}

    def shards():
        for path in files:
            with np.load(path) as data:
                yield {k: data[k] for k in spec}

    ds = tf.data.Dataset.from_generator(shards, output_signature=spec).unbatch()
    return ds.apply(tf.data.experimental.assert_cardinality(index["num_examples"]))


__all__ = ["Stage2Model", "load_code_shards", "oracle_codes", "oracle_inputs",
           "precompute_codes"]
