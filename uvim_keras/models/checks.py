"""Input checks shared by the models: clear ValueErrors, never backend errors."""

import numpy as np

from uvim_keras.tasks.base import concrete_values


def pair(value, name):
    """An int or a pair of ints -> a tuple of two positive ints."""
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) <= 0:
        raise ValueError(f"{name}={value}; expected a positive int or a pair of them.")
    return value


def grid_size(input_size, patch_size):
    """Token grid of `input_size` cut in `patch_size` patches (must divide)."""
    if input_size[0] % patch_size[0] or input_size[1] % patch_size[1]:
        raise ValueError(
            f"input_size={tuple(input_size)} is not a multiple of "
            f"patch_size={tuple(patch_size)}."
        )
    return (input_size[0] // patch_size[0], input_size[1] // patch_size[1])


def check_image(image, input_size, name="image"):
    """(B, H, W, 3) with (H, W) == input_size."""
    shape = tuple(image.shape)
    if len(shape) != 4:
        raise ValueError(
            f"{name} has shape {shape} (rank {len(shape)}); expected rank 4 "
            f"(batch, {input_size[0]}, {input_size[1]}, 3)."
        )
    if shape[-1] != 3:
        raise ValueError(f"{name} has {shape[-1]} channels (shape {shape}); expected 3.")
    if tuple(shape[1:3]) != tuple(input_size):
        raise ValueError(
            f"{name} has spatial size {tuple(shape[1:3])}; expected {tuple(input_size)} "
            "(the model's input_size; resize the images first)."
        )


def check_same_batch(a, b, name_a, name_b):
    na, nb = a.shape[0], b.shape[0]
    if na is not None and nb is not None and na != nb:
        raise ValueError(f"{name_a} has batch size {na} but {name_b} has {nb}; they must match.")


def check_codes(codes, code_len, dict_size, name="codes"):
    """Integer guiding codes (B, code_len) with values in [0, dict_size)."""
    shape = tuple(codes.shape)
    if len(shape) != 2 or shape[1] != code_len:
        raise ValueError(f"{name} has shape {shape}; expected (batch, {code_len}).")
    values = concrete_values(codes)
    if values is not None and values.size:
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} has dtype {values.dtype}; expected integer codes.")
        lo, hi = values.min(), values.max()
        if lo < 0 or hi >= dict_size:
            raise ValueError(
                f"{name} range over [{lo}, {hi}]; expected codes in [0, {dict_size})."
            )


#: How far float images may stray outside [-1, 1] (rounding of resizes and
#: colour conversions) before they are refused.
IMAGE_RANGE_TOLERANCE = 1e-3


def _float_image_message(name, lo, hi):
    if not (np.isfinite(lo) and np.isfinite(hi)):
        found = "" if np.isnan(lo) or np.isnan(hi) else f" (found [{lo:.4g}, {hi:.4g}])"
        return f"{name} has NaN or infinite values{found}; expected finite floats in [-1, 1]."
    hint = ""
    if hi > 1 + IMAGE_RANGE_TOLERANCE and lo >= -IMAGE_RANGE_TOLERANCE:
        hint = (" (uint8 images are converted: pass them as uint8; floats in [0, 255] "
                "become x / 127.5 - 1)")
    return f"{name} has values in [{lo:.4g}, {hi:.4g}]; expected floats in [-1, 1]{hint}."


def prepare_images(images, name="images"):
    """Images for inference entry points (`UViM.predict`, `UViM.sample`,
    `GuidingCodeLM.generate`): uint8 -> float32 in [-1, 1] (x / 127.5 - 1);
    floats are returned as they are once one min/max pass has checked that
    they are finite and in [-1, 1] (within `IMAGE_RANGE_TOLERANCE`); other
    dtypes raise. ValueError names `name`, the range found and what was
    expected.

    numpy arrays are checked on the host; a backend tensor is reduced where
    it lives (two scalars come back). Traced tensors (inside a compiled
    function) are returned unchecked: the check is for the host-side entry
    points, never inside the computation.
    """
    import keras

    if not isinstance(images, np.ndarray) and not keras.ops.is_tensor(images):
        images = np.asarray(images)
    dtype = keras.backend.standardize_dtype(images.dtype)
    if dtype == "uint8":
        if isinstance(images, np.ndarray):
            return images.astype("float32") / np.float32(127.5) - np.float32(1.0)
        return keras.ops.cast(images, "float32") / 127.5 - 1.0
    if "float" not in dtype:
        raise ValueError(
            f"{name} has dtype {dtype}; expected floats in [-1, 1] (or uint8 images in "
            "[0, 255], which are converted).")
    if not np.prod(images.shape or (1,)):
        return images
    if isinstance(images, np.ndarray):
        # np.min/max propagate NaN; an infinity shows as a bound.
        lo, hi = float(images.min()), float(images.max())
    else:
        try:
            bounds = keras.ops.stack([keras.ops.min(images), keras.ops.max(images),
                                      keras.ops.sum(images * 0)])  # NaN iff any NaN/inf
            lo, hi, nan = (float(v) for v in keras.ops.convert_to_numpy(bounds))
        except Exception:  # traced or symbolic: no values to check
            return images
        if not np.isfinite(nan):  # some reductions skip NaN (TensorFlow's min/max)
            lo, hi = float("nan"), float("nan")
    if not (lo >= -1 - IMAGE_RANGE_TOLERANCE and hi <= 1 + IMAGE_RANGE_TOLERANCE):
        raise ValueError(_float_image_message(name, lo, hi))
    return images
