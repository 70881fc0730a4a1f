"""keras-hub tasks of complete UViM presets: the stage-II guiding-code LM on
the stage-I backbone (this module imports keras-hub).

One class per kind of task, each a subclass of the keras-hub task base that
fits, so keras-hub's own entry points find them (after `import uvim_keras`):

* `UViMImageSegmenter` (`keras_hub.models.ImageSegmenter`): panoptic;
* `UViMDepthEstimator` (`keras_hub.models.DepthEstimator`): depth;
* `UViMColorizer` (`keras_hub.models.ImageToImage`): colorization;
* `UViMStage2Task` (`keras_hub.models.Task`): their common base, and the
  class of any other task (e.g. one added by a user).

Their `predict` takes raw images (uint8 or floats in [0, 255], any size) and
returns the outputs at each input's size: the saved preprocessor resizes to
the model's size and maps to [-1, 1], UViM runs, and each output is resized
back (nearest for label maps, bilinear otherwise). Calling the task, like
calling `UViM`, takes model inputs in [-1, 1] at the model's size.

>>> import uvim_keras, keras_hub
>>> segmenter = keras_hub.models.ImageSegmenter.from_preset("panoptic_folder")
>>> panoptic = segmenter.predict(photos_uint8)  # (N, H, W, 2) at the photos' size
"""

import keras
import keras_hub
import numpy as np

from uvim_keras.models.lm import GuidingCodeLM
from uvim_keras.models.uvim import UViM
from uvim_keras.keras_hub_models.backbone import UViMStage1Backbone
from uvim_keras.keras_hub_models.preprocessing import (
    UViMDepthEstimatorPreprocessor,
    UViMImageSegmenterPreprocessor,
    UViMPreprocessor,
)
from uvim_keras.data.images import resize_output
from uvim_keras.presets.layout import PresetError


class _Parts:
    """Holds the task's `UViM` view out of Keras' tracking (its LM and
    stage-I model are the task's own `lm` and `backbone`)."""

    def __init__(self, uvim):
        self.uvim = uvim


