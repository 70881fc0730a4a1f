"""ViT building blocks with big_vision's numerics.

big_vision (flax) conventions reproduced here:

* LayerNorm epsilon 1e-6 (Keras' default is 1e-3);
* GELU is the tanh approximation (Keras' default is the exact erf form);
* attention scales the query by 1/sqrt(head_dim), softmax in float32;
* query/key/value kernels have shape (width, heads, head_dim) and the output
  kernel (heads, head_dim, width), the layout flax checkpoints use, so weights
  convert by plain assignment; the MLP kernels are stored (out, in)
  (`Linear`) and convert by transposition.
"""

import keras
from keras import ops

from uvim_keras.layers.linear import Linear

LAYER_NORM_EPSILON = 1e-6


@keras.saving.register_keras_serializable(package="uvim_keras")
class LayerNorm(keras.layers.LayerNormalization):
    """LayerNormalization over the last axis, computed in flax's order.

    Same weights (`gamma`, `beta`) and result as Keras' layer, but the
    statistics are taken as flax does: `x * x` first, then `mean(x)` and
    `mean(x * x)` side by side, `var = max(mean(x * x) - mean(x)^2, 0)`,
    `y = (x - mean) * (rsqrt(var + eps) * gamma) + beta`, in float32.

    Why not Keras' own: with its mean-then-variance order, XLA:CPU fuses the
    residual stream's gradient of *every* block above into each block's
    backward pass (fusions with 20-57 operands, quadratic in depth); squaring
    before the first reduction keeps each block's backward separate, as in
    big_vision. A jax train step of the LM gets about 15% faster
    (benchmarks/README.md); the other backends are unaffected.

    Example:
    >>> norm = LayerNorm(epsilon=1e-6)
    >>> y = norm(keras.ops.ones((2, 5, 32)))
    """

    def __init__(self, epsilon=LAYER_NORM_EPSILON, **kwargs):
        kwargs.pop("axis", None)  # always the last axis
        super().__init__(axis=-1, epsilon=epsilon, **kwargs)
        if not (self.center and self.scale) or self.rms_scaling:
            raise ValueError("LayerNorm always centers and scales (flax's LayerNorm).")

    def call(self, x):
        x = ops.cast(x, "float32")
        squares = ops.square(x)  # before the first reduction: see the docstring
        mean = ops.mean(x, axis=-1, keepdims=True)
        var = ops.maximum(ops.mean(squares, axis=-1, keepdims=True) - ops.square(mean), 0.0)
        scale = ops.rsqrt(var + self.epsilon) * ops.cast(self.gamma, "float32")
        y = (x - mean) * scale + ops.cast(self.beta, "float32")
        return ops.cast(y, self.compute_dtype)


def layer_norm(name):
    """A `LayerNorm` with big_vision's epsilon."""
    return LayerNorm(epsilon=LAYER_NORM_EPSILON, name=name)


def _shape(x):
    return tuple(x.shape)


