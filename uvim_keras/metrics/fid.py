"""Fréchet distance (FID) between two sets of features, pytorch-fid 0.3.0 style.

    FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2))

Everything is float64. pytorch-fid takes ``tr(sqrtm(S1 @ S2))`` with
``scipy.linalg.sqrtm`` and, when that root has a non-finite entry, retries the
root only as ``sqrtm((S1 + eps I) @ (S2 + eps I))`` with eps = 1e-6 (the two
trace terms keep the original S1, S2). Whether the root is non-finite depends
on the scipy version (scipy >= 1.16 ships a new ``sqrtm``), so this module does
not call ``sqrtm``. It uses one documented rule instead, which reproduces
pytorch-fid under the scipy it was written for (<= 1.15):

* **Fallback criterion.** The old ``sqrtm`` (Schur form, then the
  triangular square-root recurrence in blocks of 64) fails exactly when two
  diagonal entries of the Schur factor that lie in the same block are exact
  zeros with a non-zero coupling. LAPACK's Schur routine isolates an exact
  zero eigenvalue at the front for every exactly-zero column and at the back
  for every exactly-zero row of ``M = S1 @ S2``; such a zero row and zero
  column are coupled (generically), two zero rows or two zero columns are
  not, and for d >= 128 the front and the back lie in different blocks, whose
  coupling goes through a Sylvester solve that does not fail. So the eps
  fallback is taken iff d < 128 and ``M`` has an exactly-zero row whose
  column is not zero and an exactly-zero column whose row is not zero, i.e.
  (for covariances) some feature is exactly constant in set 1 only and
  another one in set 2 only. Covariances that are only numerically singular
  (e.g. fewer samples than dimensions) never fall back, as with the old
  ``sqrtm``. Checked against scipy 1.15.3 on ~1250 random cases (d = 8 to
  2048, constant features in either or both sets, n < d and n > d); the one
  known disagreement is covariances from 2 or 3 samples combined with
  constant features, where the old ``sqrtm`` also fails (FID then differs
  by ~1e-3 relative).
* **Trace of the root.** ``tr sqrt(A B) = sum_i sqrt(lambda_i)`` over the
  eigenvalues of the symmetric PSD matrix ``A^1/2 B A^1/2`` (same spectrum as
  ``A B``), with negative round-off eigenvalues clipped to 0. This is what
  the real part of ``sqrtm``'s trace converges to (pytorch-fid keeps the real
  part), and it is stable for singular covariances.
* **Imaginary part.** pytorch-fid raises when the root's diagonal has an
  imaginary part above 1e-3. Here the analogue is an eigenvalue of
  ``A^1/2 B A^1/2`` below -1e-6 (its square root would carry an imaginary
  part above 1e-3), which raises ValueError; it only happens for matrices
  that are not covariances.
"""

import keras
import numpy as np

from uvim_keras.metrics.host import to_numpy

FALLBACK_EPS = 1e-6
# Block size of the triangular square-root recurrence in scipy <= 1.15.
SQRTM_BLOCK_SIZE = 64
IMAGINARY_TOLERANCE = 1e-3


def activation_statistics(features, argument="features"):
    """Mean and unbiased covariance of (n, d) features, in float64.

    Example:

    >>> import numpy as np
    >>> mu, sigma = activation_statistics(np.eye(3, 2))
    >>> mu.shape, sigma.shape
    ((2,), (2, 2))
    """
    x = np.asarray(to_numpy(features))
    if x.ndim != 2:
        raise ValueError(
            f"{argument}: got shape {x.shape}; expected (n, d) features")
    if x.shape[0] < 2:
        raise ValueError(
            f"{argument}: got {x.shape[0]} sample(s); expected at least 2 "
            "to estimate a covariance")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(
            f"{argument}: got non-finite values; expected finite features")
    mu = x.mean(axis=0)
    sigma = np.atleast_2d(np.cov(x, rowvar=False))
    return mu, sigma


def sqrtm_fallback_needed(product):
    """The documented criterion for pytorch-fid's eps fallback (see module).

    True iff `product` (= S1 @ S2) is smaller than 128 x 128 and has an
    exactly-zero row whose column is not all zero and an exactly-zero column
    whose row is not all zero.
    """
    if product.shape[0] >= 2 * SQRTM_BLOCK_SIZE:
        return False
    zero_rows = ~product.any(axis=1)
    zero_cols = ~product.any(axis=0)
    return bool((zero_rows & ~zero_cols).any()
                and (zero_cols & ~zero_rows).any())


