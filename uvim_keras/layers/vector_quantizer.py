"""Vector quantizer with an EMA dictionary and Linde-Buzo-Gray splitting."""

import keras
from keras import ops

STANDARDIZE_EPSILON = 1e-5


def standardize(x, epsilon=STANDARDIZE_EPSILON):
    """(x - mean) / sqrt(var + eps) over the last axis, var = E[x^2] - E[x]^2.

    This is `jax.nn.standardize`, the parameter-free normalisation UViM applies
    to the oracle's output before quantisation.
    """
    mean = ops.mean(x, axis=-1, keepdims=True)
    var = ops.maximum(ops.mean(ops.square(x), axis=-1, keepdims=True) - ops.square(mean), 0.0)
    return (x - mean) * ops.rsqrt(var + epsilon)


@keras.saving.register_keras_serializable(package="uvim_keras")
class VectorQuantizer(keras.layers.Layer):
    """Maps continuous code vectors to the nearest of `dict_size` codewords.

    Faithful to big_vision's UViM stage-I quantizer:

    * inputs (B, C, D) are standardised (eps 1e-5, no parameters);
    * codewords = L2-normalise(dictionary / counts);
    * code = argmin of |x|^2 - 2 x.e + |e|^2 (in float32, also under mixed
      precision); the output is the codeword with a straight-through
      gradient;
    * in training (and while the layer is trainable) the dictionary follows
      an exponential moving average: counts <- m counts + n_k and
      dictionary <- m dictionary + sum of the (pre-quantisation) vectors
      assigned to k, m = `momentum`; then, while any count is below
      `min_count`, the most used word is copied with multiplicative
      U(1 - perturb, 1 + perturb) noise into the least used slot and both
      words and their counts are halved (Linde-Buzo-Gray splitting). At most
      `dict_size` splits happen per step; the remainder, which only a
      degenerate dictionary can need, continues on the next step.

    `dictionary` and `counts` are non-trainable weights, saved with the model.
    Under `keras.distribution.DataParallel` (JAX) the layer sees the global
    batch, so the statistics are global.

    `call` returns a dict: `bottleneck` (standardised, pre-quantisation),
    `quantized`, `codes` (int32), `codebook_max_ratio` and
    `codebook_zeros_ratio` (usage of the batch). With `commitment_weight` > 0
    the commitment loss mean((x - sg(x_q))^2) is added with `add_loss` in
    training.

    Args:
      dict_size: int. Codewords in the dictionary.
      codeword_dim: int. Dimension D of the codewords (the input's last
        axis).
      momentum: float. EMA momentum m of the dictionary and counts.
        Defaults to `0.995`.
      min_count: float. Words whose EMA count falls below it are replaced
        by splitting the most used word. Defaults to `0.1`.
      perturb: float. Relative noise of a split copy, U(1 - perturb,
        1 + perturb). Defaults to `0.001`.
      commitment_weight: float. Weight of the commitment loss; 0 adds none.
        Defaults to `0.0`.
      seed: int or None. Seed of the splitting noise's `SeedGenerator`.
        Defaults to `None`.
      **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> vq = VectorQuantizer(dict_size=16, codeword_dim=8, seed=0)
    >>> out = vq(keras.random.normal((2, 4, 8)))
    >>> out["codes"].shape
    (2, 4)
    """

    def __init__(
        self,
        dict_size,
        codeword_dim,
        momentum=0.995,
        min_count=0.1,
        perturb=0.001,
        commitment_weight=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dict_size = int(dict_size)
        self.codeword_dim = int(codeword_dim)
        self.momentum = float(momentum)
        self.min_count = float(min_count)
        self.perturb = float(perturb)
        self.commitment_weight = float(commitment_weight)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape=None):
        if input_shape is not None and input_shape[-1] != self.codeword_dim:
            raise ValueError(
                f"VectorQuantizer input last dim is {input_shape[-1]}; "
                f"expected codeword_dim={self.codeword_dim}."
            )
        self.dictionary = self.add_weight(
            name="dictionary",
            shape=(self.dict_size, self.codeword_dim),
            initializer=keras.initializers.RandomNormal(stddev=self.dict_size**-0.5),
            trainable=False,
            dtype="float32",
            autocast=False,  # distances and EMA stay float32 under mixed precision
        )
        self.counts = self.add_weight(
            name="counts", shape=(self.dict_size,), initializer="ones",
            trainable=False, dtype="float32", autocast=False,
        )
        self.built = True

    # -- codebook ---------------------------------------------------------
    def codewords(self):
        """The (dict_size, codeword_dim) unit-norm codewords, float32."""
        e = self.dictionary / self.counts[:, None]
        return e / ops.sqrt(ops.sum(ops.square(e), axis=-1, keepdims=True))

    def lookup(self, codes):
        """Integer codes (B, C) -> codeword vectors (B, C, D)."""
        return ops.take(self.codewords(), ops.cast(codes, "int32"), axis=0)

    def nearest(self, x):
        """Codes (int32) of the nearest codeword for each vector of x (float32)."""
        e = self.codewords()
        dist = (
            ops.sum(ops.square(x), axis=-1, keepdims=True)
            - 2.0 * ops.einsum("...d,kd->...k", x, e)
            + ops.sum(ops.square(e), axis=-1)
        )
        return ops.cast(ops.argmin(dist, axis=-1), "int32")

    # -- forward ----------------------------------------------------------
    def call(self, x, training=None):
        in_dtype = x.dtype
        x = standardize(ops.cast(x, "float32"))
        codes = self.nearest(x)
        x_q = ops.take(self.codewords(), codes, axis=0)
        quantized = x + ops.stop_gradient(x_q - x)

        flat_codes = ops.reshape(codes, (-1,))
        flat_x = ops.stop_gradient(ops.reshape(x, (-1, self.codeword_dim)))
        batch_counts = ops.segment_sum(
            ops.ones_like(flat_codes, dtype="float32"), flat_codes,
            num_segments=self.dict_size,
        )
        total = ops.sum(batch_counts)
        out = {
            "bottleneck": ops.cast(x, in_dtype),
            "quantized": ops.cast(quantized, in_dtype),
            "codes": codes,
            "codebook_max_ratio": ops.max(batch_counts) / total,
            "codebook_zeros_ratio": ops.mean(ops.cast(batch_counts == 0, "float32")),
        }
        if training and self.trainable:
            batch_sums = ops.segment_sum(flat_x, flat_codes, num_segments=self.dict_size)
            self.update_dictionary(batch_counts, batch_sums)
            if self.commitment_weight > 0:
                self.add_loss(
                    self.commitment_weight
                    * ops.mean(ops.square(x - ops.stop_gradient(x_q)))
                )
        return out

    def update_dictionary(self, batch_counts, batch_sums):
        """EMA update with the batch statistics, then LBG splitting."""
        counts = self.counts * self.momentum + batch_counts
        dictionary = self.dictionary * self.momentum + batch_sums
        # Random numbers cannot be drawn inside a JAX while_loop body with a
        # SeedGenerator: draw one vector here; split i uses a shifted window.
        noise = keras.random.uniform(
            (self.dict_size + self.codeword_dim,),
            minval=1.0 - self.perturb, maxval=1.0 + self.perturb,
            seed=self.seed_generator,
        )
        dictionary, counts = split_dead_codewords(
            dictionary, counts, noise, self.min_count, self.codeword_dim
        )
        self.counts.assign(counts)
        self.dictionary.assign(dictionary)

    def get_config(self):
        return {
            **super().get_config(),
            "dict_size": self.dict_size,
            "codeword_dim": self.codeword_dim,
            "momentum": self.momentum,
            "min_count": self.min_count,
            "perturb": self.perturb,
            "commitment_weight": self.commitment_weight,
            "seed": self.seed,
        }


