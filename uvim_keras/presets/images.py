"""Reading images from disk and preparing them as big_vision's UViM
prediction pipelines do (`resize(512)|value_range(-1, 1)`, plus
`rgb_to_grayscale_to_rgb` for colorization)."""

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