@keras.saving.register_keras_serializable(package="uvim_keras")
class UViMStage2Task(keras_hub.models.Task):
    """keras-hub task: the stage-II guiding-code LM on a stage-I backbone,
    i.e. a complete UViM.

    Args:
      backbone: a `UViMStage1Backbone` (or its config).
      lm: the `GuidingCodeLM` (or its config).
      temperature: default sampling temperature (None: the task's).
      preprocessor: raw images -> model inputs (`UViMPreprocessor` or the
        task-specific subclass); None leaves `predict` on model inputs.

    `to_uvim()` gives the `UViM` (sharing all weights). When its temperature
    is > 0 (colorization), the task samples each image's code with a seed
    derived from the image's pixels: the same image gives the same output;
    for several samples use `task.to_uvim().sample(...)`.

    Example:
    >>> task = UViMStage2Task(UViMStage1Backbone.from_stage1(stage1), lm,
    ...                       preprocessor=UViMPreprocessor.for_input_size((64, 64)))
    >>> outputs = task.predict(photos_uint8)  # at each photo's size
    """

    backbone_cls = UViMStage1Backbone
    preprocessor_cls = UViMPreprocessor
    def __init__(self, backbone, lm=None, temperature=None, preprocessor=None, name=None,
                 **kwargs):
        kwargs.pop("compile", None)
        # Task's constructor, not the task bases' own (DepthEstimator builds a
        # functional model of its backbone).
        keras_hub.models.Task.__init__(self, name=name, compile=False, **kwargs)
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        if isinstance(lm, dict):
            lm = keras.saving.deserialize_keras_object(_with_backbone_dtype(lm, backbone))
        if lm is None:
            raise ValueError(
                f"{type(self).__name__} needs the stage-II LM (lm=...); a preset whose "
                "task.json was written by an older uvim-keras loads with "
                "uvim_keras.UViM.from_preset(folder) (re-save it with save_to_preset)."
            )
        if not isinstance(lm, GuidingCodeLM):
            raise TypeError(f"lm must be a GuidingCodeLM, got {type(lm).__name__}.")
        if isinstance(preprocessor, dict):
            preprocessor = keras.saving.deserialize_keras_object(preprocessor)
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.lm = lm
        self.temperature = temperature
        self.dtype_policy = backbone.dtype_policy
        self._parts = _Parts(UViM.from_stage1(lm, backbone.stage1, temperature))  # checks fit
        self.built = True

    @classmethod
    def from_uvim(cls, uvim, with_preprocessor=True):
        """The task of a `UViM` built with `UViM.from_stage1` (weights shared)."""
        backbone = UViMStage1Backbone.from_stage1(uvim.stage1)
        preprocessor = None
        if with_preprocessor and cls.preprocessor_cls is not None:
            preprocessor = cls.preprocessor_cls.for_input_size(
                uvim.input_size, **cls._preprocessor_kwargs())
        return cls(backbone, uvim.lm, temperature=uvim.temperature, preprocessor=preprocessor)

    @classmethod
    def _preprocessor_kwargs(cls):
        return {}

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """keras-hub's `from_preset`, after checking that the stage-I config
        `task.json` copies is the preset's `config.json`
        (`check_backbone_config`)."""
        check_backbone_config(preset)
        return keras_hub.models.Task.from_preset.__func__(cls, preset, load_weights=load_weights,
                                                          **kwargs)

    def to_uvim(self):
        """The complete `UViM` (shares the LM and stage-I weights)."""
        return UViM.from_stage1(self.lm, self.backbone.stage1, self.temperature)

    def call(self, images, training=None):
        uvim = self._parts.uvim
        temperature = uvim.default_temperature
        seeds = _pixel_seeds(images) if temperature > 0 else None
        return uvim.run_pipeline(images, temperature=temperature, seeds=seeds)

    def predict(self, x=None, batch_size=None, **kwargs):
        """Outputs for raw images (uint8 or [0, 255] floats; an array
        (N, H, W, 3), one image (H, W, 3) or a list of images of any sizes),
        each at its input's size. Other inputs (`tf.data`, generators) give
        outputs at the model's size."""
        if isinstance(x, (list, tuple)) and len(x) and all(_is_image(i) for i in x):
            return [self.predict(np.asarray(i)[None], batch_size, **kwargs)[0] for i in x]
        size = tuple(np.shape(x)[-3:-1]) if _is_image(x) or _is_images(x) else None
        single = _is_image(x)
        out = super().predict(np.asarray(x)[None] if single else x, batch_size=batch_size,
                              **kwargs)
        resize = self.backbone.task.output_resize  # (the UViM task's rule)
        if self.preprocessor is not None and size is not None and resize:
            method, axes = resize
            out = resize_output(out, size, method, axes)
        return out[0] if single else out

    def get_config(self):
        return {
            "backbone": keras.layers.serialize(self.backbone),
            "lm": keras.layers.serialize(self.lm),
            "temperature": self.temperature,
            "preprocessor": None if self.preprocessor is None
            else keras.layers.serialize(self.preprocessor),
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


_INSTANCE_KEYS = ("name",)  # per-instance Keras keys that may differ between the two copies


def _arch(config):
    config = dict(config)
    config["config"] = {k: v for k, v in dict(config.get("config") or {}).items()
                        if k not in _INSTANCE_KEYS}
    return config


def check_backbone_config(preset):
    """Raises PresetError when a preset's `task.json` holds a stage-I config
    other than its `config.json`.

    A complete preset stores the stage-I model's config twice: `config.json`
    (what `UViMStage1.from_preset` and keras-hub's `Backbone.from_preset`
    build) and, inside `task.json`, the copy keras-hub's task loader builds
    the task's backbone from. `config.json` is the authoritative one; both
    are written from the same model, so a difference means a hand-edited or
    mixed folder, and loading it as a UViM would build another stage-I model
    than loading it as a stage-I model. Such a preset is refused, naming the
    keys that differ, instead of silently taking either copy. Presets
    without a task.json, or whose task.json has no backbone, pass.
    """
    from keras_hub.src.utils.preset_utils import check_file_exists, load_json

    if not check_file_exists(preset, "task.json"):
        return
    task = load_json(preset, "task.json")
    copy = (task.get("config") or {}).get("backbone") if isinstance(task, dict) else None
    if not isinstance(copy, dict):
        return
    config = load_json(preset, "config.json")
    if _arch(copy) == _arch(config):
        return
    outer = sorted(k for k in set(copy) | set(config)
                   if k != "config" and copy.get(k) != config.get(k))
    inner_a, inner_b = _arch(copy)["config"], _arch(config)["config"]
    inner = sorted(k for k in set(inner_a) | set(inner_b) if inner_a.get(k) != inner_b.get(k))
    raise PresetError(
        f"preset {preset}: the stage-I config copied in task.json differs from config.json "
        f"(in {', '.join(outer + inner)}). config.json is the preset's stage-I config; the folder "
        "was edited or mixed from two presets. Save the model again with save_to_preset (or "
        "restore the original files)."
    )


def _is_image(x):
    return isinstance(x, np.ndarray) and x.ndim == 3 and x.shape[-1] == 3


def _is_images(x):
    return (isinstance(x, np.ndarray) or keras.ops.is_tensor(x)) and len(np.shape(x)) == 4


def _pixel_seeds(images):
    """(B,) int32 sampling seeds from each image's pixels: the image in 256
    levels, dotted with fixed random integers in wrapping int32 arithmetic
    (exact, so independent of the batch and the summation order) and cut
    to 31 bits."""
    from keras import ops

    size = int(np.prod(images.shape[1:]))
    levels = ops.cast(ops.round((ops.cast(images, "float32") + 1.0) * 127.5), "int32")
    weights = ops.convert_to_tensor(np.random.default_rng(0).integers(1, 2**20, size), "int32")
    value = ops.sum(ops.reshape(levels, (-1, size)) * weights, axis=-1)
    return ops.bitwise_and(value, 2**31 - 1)


def _uvim_task(cls):
    """Registers a keras-hub task base's UViM subclass and gives it
    `UViMStage2Task`'s methods. The keras-hub base comes first among the
    bases, so keras-hub's preset metadata names it (`tasks`), and its own
    methods (e.g. `DepthEstimator`'s functional `__init__`) would otherwise
    win over UViMStage2Task's."""
    for name in ("__init__", "get_config", "call", "predict", "compile"):
        setattr(cls, name, getattr(UViMStage2Task, name))
    cls.from_preset = UViMStage2Task.__dict__["from_preset"]  # (the classmethod itself)
    cls.backbone_cls = UViMStage1Backbone
    return keras.saving.register_keras_serializable(package="uvim_keras")(cls)


@_uvim_task
class UViMImageSegmenter(keras_hub.models.ImageSegmenter, UViMStage2Task):
    """keras-hub's `ImageSegmenter` for UViM panoptic presets: raw images in,
    (N, H, W, 2) int32 (semantic class, instance id) at each image's size out.

    Example:
    >>> segmenter = keras_hub.models.ImageSegmenter.from_preset("panoptic_folder")
    >>> panoptic = segmenter.predict(photos_uint8)
    """

    preprocessor_cls = UViMImageSegmenterPreprocessor


@_uvim_task
class UViMDepthEstimator(keras_hub.models.DepthEstimator, UViMStage2Task):
    """keras-hub's `DepthEstimator` for UViM depth presets: raw images in,
    depth in metres (N, H, W) at each image's size out.

    Example:
    >>> estimator = keras_hub.models.DepthEstimator.from_preset("depth_folder")
    >>> depth = estimator.predict(photos_uint8)
    """

    preprocessor_cls = UViMDepthEstimatorPreprocessor


@_uvim_task
class UViMColorizer(keras_hub.models.ImageToImage, UViMStage2Task):
    """keras-hub's `ImageToImage` for UViM colorization presets: raw (colour
    or grey) images in, RGB in [-1, 1] (N, H, W, 3) at each image's size out;
    `generate(images)` is `predict`.

    Example:
    >>> colorizer = keras_hub.models.ImageToImage.from_preset("colorization_folder")
    >>> rgb = colorizer.generate(photos_uint8)
    """

    preprocessor_cls = UViMPreprocessor

    @classmethod
    def _preprocessor_kwargs(cls):
        return {"grey": True}

    def generate(self, inputs, **kwargs):
        """Colours for raw images (see `predict`)."""
        return self.predict(inputs, **kwargs)


def _with_backbone_dtype(lm_config, backbone):
    """The LM's serialized config with the backbone's dtype policy, as
    keras-hub's task heads take theirs: `from_preset(..., dtype=...)` gives
    keras-hub's loader's dtype to the backbone only, and the LM must follow.
    Left as stored when either policy is a quantization or a per-layer map
    (a quantized LM keeps its own)."""
    policy = backbone.dtype_policy
    stored = lm_config.get("config", {}).get("dtype")
    plain = type(policy) is keras.dtype_policies.DTypePolicy
    if not plain or (isinstance(stored, dict) and stored.get("class_name") != "DTypePolicy"):
        return lm_config
    config = {**lm_config["config"], "dtype": keras.dtype_policies.serialize(policy)}
    return {**lm_config, "config": config}
