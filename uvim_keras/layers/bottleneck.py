"""Token-count bottlenecks between the ViT grid and the guiding code.

Two ways, as in big_vision's stage-I model:

* `TokenResize`: the token grid is resized as an image with linear
  interpolation, antialiased when downsampling, exactly as
  `jax.image.resize(method="linear")` does. The 1-D weight matrices are
  computed once in numpy, so every backend applies the same numbers.
* `TokenMixing`: a learned (n_in, n_out) matrix,
  out[b, n, c] = sum_t x[b, t, c] M[t, n].
"""

import keras
import numpy as np
from keras import ops


def linear_resize_matrix(n_in, n_out):
    """(n_in, n_out) weights of jax's antialiased linear resize along one axis.

    Output j samples input coordinate (j + 0.5) / s - 0.5, s = n_out / n_in;
    the triangle kernel is widened by 1 / s when downsampling; the weights of
    each output are normalised to sum to one; samples that fall outside
    [-0.5, n_in - 0.5] get zero weight.
    """
    scale = n_out / n_in
    width = max(1.0 / scale, 1.0)
    centres = (np.arange(n_out) + 0.5) / scale - 0.5
    dist = np.abs(np.arange(n_in)[:, None] - centres[None, :]) / width
    weights = np.maximum(0.0, 1.0 - dist)
    total = weights.sum(axis=0, keepdims=True)
    weights = np.where(total > 0, weights / np.where(total > 0, total, 1), 0)
    inside = (centres >= -0.5) & (centres <= n_in - 0.5)
    return (weights * inside[None, :]).astype("float32")


@keras.saving.register_keras_serializable(package="uvim_keras")
class TokenResize(keras.layers.Layer):
    """Resizes (B, h_in * w_in, C) row-major tokens to (B, h_out * w_out, C).

    The token grid is resized as an image, with `jax.image.resize`'s
    linear interpolation (antialiased when downsampling); the oracle uses it
    to bring the ViT grid to the code's grid and the base model back
    (`bottleneck_resize=True`). No weights: the two 1-D weight matrices
    (`linear_resize_matrix`) are fixed. Equal grids pass the tokens through.

    Args:
      grid_in: (int, int). The input token grid (h_in, w_in).
      grid_out: (int, int). The output token grid (h_out, w_out).
      **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> down = TokenResize((8, 8), (4, 4))
    >>> y = down(keras.ops.ones((2, 64, 16)))  # (2, 16, 16)
    """

    def __init__(self, grid_in, grid_out, **kwargs):
        super().__init__(**kwargs)
        self.grid_in = tuple(int(g) for g in grid_in)
        self.grid_out = tuple(int(g) for g in grid_out)
        self._m_h = linear_resize_matrix(self.grid_in[0], self.grid_out[0])
        self._m_w = linear_resize_matrix(self.grid_in[1], self.grid_out[1])
        self._identity = self.grid_in == self.grid_out

    def call(self, x):
        if self._identity:
            return x
        (hi, wi), (ho, wo) = self.grid_in, self.grid_out
        x = ops.reshape(x, (-1, hi, wi, x.shape[-1]))
        x = ops.einsum("bhwc,hk->bkwc", x, ops.cast(self._m_h, x.dtype))
        x = ops.einsum("bkwc,wl->bklc", x, ops.cast(self._m_w, x.dtype))
        return ops.reshape(x, (-1, ho * wo, x.shape[-1]))

    def get_config(self):
        return {**super().get_config(), "grid_in": self.grid_in, "grid_out": self.grid_out}


@keras.saving.register_keras_serializable(package="uvim_keras")
class TokenMixing(keras.layers.Layer):
    """Learned token-count change (B, n_in, C) -> (B, n_out, C).

    out[b, n, c] = sum_t x[b, t, c] M[t, n] with a learned `matrix` M
    (n_in, n_out), Glorot-uniform initialised: big_vision's
    `bottleneck_downsample` / `bottleneck_upsample`, which the stage-I
    models use with `bottleneck_resize=False`.

    Args:
      n_in: int. Input tokens.
      n_out: int. Output tokens.
      **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> mix = TokenMixing(64, 16)
    >>> y = mix(keras.ops.ones((2, 64, 8)))  # (2, 16, 8)
    """

    def __init__(self, n_in, n_out, **kwargs):
        super().__init__(**kwargs)
        self.n_in = int(n_in)
        self.n_out = int(n_out)

    def build(self, input_shape=None):
        self.matrix = self.add_weight(
            name="matrix", shape=(self.n_in, self.n_out),
            initializer=keras.initializers.GlorotUniform(),
        )
        self.built = True

    def call(self, x):
        return ops.einsum("btc,tn->bnc", x, self.matrix)

    def get_config(self):
        return {**super().get_config(), "n_in": self.n_in, "n_out": self.n_out}
