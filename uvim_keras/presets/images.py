"""Reading images from disk and preparing them as big_vision's UViM
prediction pipelines do (`resize(512)|value_range(-1, 1)`, plus
`rgb_to_grayscale_to_rgb` for colorization), and resizing a prediction made
at the model's size back to the image's own size (`resize_prediction`)."""

import os

import numpy as np

# tf.image.rgb_to_grayscale's weights (big_vision's rgb_to_grayscale_to_rgb).
GREY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], "float32")


class ImageReadError(ValueError):
    """An image file that does not exist or cannot be decoded."""


def read_image(path):
    """uint8 RGB (H, W, 3) of an image file (EXIF orientation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageReadError(f"image {path!r} does not exist.")
    if os.path.isdir(path):
        raise ImageReadError(f"image {path!r} is a folder, not an image file.")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"), "uint8")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        reason = "not an image file Pillow can read" if isinstance(e, UnidentifiedImageError) else e
        raise ImageReadError(f"cannot read image {path!r}: {reason}.") from e


def to_grey(image):
    """RGB (..., 3) -> grey replicated to 3 channels, same dtype family (float)."""
    grey = np.tensordot(np.asarray(image, "float32"), GREY_WEIGHTS, axes=([-1], [0]))
    return np.repeat(grey[..., None], 3, axis=-1)


def prepare_image(image, size, grey=False):
    """uint8 RGB (H, W, 3) -> float32 (size[0], size[1], 3) in [-1, 1].

    Bilinear resize without antialiasing (big_vision's `resize` op, i.e.
    `tf.image.resize`), then the grey conversion for colorization, then the
    value range."""
    import keras

    x = np.asarray(image, "float32")
    if tuple(x.shape[:2]) != tuple(size):
        x = keras.ops.convert_to_numpy(
            keras.ops.image.resize(x[None], tuple(size), interpolation="bilinear", antialias=False)
        )[0]
    if grey:
        x = to_grey(x)
    return np.clip(x / 127.5 - 1.0, -1.0, 1.0).astype("float32")


# -- outputs back at the input's size -----------------------------------------------
#: How each task's output is resized back: interpolation and the axes of
#: (height, width) in one output (panoptic (H, W, 2), depth (H, W), colour (H, W, 3)).
OUTPUT_RESIZE = {
    "panoptic": ("nearest", (-3, -2)),
    "depth": ("bilinear", (-2, -1)),
    "colorization": ("bilinear", (-3, -2)),
}


def _source_coords(out_len, in_len):
    """Half-pixel-centre source coordinates of `out_len` output pixels."""
    return (np.arange(out_len, dtype="float64") + 0.5) * (in_len / out_len) - 0.5


def _resize_axis(x, axis, out_len, method):
    in_len = x.shape[axis]
    if in_len == out_len:
        return x
    coords = _source_coords(out_len, in_len)
    if method == "nearest":
        index = np.clip(np.floor(coords + 0.5), 0, in_len - 1).astype("int64")
        return np.take(x, index, axis=axis)
    coords = np.clip(coords, 0, in_len - 1)
    lo = np.floor(coords).astype("int64")
    hi = np.minimum(lo + 1, in_len - 1)
    shape = [1] * x.ndim
    shape[axis] = out_len
    w = (coords - lo).reshape(shape)
    a, b = np.take(x, lo, axis=axis), np.take(x, hi, axis=axis)
    return (a * (1.0 - w) + b * w).astype(x.dtype)


def resize_output(output, size, method, axes=(-3, -2)):
    """A model output (e.g. one image's (H, W, 2) panoptic map or its samples
    (N, H, W, 2)) resized to `size` = (height, width) along `axes`.

    method: "nearest" (label maps: every value is one of the model's) or
    "bilinear" (depth, colour: half-pixel centres as `tf.image.resize`, no
    antialiasing, as `prepare_image`). The dtype is kept."""
    if method not in ("nearest", "bilinear"):
        raise ValueError(f"method={method!r}; expected 'nearest' or 'bilinear'.")
    x = np.asarray(output)
    if method == "bilinear" and not np.issubdtype(x.dtype, np.floating):
        x = x.astype("float32")
    for axis, out_len in zip(axes, size):
        x = _resize_axis(x, axis % x.ndim, int(out_len), method)
    return x


def resize_prediction(prediction, size, task):
    """One image's prediction of a UViM `task` ("panoptic", "depth",
    "colorization"; leading sample axes allowed) at `size` = (height,
    width): nearest for panoptic maps, bilinear for depth and colour."""
    if task not in OUTPUT_RESIZE:
        raise ValueError(f"no output resize for task {task!r}; expected one of {sorted(OUTPUT_RESIZE)}.")
    method, axes = OUTPUT_RESIZE[task]
    return resize_output(prediction, size, method, axes)


def shown_input(image, grey=False):
    """uint8 RGB (H, W, 3) of what the model saw, at the image's own size
    (grey replicated to 3 channels for colorization)."""
    x = np.asarray(image)
    if grey:
        x = to_grey(x)
    return np.asarray(np.clip(np.round(x), 0, 255), "uint8")
