"""Patch embeddings and position embeddings (big_vision's ViT stem)."""

import keras
import numpy as np
from keras import ops

from uvim_keras.layers.renamed import renamed_arguments

POSEMB_KINDS = ("learn", "sincos2d")


def sincos2d_posemb(grid_h, grid_w, width, temperature=10000.0):
    """MoCo-v3 2-D sin-cos position embedding, as big_vision computes it.

    Token (y, x) in row-major order gets
    [sin(x w), cos(x w), sin(y w), cos(y w)] with
    w_k = 1 / temperature ** (k / (d - 1)), d = width // 4 (note d - 1).

    Returns a float32 numpy array (1, grid_h * grid_w, width).
    """
    if width % 4:
        raise ValueError(f"sincos2d needs width divisible by 4, got width={width}.")
    y, x = np.mgrid[:grid_h, :grid_w]
    d = width // 4
    omega = 1.0 / temperature ** (np.arange(d) / (d - 1))
    y = y.reshape(-1)[:, None] * omega[None]
    x = x.reshape(-1)[:, None] * omega[None]
    pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return pe[None].astype("float32")


@keras.saving.register_keras_serializable(package="uvim_keras")
@renamed_arguments(kind="posemb")
class PositionEmbedding(keras.layers.Layer):
    """Adds a `learn`ed or fixed `sincos2d` position embedding to tokens.

    Tokens (batch, grid_h * grid_w, width), in row-major grid order, get an
    embedding (1, grid_h * grid_w, width) added. `"learn"`: a weight
    `embedding` initialised normal with stddev 1 / sqrt(width)
    (big_vision's `pos_embedding`); `"sincos2d"`: MoCo-v3's fixed 2-D
    sin-cos embedding (`sincos2d_posemb`, no weights; the width must divide
    by 4). `width` is taken from the input when the layer is built.

    Args:
      posemb: str. `"learn"` or `"sincos2d"` (big_vision's `posemb` values).
        Formerly `kind` (still accepted).
      grid_size: (int, int). The token grid (grid_h, grid_w); a 1-D sequence
        of length L is (1, L).
      **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> pe = PositionEmbedding("sincos2d", grid_size=(4, 4))
    >>> y = pe(keras.ops.zeros((2, 16, 32)))  # (2, 16, 32)
    """

    def __init__(self, posemb, grid_size, **kwargs):
        super().__init__(**kwargs)
        if posemb not in POSEMB_KINDS:
            raise ValueError(f"posemb={posemb!r}; expected one of {POSEMB_KINDS}.")
        self.posemb = posemb
        self.grid_size = tuple(int(g) for g in grid_size)

    def build(self, input_shape):
        width = input_shape[-1]
        n = self.grid_size[0] * self.grid_size[1]
        if self.posemb == "learn":
            self.embedding = self.add_weight(
                name="embedding",
                shape=(1, n, width),
                initializer=keras.initializers.RandomNormal(stddev=float(1 / np.sqrt(width))),
            )
        else:
            self._fixed = sincos2d_posemb(*self.grid_size, width)
        self.built = True

    def call(self, x):
        if self.posemb == "learn":
            return x + ops.cast(self.embedding, x.dtype)
        return x + ops.cast(self._fixed, x.dtype)

    def get_config(self):
        return {**super().get_config(), "posemb": self.posemb, "grid_size": self.grid_size}


@keras.saving.register_keras_serializable(package="uvim_keras")
class PatchEmbedding(keras.layers.Layer):
    """Conv with kernel = stride = patch (VALID), flattened to row-major tokens.

    big_vision's ViT stem (`embedding`): images (batch, H, W, channels) ->
    tokens (batch, (H / ph) * (W / pw), width), row-major over the patch
    grid. The convolution is a `keras.layers.Conv2D` named `conv` (kernel
    (ph, pw, channels, width), with bias). H and W should divide by the
    patch size (a VALID convolution drops the remainder).

    Args:
      width: int. Output channels per token.
      patch_size: (int, int). The patch (ph, pw), also the stride.
      **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> emb = PatchEmbedding(width=32, patch_size=(8, 8))
    >>> tokens = emb(keras.ops.zeros((2, 32, 32, 3)))  # (2, 16, 32)
    """

    def __init__(self, width, patch_size, **kwargs):
        super().__init__(**kwargs)
        self.width = width
        self.patch_size = tuple(int(p) for p in patch_size)
        self.conv = keras.layers.Conv2D(
            width, self.patch_size, strides=self.patch_size, padding="valid",
            name="conv", dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.built = True

    def call(self, images):
        x = self.conv(images)
        return ops.reshape(x, (-1, x.shape[1] * x.shape[2], x.shape[3]))

    def get_config(self):
        return {**super().get_config(), "width": self.width, "patch_size": self.patch_size}
