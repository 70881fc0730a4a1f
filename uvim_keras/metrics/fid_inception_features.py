"""FID features as pytorch-fid computes them: the FID Inception network."""

import numpy as np

from uvim_keras.metrics.fid_inception import FEATURE_DIM
from uvim_keras.metrics.fid_inception_weights import DEFAULT_WEIGHTS
from uvim_keras.metrics.fid_inception_weights import load_fid_inception
from uvim_keras.metrics.inception_features import batched_features


class FIDInceptionFeatureExtractor:
    """Maps RGB images in [0, 255] to the 2048-d features FID is defined on.

    Images (B, H, W, 3) (or (B, H, W, 1), repeated to RGB, as pytorch-fid's
    ``convert("RGB")`` does) are divided by 255 (pytorch-fid's ``ToTensor``)
    and go through pytorch-fid's ``InceptionV3([3], resize_input=True,
    normalize_input=True)`` in Keras (`fid_inception.fid_inception_v3`):
    bilinear resize to 299 x 299 without antialiasing, [-1, 1], TF's 2015
    FID Inception graph, global average pool. With pytorch-fid's weights the
    features (and so FIDs) are comparable with published numbers.

    Example:

    >>> extractor = FIDInceptionFeatureExtractor()       # doctest: +SKIP
    >>> images = np.zeros((2, 256, 256, 3), np.uint8)
    >>> extractor(images).shape                          # doctest: +SKIP
    (2, 2048)

    Args:
        weights: "pytorch_fid" (torch hub's or Keras' cache, else downloaded
            from pytorch-fid's release), or a local path to
            ``pt_inception-2015-12-05-6726825d.pth`` (needs torch) or to an
            ``.npz`` from `convert_pth_to_npz`.
        batch_size: images per forward pass.
    """

    def __init__(self, weights=DEFAULT_WEIGHTS, batch_size=50):
        if int(batch_size) < 1:
            raise ValueError(
                f"batch_size: got {batch_size}; expected a positive integer")
        self.batch_size = int(batch_size)
        self.model = load_fid_inception(weights)

    def __call__(self, images):
        return batched_features(
            lambda batch: self.model(batch.astype(np.float32) / 255.0, training=False),
            images, self.batch_size, FEATURE_DIM)
