"""ViT building blocks with big_vision's numerics.

big_vision (flax) conventions reproduced here:

* LayerNorm epsilon 1e-6 (Keras' default is 1e-3);
* GELU is the tanh approximation (Keras' default is the exact erf form);
* attention scales the query by 1/sqrt(head_dim), softmax in float32;
* query/key/value kernels have shape (width, heads, head_dim) and the output
  kernel (heads, head_dim, width), the layout flax checkpoints use, so weights
  convert by plain assignment.
"""

import keras
from keras import ops

LAYER_NORM_EPSILON = 1e-6


def layer_norm(name):
    """A LayerNormalization with big_vision's epsilon."""
    return keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=name)


def _shape(x):
    return tuple(x.shape)


@keras.saving.register_keras_serializable(package="uvim_keras")
class MlpBlock(keras.layers.Layer):
    """Dense(mlp_dim) -> tanh-GELU -> dropout -> Dense(width).

    Example:
    >>> block = MlpBlock(mlp_dim=64)
    >>> y = block(keras.ops.ones((2, 5, 32)))  # (2, 5, 32)
    """

    def __init__(self, mlp_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.dense_0 = keras.layers.Dense(mlp_dim, name="dense_0")
        self.dense_1 = None
        self.drop = keras.layers.Dropout(dropout)

    def build(self, input_shape):
        width = input_shape[-1]
        self.dense_0.build(input_shape)
        self.dense_1 = keras.layers.Dense(width, name="dense_1")
        self.dense_1.build(tuple(input_shape[:-1]) + (self.mlp_dim,))
        self.built = True

    def call(self, x, training=None):
        x = self.dense_0(x)
        x = keras.activations.gelu(x, approximate=True)
        x = self.drop(x, training=training)
        return self.dense_1(x)

    def get_config(self):
        return {**super().get_config(), "mlp_dim": self.mlp_dim, "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="uvim_keras")
class MultiHeadAttention(keras.layers.Layer):
    """Multi-head dot-product attention in flax's parameter layout.

    Besides the usual `call(query, value, mask)`, it exposes `project_kv`
    and `attend` so that decoders can cache keys/values (see
    `DecoderBlock.decode_step`).

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

    def decode_step(self, x, index, cache_k, cache_v, enc_k, enc_v):
        """One autoregressive step.

        Args:
          x: (B, 1, W) the input at position `index`.
          index: scalar int, the position.
          cache_k, cache_v: (B, L, heads, head_dim) self-attention cache.
          enc_k, enc_v: cross-attention keys/values, projected once per call.
        Returns:
          (y, cache_k, cache_v) with the caches updated at `index`.
        """
        h = self.norm_1(x)
        k, v = self.self_attention.project_kv(h)
        start = [0, index, 0, 0]
        cache_k = ops.slice_update(cache_k, start, ops.cast(k, cache_k.dtype))
        cache_v = ops.slice_update(cache_v, start, ops.cast(v, cache_v.dtype))
        visible = ops.arange(ops.shape(cache_k)[1]) <= index
        y = self.self_attention.attend(
            self.self_attention.project_query(h), cache_k, cache_v,
            attention_mask=visible[None, None, None, :],
        )
        x = x + y
        return self._cross_and_mlp(x, enc_k, enc_v, False), cache_k, cache_v

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "dropout": self.dropout,
        }
