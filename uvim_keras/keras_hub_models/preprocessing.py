"""keras-hub preprocessing for UViM presets (this module imports keras-hub).

Raw images, as keras-hub's image tasks take them (uint8, or floats in
[0, 255], any size), become the model's input: resized to its input size
(bilinear, no antialiasing: big_vision's `resize` op) and mapped to [-1, 1]
(`UViMImageConverter`); the colorization preprocessor also turns them grey,
as big_vision's `rgb_to_grayscale_to_rgb`. Saved in a preset as
`preprocessor.json`, so `keras_hub.models.ImageSegmenter.from_preset(...)`
and friends take raw images.
"""

import keras
import keras_hub
import numpy as np
from keras_hub.src.utils.tensor_utils import in_tf_function, preprocessing_function

from uvim_keras.keras_hub_models.backbone import UViMStage1Backbone
from uvim_keras.data.images import GREY_WEIGHTS

#: (x + 1) @ GREY_MATRIX - 1 is the grey image (3 equal channels) of an image
#: in [-1, 1], as big_vision converts before its value range.
GREY_MATRIX = np.repeat(GREY_WEIGHTS[:, None], 3, axis=1)


def _like(x, value):
    """`value` as a tensor of x's kind and dtype: a tf tensor inside tf.data
    (any backend), else the backend's (numpy operands would make torch tensors
    go through NumPy's deprecated array protocol)."""
    if in_tf_function():
        import tensorflow as tf

        return tf.constant(value, dtype=x.dtype)
    return keras.ops.convert_to_tensor(value, dtype=x.dtype)


def image_converter(input_size):
    """The converter of a UViM whose model input is `input_size` (H, W)."""
    return UViMImageConverter(image_size=tuple(input_size), scale=1.0 / 127.5, offset=-1.0,
                              crop_to_aspect_ratio=False, interpolation="bilinear",
                              antialias=False)


@keras.saving.register_keras_serializable(package="uvim_keras")
class UViMImageConverter(keras_hub.layers.ImageConverter):
    """keras-hub's `ImageConverter` for UViM: resize to the model's size
    (bilinear, no antialiasing, aspect ratio not kept, as big_vision) and
    [0, 255] -> [-1, 1].

    Example:
    >>> converter = image_converter((64, 64))
    >>> x = converter(np.zeros((2, 240, 320, 3), "uint8"))  # (2, 64, 64, 3) in [-1, 1]
    """

    backbone_cls = UViMStage1Backbone


class _UViMPreprocessorMixin:
    """What the UViM preprocessors share: the backbone class, the converter
    class, and the model input size they resize to."""

    backbone_cls = UViMStage1Backbone
    image_converter_cls = UViMImageConverter

    @classmethod
    def for_input_size(cls, input_size, **kwargs):
        """The preprocessor of a UViM whose model input is `input_size`."""
        return cls(image_converter=image_converter(input_size), **kwargs)

    @classmethod
    def _add_missing_kwargs(cls, loader, kwargs):
        try:
            return super()._add_missing_kwargs(loader, kwargs)
        except FileNotFoundError as e:  # no preprocessor in the preset
            raise ValueError(
                f"preset {loader.preset} has no preprocessor and task (written by an older "
                "uvim-keras): load it with uvim_keras.UViM.from_preset(...), which takes model "
                "inputs in [-1, 1], or re-save it with save_to_preset to use keras-hub's task "
                f"classes ({e})."
            ) from e


@keras.saving.register_keras_serializable(package="uvim_keras")
class UViMPreprocessor(_UViMPreprocessorMixin, keras_hub.models.Preprocessor):
    """Raw images -> UViM inputs for any task (`UViMStage2Task`); with
    `grey=True` the images also turn grey (colorization).

    Args:
      image_converter: a `UViMImageConverter`.
      grey: convert to grey (3 equal channels) after the value range.

    Example:
    >>> pre = UViMPreprocessor.for_input_size((64, 64))
    >>> x = pre(np.zeros((2, 100, 80, 3), "uint8"))  # (2, 64, 64, 3) in [-1, 1]
    """

    def __init__(self, image_converter=None, grey=False, **kwargs):
        super().__init__(**kwargs)
        self.image_converter = image_converter
        self.grey = bool(grey)

    @preprocessing_function
    def call(self, x, y=None, sample_weight=None):
        if self.image_converter:
            x = self.image_converter(x)
        if self.grey:
            x = (x + 1.0) @ _like(x, GREY_MATRIX) - 1.0
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)

    def get_config(self):
        return {**super().get_config(), "grey": self.grey}


@keras.saving.register_keras_serializable(package="uvim_keras")
class UViMImageSegmenterPreprocessor(_UViMPreprocessorMixin,
                                     keras_hub.models.ImageSegmenterPreprocessor):
    """keras-hub's `ImageSegmenterPreprocessor` for UViM panoptic presets.

    Example:
    >>> pre = UViMImageSegmenterPreprocessor.for_input_size((64, 64))
    >>> x = pre(np.zeros((1, 480, 640, 3), "uint8"))
    """


@keras.saving.register_keras_serializable(package="uvim_keras")
class UViMDepthEstimatorPreprocessor(_UViMPreprocessorMixin,
                                     keras_hub.models.DepthEstimatorPreprocessor):
    """keras-hub's `DepthEstimatorPreprocessor` for UViM depth presets.

    Example:
    >>> pre = UViMDepthEstimatorPreprocessor.for_input_size((64, 64))
    >>> x = pre(np.zeros((1, 480, 640, 3), "uint8"))
    """
