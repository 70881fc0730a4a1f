"""Reading images from disk and preparing them as big_vision's UViM
prediction pipelines do (`resize(512)|value_range(-1, 1)`, plus
`rgb_to_grayscale_to_rgb` for colorization), and resizing a prediction made
at the model's size back to the image's own size (`resize_prediction`)."""

import os

import numpy as np

# tf.image.rgb_to_grayscale's weights (big_vision's rgb_to_grayscale_to_rgb).
GREY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], "float32")


class ImageReadError(ValueError):
    """An image file that does not exist or cannot be decoded (the message
    names the file)."""


def read_image(path):
    """uint8 RGB (H, W, 3) of an image file (EXIF orientation applied).

    Every mode Pillow reads becomes 8-bit RGB without losing its range:
    16-bit greyscale ("I;16", "I;16B", ...) is scaled by 255 / 65535 (not
    clipped), 32-bit integer ("I") likewise when its values pass 255, float
    ("F") in [0, 1] is scaled by 255 (else clipped to [0, 255]); images with
    transparency (an alpha band, a palette or a colour key with
    transparency) are composited on white; palette ("P"), greyscale ("L",
    "1"), CMYK and the others go through Pillow's conversion.

    Raises `ImageReadError` (one line naming the file) for a missing path, a
    folder or other non-regular file, an empty file, a file Pillow cannot
    decode (truncated, corrupt, not an image) and an image above Pillow's
    decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS` pixels: its
    warning is an error here too)."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    path = _checked_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img = ImageOps.exif_transpose(img)
                return to_rgb_uint8(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(_too_large(path, e)) from None
    except UnidentifiedImageError:
        raise ImageReadError(
            f"cannot read image {path!r}: not an image file Pillow can read.") from None
    except MemoryError:
        raise ImageReadError(f"cannot read image {path!r}: not enough memory to decode it.") from None
    except Exception as e:  # noqa: BLE001 (a corrupt file raises anything: OSError, SyntaxError, ...)
        reason = (e.strerror if isinstance(e, OSError) and e.strerror
                  else " ".join(str(e).split()) or type(e).__name__)
        if not isinstance(e, (OSError, ValueError, SyntaxError)):
            reason = f"{type(e).__name__}: {reason}"
        raise ImageReadError(f"cannot read image {path!r}: {reason.rstrip('.')}.") from None


def _checked_file(path):
    """`path` as a string, when it names a regular, non-empty file."""
    import errno
    import stat

    try:
        path = os.fspath(path)
    except TypeError:
        raise ImageReadError(f"image {path!r}: expected a file path.") from None
    if not path:
        raise ImageReadError("image '': an empty path.")
    try:
        st = os.stat(path)
    except ValueError:  # an embedded NUL byte
        raise ImageReadError(f"image {path!r} is not a valid path.") from None
    except OSError as e:
        if e.errno == errno.ENOENT and os.path.islink(path):
            raise ImageReadError(f"image {path!r} is a broken symbolic link.") from None
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise ImageReadError(f"image {path!r} does not exist.") from None
        raise ImageReadError(f"cannot read image {path!r}: {e.strerror or e}.") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageReadError(f"image {path!r} is a folder, not an image file.")
    if not stat.S_ISREG(st.st_mode):
        raise ImageReadError(f"image {path!r} is not a regular file (a device, pipe or socket).")
    if st.st_size == 0:
        raise ImageReadError(f"cannot read image {path!r}: the file is empty (0 bytes).")
    return path


def _too_large(path, error):
    """The message for Pillow's decompression-bomb guard (its warning or error)."""
    import re

    from PIL import Image

    # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice it; both
    # are refused here, so the limit is MAX_IMAGE_PIXELS.
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{int(found.group(1))} pixels" if found else "more pixels than allowed"
    return (f"image {path!r} is too large: {size}, above the limit of {Image.MAX_IMAGE_PIXELS} "
            f"pixels (Pillow's decompression-bomb guard, PIL.Image.MAX_IMAGE_PIXELS).")


_HIGH_BIT_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I;16BS", "I;16LS", "I", "F")


def _grey_to_uint8(x, mode):
    """A 16-bit, 32-bit integer or float greyscale array -> uint8, scaled."""
    x = np.asarray(x)
    if mode == "F":
        x = np.nan_to_num(x.astype("float64"), nan=0.0, posinf=255.0, neginf=0.0)
        if x.size and x.min() >= 0.0 and x.max() <= 1.0:
            x = x * 255.0
        return np.clip(np.round(x), 0, 255).astype("uint8")
    x = x.astype("float64")
    if mode == "I" and (not x.size or x.max() <= 255):  # 32-bit ints holding 8-bit values
        return np.clip(x, 0, 255).astype("uint8")
    return np.clip(np.round(np.clip(x, 0, 65535) * (255.0 / 65535.0)), 0, 255).astype("uint8")


def _on_white(rgba):
    """uint8 (H, W, 4) -> uint8 (H, W, 3): composited on a white background."""
    rgba = np.asarray(rgba, "float32")
    alpha = rgba[..., 3:] / 255.0
    return np.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype("uint8")


def to_rgb_uint8(img):
    """A PIL image of any mode -> uint8 RGB (H, W, 3) (see `read_image`)."""
    mode = img.mode
    transparency = img.info.get("transparency")
    if mode in _HIGH_BIT_DEPTH or mode.startswith("I;16"):
        raw = np.asarray(img)
        if raw.ndim != 2:
            raise ValueError(f"unexpected {mode} image of shape {raw.shape}")
        grey = _grey_to_uint8(raw, "F" if mode == "F" else ("I" if mode == "I" else "I;16"))
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        if isinstance(transparency, int) and mode != "F":  # a tRNS colour key
            alpha = np.where(raw == transparency, 0, 255).astype("uint8")
            rgb = _on_white(np.concatenate([rgb, alpha[..., None]], axis=-1))
        return np.ascontiguousarray(rgb)
    if "A" in mode or "a" in mode or mode == "P" or transparency is not None:
        # alpha bands (RGBA, LA, PA, premultiplied RGBa / La), palettes (their
        # colours, and transparent entries through RGBA) and colour keys
        return _on_white(np.asarray(img.convert("RGBA")))
    if mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, "uint8")


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
    """One image's prediction of a UViM `task` (leading sample axes allowed)
    at `size` = (height, width), as the task says (`task.output_resize`:
    nearest for label maps, bilinear for depth and colour)."""
    if task.output_resize is None:
        raise ValueError(f"the {task.name} task does not say how to resize its outputs "
                         "(output_resize is None).")
    method, axes = task.output_resize
    return resize_output(prediction, size, method, axes)


def shown_input(image, grey=False):
    """uint8 RGB (H, W, 3) of what the model saw, at the image's own size
    (grey replicated to 3 channels for colorization)."""
    x = np.asarray(image)
    if grey:
        x = to_grey(x)
    return np.asarray(np.clip(np.round(x), 0, 255), "uint8")