def trace_sqrt_product(a, b):
    """``tr sqrt(a @ b)`` for symmetric PSD `a`, `b` (see module docstring)."""
    w, v = np.linalg.eigh(a)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = root_a @ b @ root_a
    inner = 0.5 * (inner + inner.T)
    lam = np.linalg.eigvalsh(inner)
    if lam.min() < -IMAGINARY_TOLERANCE**2:
        raise ValueError(
            f"sigma1, sigma2: the product has eigenvalue {lam.min():.3g}; "
            "expected covariance matrices (its square root would have an "
            f"imaginary part above {IMAGINARY_TOLERANCE})")
    return float(np.sqrt(np.clip(lam, 0.0, None)).sum())


def _check_stats(mu, sigma, which):
    mu = np.asarray(to_numpy(mu), dtype=np.float64)
    sigma = np.asarray(to_numpy(sigma), dtype=np.float64)
    if mu.ndim != 1:
        raise ValueError(
            f"mu{which}: got shape {mu.shape}; expected a (d,) mean vector")
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise ValueError(
            f"sigma{which}: got shape {sigma.shape}; expected ({d}, {d}) to "
            f"match mu{which}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(
            f"mu{which}, sigma{which}: got non-finite values; expected finite "
            "statistics")
    return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=FALLBACK_EPS):
    """FID between two Gaussians, as pytorch-fid 0.3.0 (scipy <= 1.15) gives.

    Example:

    >>> import numpy as np
    >>> round(frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2)), 6)
    2.0

    Args:
        mu1, mu2: (d,) means.
        sigma1, sigma2: (d, d) covariances.
        eps: diagonal offset of the fallback square root.

    Returns:
        The distance as a Python float (may be slightly negative, ~1e-13, for
        identical statistics).
    """
    mu1, sigma1 = _check_stats(mu1, sigma1, 1)
    mu2, sigma2 = _check_stats(mu2, sigma2, 2)
    if mu1.shape != mu2.shape:
        raise ValueError(
            f"mu2: got dimension {mu2.shape[0]}; expected {mu1.shape[0]}, the "
            "dimension of mu1")
    a, b = sigma1, sigma2
    if sqrtm_fallback_needed(sigma1 @ sigma2):
        offset = eps * np.eye(len(mu1))
        a, b = sigma1 + offset, sigma2 + offset
    diff = mu1 - mu2
    tr_covmean = trace_sqrt_product(a, b)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2)
                 - 2 * tr_covmean)


def fid_from_features(features1, features2):
    """FID between two (n, d) feature sets (float64 statistics)."""
    f1 = np.asarray(to_numpy(features1))
    f2 = np.asarray(to_numpy(features2))
    mu1, sigma1 = activation_statistics(f1, "features1")
    mu2, sigma2 = activation_statistics(f2, "features2")
    if mu1.shape != mu2.shape:
        raise ValueError(
            f"features2: got dimension {mu2.shape[0]}; expected "
            f"{mu1.shape[0]}, the dimension of features1")
    return frechet_distance(mu1, sigma1, mu2, sigma2)


FEATURES = ("fid_inception", "keras_inception_v3")
_STANDARD_WEIGHTS = {"fid_inception": "pytorch_fid",
                     "keras_inception_v3": "imagenet"}


def _check_weights(features, weights):
    other = {v: k for k, v in _STANDARD_WEIGHTS.items()}
    if isinstance(weights, str) and weights in other and (
            other[weights] != features):
        raise ValueError(
            f"inception_weights: got {weights!r} with features={features!r};"
            f" expected None, {_STANDARD_WEIGHTS[features]!r} or a local "
            f"file path ({weights!r} are the weights of "
            f"features={other[weights]!r})")


