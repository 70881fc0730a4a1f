"""Keras' Inception-v3 pool features (2048-d): FID's non-default alternative.

``FID(features="keras_inception_v3")`` uses this extractor. Its network and
weights (keras.applications' ImageNet Inception-v3) are not the FID
Inception graph FID is defined with, so its FIDs are not comparable with
published numbers; the default is `fid_inception_features`.
"""

import os

import keras
import numpy as np

from uvim_keras.metrics.host import to_numpy

WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
WEIGHTS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/"
               "inception_v3/" + WEIGHTS_FILE)
WEIGHTS_MD5 = "bcbd6486424b2319ff4ef7d526e38f63"


class InceptionWeightsError(RuntimeError):
    """The Inception-v3 weights could not be found or downloaded."""


def _how_to_provide(reason):
    return (
        f"Could not load the Inception-v3 ImageNet weights for FID ({reason}). "
        f"Without network access, download {WEIGHTS_URL} on a connected "
        f"machine and either pass its local path, e.g. "
        f"FID(features='keras_inception_v3', "
        f"inception_weights='/path/to/{WEIGHTS_FILE}'), or copy it to "
        f"~/.keras/models/{WEIGHTS_FILE} (or $KERAS_HOME/models/). "
        "Alternatively pass FID(feature_extractor=...) with any Keras model "
        "or callable mapping images to features.")


def _resolve_weights(weights):
    """'imagenet' -> cached/downloaded file path; a path -> checked path."""
    if weights is None:
        return None
    if weights == "imagenet":
        try:
            return keras.utils.get_file(WEIGHTS_FILE, WEIGHTS_URL,
                                        cache_subdir="models",
                                        file_hash=WEIGHTS_MD5)
        except Exception as error:  # offline, proxy, truncated download, ...
            raise InceptionWeightsError(_how_to_provide(
                f"download failed: {type(error).__name__}: {error}")) from error
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise InceptionWeightsError(_how_to_provide(
            f"inception_weights={path!r} is not a file"))
    return path


class InceptionFeatureExtractor:
    """Maps RGB images in [0, 255] to Inception-v3 average-pool features.

    Images (B, H, W, 3) (or (B, H, W, 1), repeated to RGB) are resized to
    ``image_size`` with bilinear interpolation, scaled to [-1, 1] as
    ``keras.applications.inception_v3.preprocess_input`` does, and passed
    through ``InceptionV3(include_top=False, pooling="avg")``.

    Note: keras.applications' Inception-v3 weights are not the TF 2015-12-05
    "pool_3" graph used by TF-GAN / pytorch-fid, so absolute FID values are
    not comparable with published numbers; `FIDInceptionFeatureExtractor`
    (FID's default) computes those.

    Example:

    >>> extractor = InceptionFeatureExtractor("imagenet")  # doctest: +SKIP
    >>> extractor(np.zeros((2, 256, 256, 3), np.uint8)).shape  # doctest: +SKIP
    (2, 2048)

    Args:
        weights: "imagenet" (Keras cache, downloaded if missing), a local
            path to the no-top ``.h5`` weights file, or None (random
            initialisation; only for smoke tests).
        image_size: network input size (>= 75; 299 is standard).
        batch_size: images per forward pass.
    """

    def __init__(self, weights="imagenet", image_size=299, batch_size=50):
        if int(image_size) < 75:
            raise ValueError(
                f"image_size: got {image_size}; expected >= 75 (Inception-v3 "
                "minimum input size), 299 for standard FID")
        if int(batch_size) < 1:
            raise ValueError(
                f"batch_size: got {batch_size}; expected a positive integer")
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        path = _resolve_weights(weights)
        self.model = keras.applications.InceptionV3(
            include_top=False, weights=None, pooling="avg",
            input_shape=(self.image_size, self.image_size, 3))
        if path is not None:
            try:
                self.model.load_weights(path)
            except Exception as error:
                raise InceptionWeightsError(_how_to_provide(
                    f"{path!r} could not be loaded: {error}")) from error

    def _preprocess(self, images):
        x = keras.ops.convert_to_tensor(images, dtype="float32")
        x = keras.ops.image.resize(x, (self.image_size, self.image_size),
                                   interpolation="bilinear")
        return x / 127.5 - 1.0

    def __call__(self, images):
        return batched_features(
            lambda batch: self.model(self._preprocess(batch), training=False),
            images, self.batch_size)


def batched_features(features, images, batch_size, dim=2048):
    """(B, dim) numpy features of RGB images (B, H, W, 3) in [0, 255] (or
    grey (B, H, W, 1), repeated to RGB), computed `batch_size` at a time by
    `features(batch)`."""
    images = to_numpy(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"images: got shape {images.shape}; expected (B, H, W, 3) RGB "
            "(or (B, H, W, 1)) with values in [0, 255]")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    outputs = [to_numpy(features(images[start:start + batch_size]))
               for start in range(0, images.shape[0], batch_size)]
    if not outputs:
        return np.zeros((0, dim), np.float32)
    return np.concatenate(outputs, axis=0)
