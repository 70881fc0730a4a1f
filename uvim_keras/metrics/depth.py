"""NYU depth metrics with big_vision's UViM evaluation convention."""

import keras
import numpy as np

from uvim_keras.metrics.host import to_numpy

NYU_RAW_SHAPE = (480, 640)
# big_vision's nyu_eval_crop op slices rows 54..479 and columns 41..600 (its
# comment mentions the Eigen crop 45..470, but the code starts at row 54).
NYU_EVAL_CROP = (slice(54, 480), slice(41, 601))
METRIC_NAMES = ("RMSE", "abs_RE", "log10", "delta1", "delta2", "delta3")


def nearest_indices(in_size, out_size):
    """Source indices of a half-pixel-centre nearest resize.

    Output pixel i reads ``floor((i + 0.5) * in_size / out_size)``, computed
    exactly in integers as ``((2 i + 1) in_size) // (2 out_size)``; this is
    what ``jax.image.resize(..., "nearest")`` does.
    """
    i = np.arange(out_size, dtype=np.int64)
    return ((2 * i + 1) * in_size) // (2 * out_size)


def resize_nearest(image, shape):
    """Nearest resize of an (h, w) map to `shape` with half-pixel centres."""
    rows = nearest_indices(image.shape[0], shape[0])
    cols = nearest_indices(image.shape[1], shape[1])
    return image[rows[:, None], cols[None, :]]


def image_depth_metrics(gt, pred, min_depth, max_depth):
    """The six metrics of one image, or None when no GT pixel is valid.

    `gt` and `pred` have the same shape; valid pixels are
    ``min_depth < gt < max_depth`` (GT only; predictions are not clipped).
    """
    valid = (gt > min_depth) & (gt < max_depth)
    if not valid.any():
        return None
    g = gt[valid].astype(np.float64)
    p = pred[valid].astype(np.float64)
    diff = g - p
    ratio = np.maximum(g / p, p / g)
    return np.array([
        np.sqrt(np.mean(diff * diff)),
        np.mean(np.abs(diff) / g),
        np.mean(np.abs(np.log10(g) - np.log10(p))),
        np.mean(ratio < 1.25),
        np.mean(ratio < 1.25**2),
        np.mean(ratio < 1.25**3),
    ])


def _as_maps(x, argument):
    x = to_numpy(x)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(
            f"{argument}: got shape {x.shape}; expected (B, H, W) or "
            "(B, H, W, 1) depth maps")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(
            x.dtype, np.integer):
        raise ValueError(
            f"{argument}: got dtype {x.dtype}; expected real depth values")
    return x


@keras.saving.register_keras_serializable(package="uvim_keras")
class DepthMetrics(keras.metrics.Metric):
    """NYU-depth-v2 metrics as big_vision's UViM evaluator computes them.

    Per image: optional ``nyu_eval_crop`` (``gt[54:480, 41:601]`` of the raw
    480x640 GT), nearest resize of the prediction to the (cropped) GT size
    with half-pixel centres, GT-only validity mask
    ``min_depth < gt < max_depth`` (strict; predictions are not clipped), then
    on the valid pixels

    * ``RMSE = sqrt(mean((g - p)^2))``
    * ``abs_RE = mean(|g - p| / g)``
    * ``log10 = mean(|log10 g - log10 p|)``
    * ``delta_k = mean(max(g/p, p/g) < 1.25^k)``, k = 1, 2, 3.

    The result is the plain mean over images of the per-image values (pixels
    are not pooled across images), computed in float64. Images without a
    valid GT pixel are skipped (big_vision would produce NaN); their number
    is in ``num_skipped``.

    Example:

    >>> import numpy as np
    >>> gt = np.full((1, 480, 640), 2.0, np.float32)
    >>> pred = np.full((1, 512, 512), 2.5, np.float32)
    >>> m = DepthMetrics(nyu_eval_crop=True)
    >>> m.update_state(gt, pred)
    >>> {k: round(v, 4) for k, v in m.result().items()}["abs_RE"]
    0.25

    Args:
        min_depth, max_depth: validity bounds on the GT (exclusive).
        nyu_eval_crop: crop raw 480x640 GT maps to rows 54..479 and columns
            41..600 before evaluating (big_vision's ``nyu_eval_crop``); the
            GT must then be exactly 480x640.
        name, dtype: Keras metric arguments.
    """

    def __init__(self, min_depth=1e-3, max_depth=10.0, nyu_eval_crop=False,
                 name="depth_metrics", dtype=None):
        super().__init__(name=name, dtype=dtype)
        if not (np.isfinite(min_depth) and np.isfinite(max_depth)
                and min_depth < max_depth):
            raise ValueError(
                f"min_depth, max_depth: got {min_depth}, {max_depth}; "
                "expected finite bounds with min_depth < max_depth")
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.nyu_eval_crop = bool(nyu_eval_crop)
        self.reset_state()

    def reset_state(self):
        self.sums = np.zeros(len(METRIC_NAMES), dtype=np.float64)
        self.num_images = 0
        self.num_skipped = 0

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch.

        Args:
            y_true: (B, H, W) or (B, H, W, 1) GT depth in metres; raw 480x640
                when ``nyu_eval_crop`` is set, else already cropped.
            y_pred: (B, h, w) or (B, h, w, 1) predicted depth, any size.
            sample_weight: not supported; must be None.
        """
        if sample_weight is not None:
            raise ValueError(
                "sample_weight: got a value; expected None (images are "
                "averaged with equal weight)")
        gt = _as_maps(y_true, "y_true")
        pred = _as_maps(y_pred, "y_pred")
        if gt.shape[0] != pred.shape[0]:
            raise ValueError(
                f"y_pred: got batch size {pred.shape[0]} (shape {pred.shape}); "
                f"expected the batch size of y_true, {gt.shape[0]}")
        if self.nyu_eval_crop and gt.shape[1:] != NYU_RAW_SHAPE:
            raise ValueError(
                f"y_true: got maps of size {gt.shape[1:]}; expected the raw "
                f"NYU size {NYU_RAW_SHAPE} because nyu_eval_crop=True")
        if not np.all(np.isfinite(pred)):
            bad = pred[~np.isfinite(pred)].flat[0]
            raise ValueError(
                f"y_pred: got a non-finite depth ({bad}); expected finite "
                "predictions")
        if self.nyu_eval_crop:
            gt = gt[(slice(None),) + NYU_EVAL_CROP]
        per_image = []
        for b in range(gt.shape[0]):
            p = resize_nearest(pred[b], gt.shape[1:])
            valid = (gt[b] > self.min_depth) & (gt[b] < self.max_depth)
            if valid.any() and p[valid].min() <= 0:
                raise ValueError(
                    f"y_pred[{b}]: got depth {float(p[valid].min())} on a valid "
                    "GT pixel; expected predictions > 0 there (log10 and the "
                    "depth ratio are undefined otherwise)")
            per_image.append(image_depth_metrics(gt[b], p, self.min_depth,
                                                 self.max_depth))
        for values in per_image:
            if values is None:
                self.num_skipped += 1
            else:
                self.sums += values
                self.num_images += 1

    def result(self):
        """Mean over images: ``{RMSE, abs_RE, log10, delta1, delta2, delta3}``.

        All values are NaN before any image with valid pixels was added.
        """
        if self.num_images == 0:
            return {k: float("nan") for k in METRIC_NAMES}
        means = self.sums / self.num_images
        return {k: float(v) for k, v in zip(METRIC_NAMES, means)}

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype,
                "min_depth": self.min_depth, "max_depth": self.max_depth,
                "nyu_eval_crop": self.nyu_eval_crop}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
