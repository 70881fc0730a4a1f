"""UViM inference: guiding-code LM -> codewords -> base model -> task outputs."""

import contextlib

import keras
import numpy as np
from keras import ops

from uvim_keras.layers import VectorQuantizer
from uvim_keras.models.adaptable import AdaptableModel
from uvim_keras.models.checks import check_image, prepare_images
from uvim_keras.models.lm import GuidingCodeLM
from uvim_keras.models.oracle import BaseModel
from uvim_keras.models.sampling import image_seeds, per_image_noise
from uvim_keras.models.serving import check_export_backend, image_signature
from uvim_keras.models.stage1 import UViMStage1, classproperty, resolve_task
from uvim_keras.presets.api import load_uvim, save_uvim
from uvim_keras.presets.registry import named_presets
from uvim_keras.runtime.backend import (
    CompiledFunctions,
    compile_stateless,
    onnx_compatible_ops,
)


def _deserialize(obj, cls):
    if isinstance(obj, dict):
        obj = keras.saving.deserialize_keras_object(obj)
    if not isinstance(obj, cls):
        raise ValueError(f"expected a {cls.__name__}, got {type(obj).__name__}.")
    return obj


@keras.saving.register_keras_serializable(package="uvim_keras")
class UViM(AdaptableModel):
    """A complete UViM: the stage-II LM samples a guiding code z for the
    image, the stage-I base model turns (image, z) into the task's output.

    `predict(images)` returns the task's outputs for greedily decoded codes
    (or sampled ones at the task's default temperature, e.g. T = 1 for
    colorization); `sample(images, num_samples, temperature, seed)` returns
    several outputs per image. Calling the model, `model(images)`, runs the
    same greedy pipeline without compiling it separately.

    Build it from a trained LM and stage-I model (`from_stage1`, which keeps
    the whole stage-I model as `uvim.stage1`), from a preset (`from_preset`:
    the released big_vision models by name, preset folders, `hf://...`), or
    from parts `UViM(lm, base_model, quantizer, task)` (such a UViM has no
    oracle and cannot be saved as a preset). The LM, quantizer and base
    model must fit together (`code_len`, `dict_size`, `codeword_dim`, the
    task's label channels): a ValueError names what differs.

    Args:
      lm: the stage-II `GuidingCodeLM` (or its serialized config).
      base_model: the stage-I `BaseModel` (or its config). Defaults to
        `None`: taken from `stage1`.
      quantizer: the stage-I `VectorQuantizer` whose codewords the codes
        index (or its config). Defaults to `None`: taken from `stage1`.
      task: a `UViMTask`, a task name or a task config. Defaults to `None`:
        `stage1`'s task.
      temperature: float or None. Sampling temperature of `predict` and
        `call`; None (the default) takes the task's `default_temperature`
        (0, greedy, for panoptic and depth; 1 for colorization).
      stage1: a trained `UViMStage1` (or its config), kept whole as
        `uvim.stage1`; pass it or `base_model` and `quantizer`, not both.
        Defaults to `None`.
      **kwargs: `keras.Model` arguments (`name`, `dtype`, ...).

    Example:
    >>> uvim = UViM.from_preset("panoptic_coco")  # big_vision's release, cached
    >>> uvim = UViM.from_stage1(lm, stage1)       # trained stage II and stage I
    >>> panoptic = uvim.predict(images)           # (B, H, W, 2) int32
    >>> many = uvim.sample(images, num_samples=4, temperature=1.0, seed=0)
    """

    def __init__(self, lm, base_model=None, quantizer=None, task=None, temperature=None,
                 stage1=None, **kwargs):
        super().__init__(**kwargs)
        self.lm = _deserialize(lm, GuidingCodeLM)
        self.stage1 = None if stage1 is None else _deserialize(stage1, UViMStage1)
        if self.stage1 is not None:
            # The stage-I model's own parts (kept whole so the oracle, and
            # with it the complete model, survives saving and presets).
            parts = {"base_model": base_model, "quantizer": quantizer}
            given = [k for k, v in parts.items() if v is not None and v is not getattr(self.stage1, k)]
            if given:
                raise ValueError(
                    f"pass either stage1 or {' and '.join(given)}, not both: the base model "
                    "and quantizer of a UViM built from a stage-I model are that model's."
                )
            base_model, quantizer = self.stage1.base_model, self.stage1.quantizer
            task = self.stage1.task if task is None else task
        missing = [k for k, v in (("base_model", base_model), ("quantizer", quantizer),
                                  ("task", task)) if v is None]
        if missing:
            raise ValueError(
                f"UViM needs {', '.join(missing)} (or a stage-I model: UViM.from_stage1(lm, stage1))."
            )
        self.base_model = _deserialize(base_model, BaseModel)
        self.quantizer = _deserialize(quantizer, VectorQuantizer)
        self.task = resolve_task(task)
        self.temperature = temperature
        if not self.quantizer.built:
            self.quantizer.build((None, self.base_model.code_len, self.quantizer.codeword_dim))
        mismatches = [
            (name, a, b)
            for name, a, b in (
                ("code_len", self.lm.code_len, self.base_model.code_len),
                ("dict_size", self.lm.dict_size, self.quantizer.dict_size),
                ("codeword_dim", self.quantizer.codeword_dim, self.base_model.codeword_dim),
            )
            if a != b
        ]
        if mismatches:
            raise ValueError(
                "the LM, quantizer and base model do not fit together: "
                + "; ".join(f"{n} {a} != {b}" for n, a, b in mismatches)
            )
        if dict(self.task.label_channels) != dict(self.base_model.label_channels):
            raise ValueError(
                f"task {self.task!r} has label channels {self.task.label_channels}, but the "
                f"base model outputs {self.base_model.label_channels}."
            )
        self.input_size = self.lm.input_size
        self._compiled = CompiledFunctions()
        self.seed_generator = keras.random.SeedGenerator(seed=None, name="sampling")
        self._predict_temperature = self._traced_temperature = None  # set by `predict`
        self.built = True

    @classmethod
    def from_stage1(cls, lm, stage1, temperature=None, **kwargs):
        """Combines a trained `GuidingCodeLM` with a trained `UViMStage1`.

        The stage-I model is kept whole (`uvim.stage1`, oracle included), so
        the result saves (`.keras`, `save_to_preset`) as a complete UViM.
        """
        return cls(lm, temperature=temperature, stage1=stage1, **kwargs)

    # -- presets (keras-hub layout; keras-hub is imported only here) ---------------
    @classproperty
    def presets(cls):
        """Named presets that load as a complete UViM: {name: description}."""
        return named_presets(kind="uvim")

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """A complete UViM from a preset.

        `preset` is a named preset (`UViM.presets`: e.g. "panoptic_coco",
        downloaded from big_vision, converted and cached on first use), a
        local preset directory, `hf://org/name`, `kaggle://org/model/keras/
        variant` or any other handle keras-hub understands. The preset must
        hold a stage-II LM (task.json); stage-I presets load with
        `UViMStage1.from_preset`. `kwargs`: `dtype`, `progress` (download
        progress bar, default True).
        """
        return load_uvim(preset, load_weights=load_weights, **kwargs)

    def save_to_preset(self, preset_dir, max_shard_size=10, **card):
        """Writes keras-hub's preset layout: the stage-I backbone
        (`config.json`, `model.weights.h5`), the LM in `task.json` /
        `task.weights.h5`, `metadata.json`, and a model card `README.md`.
        `card` (optional): `description`, `metrics` (dict), `dataset`.
        Needs the stage-I model (build with `UViM.from_stage1`)."""
        return save_uvim(self, preset_dir, max_shard_size=max_shard_size, **card)

    @property
    def default_temperature(self):
        if self.temperature is not None:
            return float(self.temperature)
        return float(self.task.default_temperature)

    # -- pipeline -------------------------------------------------------------
    def _base_image(self, images):
        size = self.base_model.input_size
        if tuple(images.shape[1:3]) == tuple(size):
            return images
        return ops.image.resize(images, size, interpolation="bilinear", antialias=True)

    def decode_codes(self, codes, images):
        """Task outputs for integer codes (B, code_len) and images (B, H, W, 3)."""
        images = ops.convert_to_tensor(images, self.compute_dtype)
        logits = self.base_model(
            codes, image=self._base_image(images), codewords=self.quantizer.codewords()
        )
        return self.task.predict_outputs(logits)

    def call(self, inputs, training=None):
        """Task outputs for images (B, H, W, 3) in [-1, 1]: codes decoded at
        the default temperature (greedy for panoptic and depth; sampled with
        seeds from the model's seed generator otherwise). `inputs` may also be
        {"image": images, "seed": (B,) int seeds}, one sampling seed per image."""
        images, seeds = (inputs["image"], inputs.get("seed")) if isinstance(inputs, dict) \
            else (inputs, None)
        temperature = self._predict_temperature
        temperature = self.default_temperature if temperature is None else temperature
        return self.run_pipeline(images, temperature=temperature, seeds=seeds)

    def run_pipeline(self, images, *, temperature=0.0, seeds=None):
        """LM code -> base model -> task outputs, inside the computation (it
        traces and compiles; `predict` and `sample` are the entry points).

        Args:
          images: (B, H, W, 3) in [-1, 1].
          temperature: 0 decodes greedily; > 0 samples each code token.
          seeds: when sampling, one int seed per image (B,), so an image's
            code depends on its seed only; None draws them from the model's
            seed generator.
        """
        check_image(images, self.input_size)
        noise = None
        if temperature > 0:
            if seeds is None:
                seeds = keras.random.randint(ops.shape(images)[:1], 0, 2**31 - 1,
                                             seed=self.seed_generator)
            noise = per_image_noise(seeds, self.lm.code_len, 1, self.lm.vocab_size)
        codes = self.lm.sample_codes(images, noise=noise, temperature=temperature)
        return self.decode_codes(codes, images)

    def sample(self, images, num_samples=1, temperature=None, seed=None, top_k=0, top_p=0.0):
        """`num_samples` outputs per image: (B, num_samples, ...) numpy.

        `images`: (B, H, W, 3) floats in [-1, 1] or uint8 (converted), checked
        as in `predict`.

        With an int `seed`, image i's samples are drawn with a seed made from
        (seed, i): the same image at the same position gives the same
        samples whatever else is in the batch."""
        images = np.asarray(keras.ops.convert_to_numpy(images))
        check_image(images, self.input_size, name="images")
        images = np.asarray(prepare_images(images, "images"), "float32")
        temperature = self.default_temperature if temperature is None else temperature
        seeds = None if seed is None else image_seeds(_checked_seed(seed), 0, len(images))
        codes = self.lm.generate(
            images, num_samples=num_samples, temperature=temperature, top_k=top_k,
            top_p=top_p, seed=seeds,
        )
        codes = ops.reshape(codes, (-1, self.lm.code_len))
        repeated = np.repeat(images, num_samples, axis=0)
        decode = self._compiled.get("decode", lambda: compile_stateless(self, self.decode_codes))
        out = keras.ops.convert_to_numpy(decode(codes, repeated))
        return out.reshape((images.shape[0], num_samples) + out.shape[1:])

    # -- Keras' predict ---------------------------------------------------------
    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None,
                temperature=None, seed=None):
        """Task outputs for images in [-1, 1] at the model's size: what
        `keras.Model.predict` takes (an array (N, H, W, 3), a `tf.data`
        dataset, a `keras.utils.PyDataset`, ...), with its progress bar.

        An array is checked on the host before Keras' loop (one min/max
        pass): uint8 images are converted (x / 127.5 - 1); floats outside
        [-1, 1] (beyond 1e-3) or NaN/inf raise ValueError. Datasets and
        generators are not checked (their batches only exist inside the
        loop): feed them floats in [-1, 1] (or use a keras-hub task of the
        preset, whose preprocessor takes raw images).

        Greedy codes unless the task's default (or the given) temperature is
        > 0. Sampled codes of an array use per-image seeds made from (seed,
        image index), so `batch_size` does not change them; for a dataset,
        `seed` seeds the model's generator (the same dataset, batched the
        same way, gives the same samples). Returns numpy: panoptic
        (N, H, W, 2) int32, depth (N, H, W), colorization (N, H, W, 3).
        """
        temperature = self.default_temperature if temperature is None else float(temperature)
        if not np.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature={temperature!r}; expected a finite value >= 0.")
        if seed is not None:
            seed = _checked_seed(seed)
        if temperature != self._traced_temperature:
            self._traced_temperature = temperature
            self.predict_function = None  # traced with the temperature
        if isinstance(x, dict) and _is_array(x.get("image")):  # {"image", "seed"}
            images = keras.ops.convert_to_numpy(x["image"])
            check_image(images, self.input_size, name="x['image']")
            x = {**x, "image": prepare_images(images, "x['image']")}
        elif _is_array(x):
            images = keras.ops.convert_to_numpy(x)
            check_image(images, self.input_size, name="x")
            x = images = prepare_images(images, "x")
            if temperature > 0 and seed is not None:
                x = {"image": images, "seed": np.asarray(image_seeds(seed, 0, len(images)),
                                                         "int32")}
        elif temperature > 0 and seed is not None:
            self.seed_generator.state.assign(
                ops.cast(ops.convert_to_tensor([seed, 0]), self.seed_generator.state.dtype))
        self._predict_temperature = temperature
        try:
            return super().predict(x, batch_size=batch_size, verbose=verbose, steps=steps,
                                   callbacks=callbacks)
        finally:
            self._predict_temperature = None

    # -- serving -----------------------------------------------------------------
    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None,
               temperature=None, **kwargs):
        """Keras' `Model.export` (formats, `verbose`, `**kwargs` as there) of
        what `predict` computes: images (B, H, W, 3) float32 in [-1, 1] ->
        the task's outputs. Reload a SavedModel with plain TensorFlow,
        `tf.saved_model.load(filepath).serve(images)` (uvim_keras not needed).

        `input_signature` defaults to a float32 image batch of the model's
        size with any batch size, so a model that was never called exports
        too. Codes are decoded at `temperature` (default: the model's, as in
        `predict`: greedy for panoptic and depth, T = 1 for colorization;
        pass 0 for a deterministic greedy export). A sampled export draws
        each image's seed from the model's seed generator, whose state is
        saved with the model and moves on at each call; to make samples
        reproducible, export with `input_signature=[{"image": (None, H, W, 3)
        float32 spec, "seed": (None,) int32 spec}]` and serve `{"image":
        images, "seed": seeds}`: image i is sampled with seeds[i], as
        `predict(x, seed=s)` samples it with seeds
        `uvim_keras.models.sampling.image_seeds(s, 0, len(x))`.

        A TF SavedModel exports from the JAX and TensorFlow backends (Keras'
        torch path needs torch_xla, see `uvim_keras.models.serving`). ONNX
        of the whole pipeline exports from torch only (its decoding loop is
        unrolled: minutes; jax2onnx and tf2onnx fail on the loop); the base
        model alone exports to ONNX from every backend
        (`uvim.stage1.export_base_model`).
        """
        temperature = self.default_temperature if temperature is None else float(temperature)
        if not np.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature={temperature!r}; expected a finite value >= 0.")
        check_export_backend(format)
        if input_signature is None:
            input_signature = image_signature(self.input_size)
        previous = self._predict_temperature
        self._predict_temperature = temperature  # read by `call` while tracing
        try:
            with onnx_compatible_ops() if format == "onnx" else contextlib.nullcontext():
                return super().export(filepath, format=format, verbose=verbose,
                                      input_signature=input_signature, **kwargs)
        finally:
            self._predict_temperature = previous

    def get_config(self):
        if self.stage1 is not None:
            return {
                **super().get_config(),
                "lm": keras.saving.serialize_keras_object(self.lm),
                "stage1": keras.saving.serialize_keras_object(self.stage1),
                "task": keras.saving.serialize_keras_object(self.task),
                "temperature": self.temperature,
            }
        return {
            **super().get_config(),
            "lm": keras.saving.serialize_keras_object(self.lm),
            "base_model": keras.saving.serialize_keras_object(self.base_model),
            "quantizer": keras.saving.serialize_keras_object(self.quantizer),
            "task": keras.saving.serialize_keras_object(self.task),
            "temperature": self.temperature,
        }


def _checked_seed(seed):
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed={seed!r}: expected None or an int.")
    return int(seed)


def _is_array(x):
    """An array of images (numpy or a backend tensor), as opposed to a
    dataset, a generator or a `PyDataset`."""
    return isinstance(x, np.ndarray) or keras.ops.is_tensor(x)