def split_dead_codewords(dictionary, counts, noise, min_count, dim, return_pairs=False):
    """Linde-Buzo-Gray: while a count is < min_count, split the most used word.

    Split i copies row i_max = argmax(counts), times noise[i : i + dim], into
    row i_min = argmin(counts) (first index on ties), sets both counts to
    counts[i_max] / 2 and halves both rows. At most len(counts) splits.

    With `return_pairs`, also returns the (dict_size, 2) int32 array of
    (i_max, i_min) pairs in order, padded with -1 (for tests and debugging).
    """
    k = counts.shape[0]
    rows = ops.arange(k)
    pairs = -ops.ones((k, 2), dtype="int32")

    def cond(i, d, c, p):
        return ops.logical_and(i < k, ops.any(c < min_count))

    def body(i, d, c, p):
        i_max = ops.cast(ops.argmax(c), "int32")
        i_min = ops.cast(ops.argmin(c), "int32")
        factor = ops.slice(noise, (i,), (dim,))
        half = ops.take(c, i_max) / 2.0
        copied = ops.take(d, i_max, axis=0) * factor
        d = ops.where((rows == i_min)[:, None], copied[None, :], d)
        touched = ops.logical_or(rows == i_min, rows == i_max)
        d = ops.where(touched[:, None], d / 2.0, d)
        c = ops.where(touched, half, c)
        p = ops.slice_update(p, (i, 0), ops.reshape(ops.stack([i_max, i_min]), (1, 2)))
        return i + 1, d, c, p

    _, dictionary, counts, pairs = ops.while_loop(
        cond, body, (ops.convert_to_tensor(0, "int32"), dictionary, counts, pairs)
    )
    if return_pairs:
        return dictionary, counts, pairs
    return dictionary, counts