@keras.saving.register_keras_serializable(package="uvim_keras")
class MlpBlock(keras.layers.Layer):
    """Linear(mlp_dim) -> tanh-GELU -> dropout -> Linear(width).

    The two projections are `Linear` layers (kernels stored (out, in); see
    there why); big_vision's `MlpBlock_0/Dense_0|1` convert by transposition.

    Example:
    >>> block = MlpBlock(mlp_dim=64)
    >>> y = block(keras.ops.ones((2, 5, 32)))  # (2, 5, 32)
    """

    def __init__(self, mlp_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.dense_0 = Linear(mlp_dim, name="dense_0")
        self.dense_1 = None
        self.drop = keras.layers.Dropout(dropout)

    def build(self, input_shape):
        width = input_shape[-1]
        self.dense_0.build(input_shape)
        self.dense_1 = Linear(width, name="dense_1")
        self.dense_1.build(tuple(input_shape[:-1]) + (self.mlp_dim,))
        self.built = True

    def call(self, x, training=None):
        x = keras.activations.gelu(self.dense_0(x), approximate=True)
        x = self.drop(x, training=training)
        return self.dense_1(x)

    def kernels_in_out(self):
        """Both kernels as (in, out) matrices, for `apply_kernels`."""
        return self.dense_0.kernel_in_out(), self.dense_1.kernel_in_out()

    def apply_kernels(self, x, kernels):
        """Inference with `kernels_in_out()` made once outside a decoding loop
        (XLA:CPU would otherwise transpose both kernels at every step)."""
        x = keras.activations.gelu(ops.matmul(x, kernels[0]) + self.dense_0.bias,
                                   approximate=True)
        return ops.matmul(x, kernels[1]) + self.dense_1.bias

    def get_config(self):
        return {**super().get_config(), "mlp_dim": self.mlp_dim, "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="uvim_keras")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head dot-product attention in flax's parameter layout.

    Besides the usual `call(query, value, mask)`, it exposes
    `project_query`, `project_kv` and `attend`, so that a decoder projects
    the image's keys/values once per block (see `DecoderBlock`).

    Example:
    >>> mha = MultiHeadAttention(num_heads=2)
    >>> y = mha(keras.ops.ones((2, 5, 32)))  # self-attention, (2, 5, 32)
    """

    def __init__(self, num_heads, use_bias=True, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.use_bias = use_bias
        self.dropout = dropout
        self.drop = keras.layers.Dropout(dropout)

    def build(self, query_shape, value_shape=None):
        width = query_shape[-1]
        value_width = width if value_shape is None else value_shape[-1]
        if width % self.num_heads:
            raise ValueError(
                f"width={width} must be divisible by num_heads={self.num_heads}."
            )
        heads, head_dim = self.num_heads, width // self.num_heads
        self.head_dim = head_dim
        init = keras.initializers.GlorotUniform()

        def kernel(name, shape):
            return self.add_weight(name=name, shape=shape, initializer=init)

        def bias(name, shape):
            if not self.use_bias:
                return None
            return self.add_weight(name=name, shape=shape, initializer="zeros")

        self.query_kernel = kernel("query_kernel", (width, heads, head_dim))
        self.key_kernel = kernel("key_kernel", (value_width, heads, head_dim))
        self.value_kernel = kernel("value_kernel", (value_width, heads, head_dim))
        self.out_kernel = kernel("out_kernel", (heads, head_dim, width))
        self.query_bias = bias("query_bias", (heads, head_dim))
        self.key_bias = bias("key_bias", (heads, head_dim))
        self.value_bias = bias("value_bias", (heads, head_dim))
        self.out_bias = bias("out_bias", (width,))
        self.built = True

    def _project(self, x, kernel, bias):
        y = ops.einsum("bsw,whd->bshd", x, kernel)
        return y if bias is None else y + bias

    def project_query(self, query):
        q = self._project(query, self.query_kernel, self.query_bias)
        return q / ops.sqrt(ops.cast(self.head_dim, q.dtype))

    def project_kv(self, value):
        """Keys and values (B, S, heads, head_dim) of `value` (B, S, W)."""
        return (
            self._project(value, self.key_kernel, self.key_bias),
            self._project(value, self.value_kernel, self.value_bias),
        )

    def attend(self, q, k, v, attention_mask=None, training=None):
        """Attention of projected queries over projected keys/values.

        `attention_mask` broadcasts to (B, heads, Q, S); True = may attend.
        """
        logits = ops.einsum("bqhd,bshd->bhqs", q, k)
        logits = ops.cast(logits, "float32")
        if attention_mask is not None:
            logits = ops.where(attention_mask, logits, ops.cast(-1e30, logits.dtype))
        weights = ops.cast(ops.softmax(logits, axis=-1), v.dtype)
        weights = self.drop(weights, training=training)
        y = ops.einsum("bhqs,bshd->bqhd", weights, v)
        y = ops.einsum("bqhd,hdw->bqw", y, self.out_kernel)
        return y if self.out_bias is None else y + self.out_bias

    def call(self, query, value=None, attention_mask=None, training=None):
        value = query if value is None else value
        k, v = self.project_kv(value)
        return self.attend(self.project_query(query), k, v, attention_mask, training)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "use_bias": self.use_bias,
            "dropout": self.dropout,
        }


@keras.saving.register_keras_serializable(package="uvim_keras")
class EncoderBlock(keras.layers.Layer):
    """Pre-LN ViT block: x + MHA(LN(x)), then x + MLP(LN(x)).

    Example:
    >>> block = EncoderBlock(num_heads=2, mlp_dim=64)
    >>> y = block(keras.ops.ones((2, 5, 32)))
    """

    def __init__(self, num_heads, mlp_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.norm_0 = layer_norm("norm_0")
        self.attention = MultiHeadAttention(num_heads, dropout=0.0, name="attention")
        self.norm_1 = layer_norm("norm_1")
        self.mlp = MlpBlock(mlp_dim, dropout=dropout, name="mlp")
        self.drop = keras.layers.Dropout(dropout)

    def build(self, input_shape):
        for layer in (self.norm_0, self.attention, self.norm_1, self.mlp):
            layer.build(input_shape)
        self.built = True

    def call(self, x, training=None):
        y = self.attention(self.norm_0(x), training=training)
        x = x + self.drop(y, training=training)
        y = self.mlp(self.norm_1(x), training=training)
        return x + self.drop(y, training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "dropout": self.dropout,
        }


@keras.saving.register_keras_serializable(package="uvim_keras")
class TransformerEncoder(keras.layers.Layer):
    """`depth` pre-LN encoder blocks followed by a final LayerNorm.

    This is big_vision's `vit.Encoder`; UViM uses it for the oracle, the base
    model and the guiding-code LM's image encoder.

    Example:
    >>> enc = TransformerEncoder(depth=2, num_heads=2, mlp_dim=64)
    >>> y = enc(keras.ops.ones((2, 16, 32)))
    """

    def __init__(self, depth, num_heads, mlp_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.blocks = [
            EncoderBlock(num_heads, mlp_dim, dropout, name=f"block_{i}")
            for i in range(depth)
        ]
        self.final_norm = layer_norm("final_norm")

    def build(self, input_shape):
        for layer in self.blocks + [self.final_norm]:
            layer.build(input_shape)
        self.built = True

    def call(self, x, training=None):
        for block in self.blocks:
            x = block(x, training=training)
        return self.final_norm(x)

    def get_config(self):
        return {
            **super().get_config(),
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "dropout": self.dropout,
        }


@keras.saving.register_keras_serializable(package="uvim_keras")
class DecoderBlock(keras.layers.Layer):
    """Pre-LN decoder block of the guiding-code LM.

    x + SelfAttn(LN1(x), causal) ; x + CrossAttn(LN2(x), encoded) ;
    x + MLP(LN3(x)). Attention projections have no biases (as big_vision's
    `vtt.EncoderDecoderBlock`); the MLP has.

    `decode_step` runs one position with a key/value cache.

    Example:
    >>> block = DecoderBlock(num_heads=2, mlp_dim=64)
    >>> y = block(keras.ops.ones((2, 4, 32)), keras.ops.ones((2, 16, 32)))
    """

    def __init__(self, num_heads, mlp_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.norm_1 = layer_norm("norm_1")
        self.self_attention = MultiHeadAttention(
            num_heads, use_bias=False, dropout=dropout, name="self_attention"
        )
        self.norm_2 = layer_norm("norm_2")
        self.cross_attention = MultiHeadAttention(
            num_heads, use_bias=False, dropout=dropout, name="cross_attention"
        )
        self.norm_3 = layer_norm("norm_3")
        self.mlp = MlpBlock(mlp_dim, dropout=dropout, name="mlp")
        self.drop = keras.layers.Dropout(dropout)

    def build(self, targets_shape, encoded_shape=None):
        encoded_shape = targets_shape if encoded_shape is None else encoded_shape
        for layer in (self.norm_1, self.norm_2, self.norm_3, self.mlp):
            layer.build(targets_shape)
        self.self_attention.build(targets_shape)
        self.cross_attention.build(targets_shape, encoded_shape)
        self.built = True

    def _cross_and_mlp(self, x, enc_k, enc_v, training):
        q = self.cross_attention.project_query(self.norm_2(x))
        y = self.cross_attention.attend(q, enc_k, enc_v, training=training)
        x = x + self.drop(y, training=training)
        return x + self.mlp(self.norm_3(x), training=training)

    def call(self, x, encoded, training=None):
        length = ops.shape(x)[1]
        pos = ops.arange(length)
        causal = ops.expand_dims(pos[:, None] >= pos[None, :], 0)[:, None]
        y = self.self_attention(self.norm_1(x), attention_mask=causal, training=training)
        x = x + self.drop(y, training=training)
        enc_k, enc_v = self.cross_attention.project_kv(encoded)
        return self._cross_and_mlp(x, enc_k, enc_v, training)

    # -- autoregressive decoding ------------------------------------------------
    # The decoding loop works head-major: caches and the image's keys/values
    # are (B, heads, S, head_dim) and the kernels are 2-D matrices made once
    # per call, with the self-attention q|k|v in one matmul. XLA:CPU does not
    # hoist loop-invariant transposes out of a while loop, and the flax-layout
    # einsums above would re-transpose every cache, the image keys/values and
    # two kernels per block at every step (about 20% of `generate`).
    def prepare_decoding(self, encoded):
        """Loop-invariant tensors for `decode_step`, from the encoded image
        (B, S, W): 2-D kernels and the image's head-major keys/values."""
        sa, ca = self.self_attention, self.cross_attention
        width = sa.query_kernel.shape[0]
        hd = sa.num_heads * sa.head_dim

        def matrix(kernel):
            return ops.reshape(kernel, (kernel.shape[0], -1))

        def heads(t):  # (B, S, h * d) -> (B, h, S, d)
            t = ops.reshape(t, (ops.shape(t)[0], t.shape[1], ca.num_heads, ca.head_dim))
            return ops.transpose(t, (0, 2, 1, 3))

        return {
            "qkv_kernel": ops.concatenate(
                [matrix(sa.query_kernel), matrix(sa.key_kernel), matrix(sa.value_kernel)],
                axis=1),
            "out_kernel": ops.reshape(sa.out_kernel, (hd, width)),
            "cross_query_kernel": matrix(ca.query_kernel),
            "cross_out_kernel": ops.reshape(ca.out_kernel, (hd, width)),
            "cross_keys": heads(ops.matmul(encoded, matrix(ca.key_kernel))),
            "cross_values": heads(ops.matmul(encoded, matrix(ca.value_kernel))),
            "mlp_kernels": self.mlp.kernels_in_out(),
        }

    def decode_step(self, x, index, cache_k, cache_v, prepared):
        """One autoregressive step.

        Args:
          x: (B, 1, W) the input at position `index`.
          index: scalar int, the position.
          cache_k, cache_v: (B, heads, L, head_dim) self-attention cache.
          prepared: `prepare_decoding(encoded)`, made once per call.
        Returns:
          (y, cache_k, cache_v) with the caches updated at `index`.
        """
        heads, head_dim = self.num_heads, self.self_attention.head_dim
        batch, hd = ops.shape(x)[0], heads * head_dim

        def split(t):  # (B, 1, h * d) -> (B, h, 1, d): a reshape, no transpose
            return ops.reshape(t, (batch, heads, 1, head_dim))

        scale = ops.sqrt(ops.cast(head_dim, x.dtype))  # as `project_query`
        qkv = ops.matmul(self.norm_1(x), prepared["qkv_kernel"])
        q, k, v = (split(qkv[..., i * hd:(i + 1) * hd]) for i in range(3))
        start = [0, 0, index, 0]
        cache_k = ops.slice_update(cache_k, start, ops.cast(k, cache_k.dtype))
        cache_v = ops.slice_update(cache_v, start, ops.cast(v, cache_v.dtype))
        visible = (ops.arange(ops.shape(cache_k)[2]) <= index)[None, None, None, :]
        y = _attend_heads(q / scale, cache_k, cache_v, visible)
        x = x + ops.matmul(y, prepared["out_kernel"])
        q = split(ops.matmul(self.norm_2(x), prepared["cross_query_kernel"])) / scale
        y = _attend_heads(q, prepared["cross_keys"], prepared["cross_values"])
        x = x + ops.matmul(y, prepared["cross_out_kernel"])
        y = self.mlp.apply_kernels(self.norm_3(x), prepared["mlp_kernels"])
        return x + y, cache_k, cache_v

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "dropout": self.dropout,
        }


def _attend_heads(q, k, v, mask=None):
    """Head-major attention of one query position: q (B, h, 1, d) over
    k, v (B, h, S, d) -> (B, 1, h * d); softmax in float32."""
    logits = ops.cast(ops.einsum("bhqd,bhsd->bhqs", q, k), "float32")
    if mask is not None:
        logits = ops.where(mask, logits, ops.cast(-1e30, logits.dtype))
    weights = ops.cast(ops.softmax(logits, axis=-1), v.dtype)
    y = ops.einsum("bhqs,bhsd->bhqd", weights, v)
    return ops.reshape(y, (ops.shape(y)[0], 1, y.shape[1] * y.shape[3]))
