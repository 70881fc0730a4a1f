"""Input checks shared by the models: clear ValueErrors, never backend errors."""

import numpy as np

from uvim_keras.tasks.base import _concrete


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
    values = _concrete(codes)
    if values is not None and values.size:
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} has dtype {values.dtype}; expected integer codes.")
        lo, hi = values.min(), values.max()
        if lo < 0 or hi >= dict_size:
            raise ValueError(
                f"{name} range over [{lo}, {hi}]; expected codes in [0, {dict_size})."
            )