@keras.saving.register_keras_serializable(package="uvim_keras")
class FID(keras.metrics.Metric):
    """Fréchet Inception Distance between real and generated images.

    Accumulates features of real and generated samples (host numpy) and
    returns `frechet_distance` of their float64 mean / unbiased covariance.
    Features come either directly (``real_features=``,
    ``generated_features=``) or from images (RGB, values in `image_range`)
    through a feature extractor, built on first use:

    * ``features="fid_inception"`` (default): the network FID is defined
      with, TF's 2015 FID Inception graph as pytorch-fid runs it
      (`FIDInceptionFeatureExtractor`: resize to 299 x 299 as pytorch-fid,
      2048-d pool features) with pytorch-fid's weights
      ``pt_inception-2015-12-05-6726825d.pth``. ``inception_weights`` is
      "pytorch_fid" (torch hub's or Keras' cache, else downloaded from
      pytorch-fid's release) or a local ``.pth`` (needs torch) / ``.npz``
      (`convert_pth_to_npz`). These FIDs are pytorch-fid's, comparable
      with published numbers computed with the same protocol;
    * ``features="keras_inception_v3"``: ``keras.applications.InceptionV3``
      average-pool features (`InceptionFeatureExtractor`,
      ``inception_weights`` "imagenet" or a local ``.h5``, ``image_size``).
      Other weights and layers than FID's network: its values are NOT
      comparable with published FIDs (kept for earlier results);
    * or ``feature_extractor=``: any Keras model / callable
      ``images -> (B, d) features`` (gets the images as they are).

    Offline without the weights file, the built-in extractors raise
    `InceptionWeightsError` explaining how to provide it.

    Protocol of the UViM paper (colorization, "FID-5k", following ColTran):
    colorize 5000 images of the ImageNet validation set, and compute the FID
    between the Inception pool3 features (2048-d) of the 5000 colorized
    images and of the corresponding 5000 real (ground-truth colour) images.

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> fid = FID(feature_extractor=lambda x: x.reshape(len(x), -1))
    >>> fid.update_state(real_images=rng.normal(size=(100, 2, 2, 1)),
    ...                  generated_images=rng.normal(size=(100, 2, 2, 1)))
    >>> fid.result() < 1.0
    True
    >>> fid5k = FID(image_range=(-1, 1))        # UViM colorization outputs

    Args:
        feature_extractor: None (the built-in extractor named by
            `features`), or a Keras model / callable.
        inception_weights: weights of the built-in extractor; None picks
            its standard ones ("pytorch_fid" or "imagenet"), else a local
            file path.
        image_size: input size of "keras_inception_v3" (299 standard);
            "fid_inception" always resizes to 299 as pytorch-fid does.
        batch_size: images per forward pass of the extractor.
        features: "fid_inception" or "keras_inception_v3" (see above).
        image_range: (low, high) values of black and white in the images
            given to the built-in extractors ((0, 255) for uint8 images,
            (-1, 1) for UViM's colorization outputs); a custom
            `feature_extractor` gets the images unchanged.
        name, dtype: Keras metric arguments.
    """

    def __init__(self, feature_extractor=None, inception_weights=None,
                 image_size=299, batch_size=50, features="fid_inception",
                 image_range=(0, 255), name="fid", dtype=None):
        super().__init__(name=name, dtype=dtype)
        if feature_extractor is not None and not callable(feature_extractor):
            raise ValueError(
                f"feature_extractor: got {type(feature_extractor).__name__}; "
                "expected None, a Keras model or a callable")
        if features not in FEATURES:
            raise ValueError(
                f"features: got {features!r}; expected one of {FEATURES}")
        if features == "fid_inception" and int(image_size) != 299:
            raise ValueError(
                f"image_size: got {image_size} with features='fid_inception';"
                " expected 299 (pytorch-fid always resizes to 299 x 299; "
                "other sizes need features='keras_inception_v3')")
        _check_weights(features, inception_weights)
        low, high = (float(v) for v in image_range)
        if not high > low:
            raise ValueError(
                f"image_range: got {tuple(image_range)}; expected (low, high)"
                " with high > low")
        self.feature_extractor = feature_extractor
        self.features = features
        self.inception_weights = inception_weights
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.image_range = (low, high)
        self._default_extractor = None
        self.reset_state()

    def reset_state(self):
        self.real_features = []
        self.generated_features = []

    def _build_extractor(self):
        weights = self.inception_weights
        if weights is None:
            weights = _STANDARD_WEIGHTS[self.features]
        if self.features == "fid_inception":
            from uvim_keras.metrics.fid_inception_features import (
                FIDInceptionFeatureExtractor)
            return FIDInceptionFeatureExtractor(weights, self.batch_size)
        from uvim_keras.metrics.inception_features import (
            InceptionFeatureExtractor)
        return InceptionFeatureExtractor(weights, self.image_size,
                                         self.batch_size)

    def _extract(self, images):
        if self.feature_extractor is None:
            if self._default_extractor is None:
                self._default_extractor = self._build_extractor()
            low, high = self.image_range
            if (low, high) != (0.0, 255.0):
                images = (np.asarray(images, np.float32) - low) * np.float32(
                    255.0 / (high - low))
            return self._default_extractor(images)
        if isinstance(self.feature_extractor, keras.Model):
            outputs = []
            for start in range(0, len(images), self.batch_size):
                outputs.append(to_numpy(self.feature_extractor(
                    images[start:start + self.batch_size], training=False)))
            return np.concatenate(outputs, axis=0)
        return to_numpy(self.feature_extractor(images))

    def _features(self, images, features, argument):
        if images is not None and features is not None:
            raise ValueError(
                f"{argument}: got both images and features; expected one")
        if images is not None:
            images = to_numpy(images)
            if images.ndim < 2 or images.shape[0] == 0:
                raise ValueError(
                    f"{argument}_images: got shape {images.shape}; expected a "
                    "non-empty batch of images")
            features = self._extract(images)
            argument = f"features of {argument}_images"
        else:
            argument = f"{argument}_features"
        features = np.array(to_numpy(features), copy=True)  # own the state
        if features.ndim != 2:
            raise ValueError(
                f"{argument}: got shape {features.shape}; expected (n, d)")
        if not np.all(np.isfinite(features)):
            raise ValueError(
                f"{argument}: got non-finite values; expected finite features")
        dims = {f.shape[1] for f in self.real_features + self.generated_features}
        if dims and features.shape[1] not in dims:
            raise ValueError(
                f"{argument}: got dimension {features.shape[1]}; expected "
                f"{dims.pop()}, the dimension of the features seen so far")
        return features

    def update_state(self, real_images=None, generated_images=None,
                     real_features=None, generated_features=None,
                     sample_weight=None):
        """Adds real and/or generated samples (images or features)."""
        if sample_weight is not None:
            raise ValueError(
                "sample_weight: got a value; expected None")
        real = generated = None
        if real_images is not None or real_features is not None:
            real = self._features(real_images, real_features, "real")
        if generated_images is not None or generated_features is not None:
            generated = self._features(generated_images, generated_features,
                                       "generated")
        if (real is not None and generated is not None
                and real.shape[1] != generated.shape[1]):
            raise ValueError(
                f"generated features: got dimension {generated.shape[1]}; "
                f"expected {real.shape[1]}, the dimension of the real features")
        if real is not None:
            self.real_features.append(real)
        if generated is not None:
            self.generated_features.append(generated)

    def _stacked(self, chunks, argument):
        if not chunks:
            raise ValueError(
                f"{argument}: got 0 samples; expected at least 2")
        return np.concatenate(chunks, axis=0)

    def real_statistics(self):
        """(mu, sigma) of the real features, float64."""
        return activation_statistics(
            self._stacked(self.real_features, "real features"),
            "real features")

    def generated_statistics(self):
        """(mu, sigma) of the generated features, float64."""
        return activation_statistics(
            self._stacked(self.generated_features, "generated features"),
            "generated features")

    def result(self):
        """The FID (Python float) of everything accumulated."""
        mu1, sigma1 = self.real_statistics()
        mu2, sigma2 = self.generated_statistics()
        return frechet_distance(mu1, sigma1, mu2, sigma2)

    def get_config(self):
        """Config without the feature extractor (pass it again if custom)."""
        return {"name": self.name, "dtype": self.dtype,
                "features": self.features,
                "inception_weights": (
                    None if self.inception_weights is None
                    else str(self.inception_weights)),
                "image_size": self.image_size, "batch_size": self.batch_size,
                "image_range": list(self.image_range)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Configs saved before "features" existed used Keras' InceptionV3.
        config.setdefault("features", "keras_inception_v3")
        return cls(**config)
