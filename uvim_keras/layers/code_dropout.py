"""Code dropout: zeroes a random subset of guiding-code words in training."""

import keras
from keras import ops

CODE_DROPOUT_MODES = ("none", "linear", "random")


@keras.saving.register_keras_serializable(package="uvim_keras")
class CodeDropout(keras.layers.Layer):
    """Drops guiding-code words (B, C, D) during training, as UViM does.

    Word i has importance linspace(1, 0, C + 2)[1:-1][i]; each example draws
    one threshold u ~ U[0, 1) and keeps the words with importance > u, i.e. a
    prefix of about (1 - u) C words. In `random` mode that mask is permuted
    independently per example, so a random subset of words is kept. `none`
    (and inference) leave the code untouched. Dropped words are zeroed;
    kept words are not rescaled. No weights; the random state is a
    `keras.random.SeedGenerator` (`seed_generator`).

    Args:
      mode: str. `"none"`, `"linear"` (a prefix of the code is kept) or
        `"random"` (a random subset). Defaults to `"random"`. (`UViMStage1`
        takes it as `code_dropout`.)
      seed: int or None. Seed of the layer's `SeedGenerator`. Defaults to
        `None`.
      **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> drop = CodeDropout("random", seed=0)
    >>> z = drop(keras.ops.ones((2, 16, 8)), training=True)
    """

    def __init__(self, mode="random", seed=None, **kwargs):
        super().__init__(**kwargs)
        if mode not in CODE_DROPOUT_MODES:
            raise ValueError(
                f"code_dropout={mode!r}; expected one of {CODE_DROPOUT_MODES}."
            )
        self.mode = mode
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True  # no weights (Model.quantize skips only built layers)

    def mask(self, batch_size, code_len):
        """The (B, C) keep-mask of one training step, as float32."""
        importance = ops.linspace(1.0, 0.0, code_len + 2)[1:-1]
        thr = keras.random.uniform((batch_size,), seed=self.seed_generator)
        mask = ops.cast(importance[None, :] > thr[:, None], "float32")
        if self.mode == "random":
            noise = keras.random.uniform((batch_size, code_len), seed=self.seed_generator)
            mask = ops.take_along_axis(mask, ops.argsort(noise, axis=-1), axis=-1)
        return mask

    def call(self, x, training=None):
        if not training or self.mode == "none":
            return x
        mask = self.mask(ops.shape(x)[0], x.shape[1])
        return x * ops.cast(mask[:, :, None], x.dtype)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "seed": self.seed}
