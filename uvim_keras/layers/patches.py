"""Label patches: patchify/unpatchify, label stems and per-patch heads.

UViM's stage-I models see labels as patches laid out (B, G, c, P): G tokens
in row-major grid order, c channels (or one-hot classes), P = ph * pw pixels
in row-major order inside the patch. Stems contract (c, P) to the width;
heads expand the width back to (c, P).
"""

import keras
from keras import ops


def patchify(images, patch_size):
    """(B, H, W, c) -> (B, G, c, ph * pw)."""
    ph, pw = patch_size
    h, w, c = images.shape[1], images.shape[2], images.shape[3]
    gh, gw = h // ph, w // pw
    x = ops.reshape(images, (-1, gh, ph, gw, pw, c))
    x = ops.transpose(x, (0, 1, 3, 5, 2, 4))
    return ops.reshape(x, (-1, gh * gw, c, ph * pw))


def unpatchify(patches, patch_size, grid_size):
    """(B, G, c, ph * pw) -> (B, H, W, c); the inverse of `patchify`."""
    ph, pw = patch_size
    gh, gw = grid_size
    c = patches.shape[2]
    x = ops.reshape(patches, (-1, gh, gw, c, ph, pw))
    x = ops.transpose(x, (0, 1, 4, 2, 5, 3))
    return ops.reshape(x, (-1, gh * ph, gw * pw, c))


@keras.saving.register_keras_serializable(package="uvim_keras")
class PatchStem(keras.layers.Layer):
    """Embeds label patches (B, G, c, P) -> (B, G, width); kernel (c, P, width).

    The oracle's label stem: one dense projection of each patch's c
    channels x P pixels (e.g. one-hot classes), y = einsum(x, kernel) +
    bias, with a LeCun-normal `kernel` (c, P, width) and a zero `bias`
    (width,). c and P are taken from the input when the layer is built; the
    input is cast to the compute dtype.

    Args:
      width: int. Output channels per token.
      **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> stem = PatchStem(width=32)
    >>> y = stem(keras.ops.zeros((2, 16, 7, 64)))  # (2, 16, 32)
    """

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.width = width

    def build(self, input_shape):
        c, p = input_shape[-2], input_shape[-1]
        self.kernel = self.add_weight(
            name="kernel", shape=(c, p, self.width),
            initializer=keras.initializers.LecunNormal(),
        )
        self.bias = self.add_weight(name="bias", shape=(self.width,), initializer="zeros")
        self.built = True

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        return ops.einsum("bgcp,cpw->bgw", x, self.kernel) + self.bias

    def get_config(self):
        return {**super().get_config(), "width": self.width}


@keras.saving.register_keras_serializable(package="uvim_keras")
class PatchHead(keras.layers.Layer):
    """Per-token head (B, G, width) -> logits (B, G, channels, P).

    The base model's output head: every token's width is projected to the
    logits of its patch, `kernel` (width, channels, P) and `bias`
    (channels, P); `unpatchify` lays them out as an image. big_vision
    zero-initialises these kernels (`head_zeroinit`); so do we by default.

    Args:
      channels: int. Logit channels per pixel (e.g. the classes of a label
        key).
      patch_pixels: int. Pixels per patch, P = ph * pw.
      zero_init: bool. Zero-initialise the kernel (big_vision's
        `head_zeroinit`); False: LeCun normal. Defaults to `True`.
      **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> head = PatchHead(channels=7, patch_pixels=64)
    >>> y = head(keras.ops.zeros((2, 16, 32)))  # (2, 16, 7, 64)
    """

    def __init__(self, channels, patch_pixels, zero_init=True, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.patch_pixels = patch_pixels
        self.zero_init = zero_init

    def build(self, input_shape):
        init = "zeros" if self.zero_init else keras.initializers.LecunNormal()
        self.kernel = self.add_weight(
            name="kernel", shape=(input_shape[-1], self.channels, self.patch_pixels),
            initializer=init,
        )
        self.bias = self.add_weight(
            name="bias", shape=(self.channels, self.patch_pixels), initializer="zeros"
        )
        self.built = True

    def call(self, x):
        return ops.einsum("bgw,wcp->bgcp", x, self.kernel) + self.bias

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "patch_pixels": self.patch_pixels,
            "zero_init": self.zero_init,
        }
