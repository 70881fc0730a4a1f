"""ViT building blocks with big_vision's numerics.

big_vision (flax) conventions reproduced here:

* LayerNorm epsilon 1e-6 (Keras' default is 1e-3);
* GELU is the tanh approximation (Keras' default is the exact erf form);
* attention scales the query by 1/sqrt(head_dim), softmax in float32;
* query/key/value kernels have shape (width, heads, head_dim) and the output
  kernel (heads, head_dim, width), the layout flax checkpoints use, so weights
  convert by plain assignment; the MLP kernels are stored (out, in) and
  convert by transposition.

Every projection is a `keras.layers.EinsumDense`, so Keras' quantization
(`model.quantize("int8")`) and LoRA (`enable_lora`) apply to all of them.
Sublayers take their parent's dtype policy (as in keras-hub), so mixed
precision and a quantized model's `DTypePolicyMap` reach every layer.
"""

import keras
import numpy as np
from keras import ops

from uvim_keras.layers.renamed import renamed_arguments

LAYER_NORM_EPSILON = 1e-6


@keras.saving.register_keras_serializable(package="uvim_keras")
class LayerNorm(keras.layers.LayerNormalization):
    """LayerNormalization over the last axis, computed in flax's order.

    Same weights (`gamma`, `beta`) and result as Keras' layer, but the
    statistics are taken as flax does: `x * x` first, then `mean(x)` and
    `mean(x * x)` side by side, `var = max(mean(x * x) - mean(x)^2, 0)`,
    `y = (x - mean) * (rsqrt(var + eps) * gamma) + beta`, in float32, cast
    back to the compute dtype. Inputs are (..., width).

    Why not Keras' own: with its mean-then-variance order, XLA:CPU fuses the
    residual stream's gradient of *every* block above into each block's
    backward pass (fusions whose operand count grows with depth); squaring
    before the first reduction keeps each block's backward separate, as in
    big_vision, and makes a jax train step faster (measured in
    benchmarks/README.md, "LayerNorm"); the other backends are unaffected.

    Args:
      epsilon: float. Added to the variance. Defaults to `1e-6`
        (big_vision's; Keras' default is `1e-3`).
      **kwargs: `keras.layers.LayerNormalization`'s other arguments (`name`,
        `dtype`, ...); `axis` is ignored (always the last axis), and
        `center`, `scale` must stay True and `rms_scaling` False.

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


def layer_norm(name, dtype=None):
    """A `LayerNorm` with big_vision's epsilon."""
    return LayerNorm(epsilon=LAYER_NORM_EPSILON, name=name, dtype=dtype)


def projection(equation, output_shape, bias_axes, name, dtype=None):
    """A `keras.layers.EinsumDense` projection of the transformer blocks.

    Keras' own layer, so `Model.quantize` and `enable_lora` reach every
    transformer kernel. Every axis is named in `equation` (Keras' int8
    quantization does not take ellipsis equations).
    """
    return keras.layers.EinsumDense(
        equation, output_shape=output_shape, bias_axes=bias_axes,
        kernel_initializer="glorot_uniform", name=name, dtype=dtype,
    )


#: MLP projections: kernels stored (out, in), as big_vision's transposed.
MLP_EQUATION = "abi,oi->abo"


@keras.saving.register_keras_serializable(package="uvim_keras")
@renamed_arguments(dropout="dropout_rate")
class MlpBlock(keras.layers.Layer):
    """The transformer MLP: Dense(mlp_dim) -> tanh-GELU -> dropout -> Dense(width).

    big_vision's `MlpBlock`. Both projections are `keras.layers.EinsumDense`
    layers (`dense_0`, `dense_1`) whose kernels are stored (out, in)
    (`MLP_EQUATION`); the big_vision converter transposes flax's (in, out)
    `MlpBlock_0/Dense_0|1`. Why (out, in): on XLA:CPU the weight gradient of
    an (in, out) kernel becomes a dot that its fast matmul library refuses
    (benchmarks/README.md). Inputs are (batch, tokens, width) and the output
    has their shape; `width` is taken from the input when the block is built.

    Args:
      mlp_dim: int. Width of the hidden layer (a positive integer).
      dropout_rate: float. Dropout rate on the hidden activations, in [0, 1).
        Defaults to `0.0`. Formerly `dropout` (still accepted).
      **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> block = MlpBlock(mlp_dim=64)
    >>> y = block(keras.ops.ones((2, 5, 32)))  # (2, 5, 32)
    >>> tuple(block.dense_0.kernel.shape)      # (out, in)
    (64, 32)
    """

    def __init__(self, mlp_dim, dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        if int(mlp_dim) != mlp_dim or mlp_dim < 1:
            raise ValueError(f"mlp_dim={mlp_dim!r}: expected a positive integer.")
        self.mlp_dim = int(mlp_dim)
        self.dropout_rate = dropout_rate
        self.dense_0 = projection(MLP_EQUATION, (None, self.mlp_dim), "o", "dense_0",
                                  self.dtype_policy)
        self.dense_1 = None
        self.dropout = keras.layers.Dropout(dropout_rate, dtype=self.dtype_policy)

    def build(self, input_shape):
        width = input_shape[-1]
        self.dense_0.build(input_shape)
        self.dense_1 = projection(MLP_EQUATION, (None, width), "o", "dense_1",
                                  self.dtype_policy)
        self.dense_1.build(tuple(input_shape[:-1]) + (self.mlp_dim,))
        self.built = True

    def call(self, x, training=None):
        x = keras.activations.gelu(self.dense_0(x), approximate=True)
        x = self.dropout(x, training=training)
        return self.dense_1(x)

    # -- decoding loops -----------------------------------------------------------
    def decoding_kernels(self, rows=None):
        """Once per decoding call: both kernels as (in, out) matrices (LoRA
        merged), or None when the loop calls the projections as they are:
        when a projection is quantized, or when `rows` (the loop's static
        row count) is 1. A matrix-vector product streams an (out, in) kernel
        as fast as a transposed copy, which would hold the kernels twice;
        with more rows XLA:CPU multiplies (in, out) kernels faster
        (benchmarks/README.md)."""
        quantized = any(d.quantization_mode is not None for d in (self.dense_0, self.dense_1))
        if quantized or (isinstance(rows, int) and rows == 1):
            return None
        return tuple(ops.transpose(d.kernel) for d in (self.dense_0, self.dense_1))

    def decode(self, x, kernels):
        """`call` in inference, with `decoding_kernels()` made before the
        loop (None: the projections run as they are)."""
        if kernels is None:
            return self(x)
        x = keras.activations.gelu(ops.matmul(x, kernels[0]) + self.dense_0.bias,
                                   approximate=True)
        return ops.matmul(x, kernels[1]) + self.dense_1.bias

    def get_config(self):
        return {**super().get_config(), "mlp_dim": self.mlp_dim,
                "dropout_rate": self.dropout_rate}


@keras.saving.register_keras_serializable(package="uvim_keras")
@renamed_arguments(dropout="dropout_rate")
class MultiHeadDotProductAttention(keras.layers.Layer):
    """Multi-head dot-product attention with flax's numerics.

    The projections are `keras.layers.EinsumDense` layers named as in Keras'
    `MultiHeadAttention` (`query`, `key`, `value`, `attention_output`) with
    the same kernel layouts, which are also flax's: query/key/value
    (width, heads, head_dim), output (heads, head_dim, width). The query is
    scaled by 1/sqrt(head_dim) and the softmax taken in float32, as
    big_vision does.

    `call(query, value=None, attention_mask=None)`: query (B, Q, width),
    value (B, S, width) (default: the query, i.e. self-attention), an
    optional boolean mask broadcastable to (B, heads, Q, S) (True = may
    attend) -> (B, Q, width). Besides `call` it exposes `project_query`,
    `project_kv` and `attend`, so that a decoder projects the image's
    keys/values once per call (see `DecoderBlock`). `width` is taken from
    the query when the layer is built; head_dim = width / num_heads.

    Args:
      num_heads: int. Number of attention heads; the width must divide by it.
      use_bias: bool. Whether the four projections have biases. Defaults to
        `True` (big_vision's ViT; its LM decoder uses `False`).
      dropout_rate: float. Dropout rate on the attention weights, in [0, 1).
        Defaults to `0.0`. Formerly `dropout` (still accepted).
      **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> mha = MultiHeadDotProductAttention(num_heads=2)
    >>> y = mha(keras.ops.ones((2, 5, 32)))  # self-attention, (2, 5, 32)
    >>> tuple(mha.query.kernel.shape)
    (32, 2, 16)
    """

    def __init__(self, num_heads, use_bias=True, dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        if int(num_heads) != num_heads or num_heads < 1:
            raise ValueError(f"num_heads={num_heads!r}: expected a positive integer.")
        self.num_heads = int(num_heads)
        self.use_bias = bool(use_bias)
        self.dropout_rate = dropout_rate
        self.dropout = keras.layers.Dropout(dropout_rate, dtype=self.dtype_policy)
        self.query = self.key = self.value = self.attention_output = None

    def build(self, query_shape, value_shape=None):
        value_shape = query_shape if value_shape is None else value_shape
        width = query_shape[-1]
        if width % self.num_heads:
            raise ValueError(
                f"width={width} must be divisible by num_heads={self.num_heads}."
            )
        heads, head_dim = self.num_heads, width // self.num_heads
        self.head_dim = head_dim
        bias = "de" if self.use_bias else None

        def qkv(name, shape):
            layer = projection("abc,cde->abde", (None, heads, head_dim), bias, name,
                               self.dtype_policy)
            layer.build(shape)
            return layer

        self.query = qkv("query", query_shape)
        self.key = qkv("key", value_shape)
        self.value = qkv("value", value_shape)
        self.attention_output = projection(
            "abcd,cde->abe", (None, width), "e" if self.use_bias else None,
            "attention_output", self.dtype_policy)
        self.attention_output.build((None, None, heads, head_dim))
        self.built = True

    def project_query(self, query):
        """Scaled queries (B, Q, heads, head_dim) of `query` (B, Q, W)."""
        q = self.query(query)
        return q / ops.sqrt(ops.cast(self.head_dim, q.dtype))

    def project_kv(self, value):
        """Keys and values (B, S, heads, head_dim) of `value` (B, S, W)."""
        return self.key(value), self.value(value)

    def attend(self, q, k, v, attention_mask=None, training=None):
        """Attention of projected queries over projected keys/values.

        `attention_mask` broadcasts to (B, heads, Q, S); True = may attend.
        """
        logits = ops.cast(ops.einsum("bqhd,bshd->bhqs", q, k), "float32")
        if attention_mask is not None:
            logits = ops.where(attention_mask, logits, ops.cast(-1e30, logits.dtype))
        weights = ops.cast(ops.softmax(logits, axis=-1), v.dtype)
        weights = self.dropout(weights, training=training)
        return self.attention_output(ops.einsum("bhqs,bshd->bqhd", weights, v))

    def call(self, query, value=None, attention_mask=None, training=None):
        value = query if value is None else value
        k, v = self.project_kv(value)
        return self.attend(self.project_query(query), k, v, attention_mask, training)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "use_bias": self.use_bias,
            "dropout_rate": self.dropout_rate,
        }


@keras.saving.register_keras_serializable(package="uvim_keras")
@renamed_arguments(dropout="dropout_rate")
class EncoderBlock(keras.layers.Layer):
    """Pre-LN ViT encoder block: x + MHA(LN(x)), then x + MLP(LN(x)).

    big_vision's `vit.Encoder1DBlock`: self-attention with biases
    (`attention`), then the MLP (`mlp`), each after a LayerNorm (`norm_0`,
    `norm_1`, epsilon 1e-6) and added to the residual stream. Inputs are
    (batch, tokens, width) and the output has their shape.

    Args:
      num_heads: int. Attention heads; the width must divide by it.
      mlp_dim: int. Hidden width of the MLP.
      dropout_rate: float. Dropout rate of the MLP's hidden activations and
        of both residual branches (not of the attention weights), in
        [0, 1). Defaults to `0.0`. Formerly `dropout` (still accepted).
      **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> block = EncoderBlock(num_heads=2, mlp_dim=64)
    >>> y = block(keras.ops.ones((2, 5, 32)))  # (2, 5, 32)
    """

    def __init__(self, num_heads, mlp_dim, dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout_rate = dropout_rate
        policy = self.dtype_policy
        self.norm_0 = layer_norm("norm_0", policy)
        self.attention = MultiHeadDotProductAttention(
            num_heads, dropout_rate=0.0, name="attention", dtype=policy)
        self.norm_1 = layer_norm("norm_1", policy)
        self.mlp = MlpBlock(mlp_dim, dropout_rate=dropout_rate, name="mlp", dtype=policy)
        self.dropout = keras.layers.Dropout(dropout_rate, dtype=policy)

    def build(self, input_shape):
        for layer in (self.norm_0, self.attention, self.norm_1, self.mlp):
            layer.build(input_shape)
        self.built = True

    def call(self, x, training=None):
        y = self.attention(self.norm_0(x), training=training)
        x = x + self.dropout(y, training=training)
        y = self.mlp(self.norm_1(x), training=training)
        return x + self.dropout(y, training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "dropout_rate": self.dropout_rate,
        }


@keras.saving.register_keras_serializable(package="uvim_keras")
@renamed_arguments(depth="num_layers", dropout="dropout_rate")
class TransformerEncoder(keras.layers.Layer):
    """`num_layers` pre-LN encoder blocks followed by a final LayerNorm.

    This is big_vision's `vit.Encoder`; UViM uses it for the oracle, the base
    model and the guiding-code LM's image encoder. The blocks are
    `EncoderBlock`s named `block_0`, `block_1`, ...; the final LayerNorm is
    `final_norm`. Inputs are (batch, tokens, width) and the output has
    their shape.

    Args:
      num_layers: int. Number of `EncoderBlock`s. Formerly `depth` (still
        accepted).
      num_heads: int. Attention heads per block; the width must divide by it.
      mlp_dim: int. Hidden width of the MLPs.
      dropout_rate: float. Dropout rate of every block (MLP hidden
        activations and residual branches), in [0, 1). Defaults to `0.0`.
        Formerly `dropout` (still accepted).
      **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> enc = TransformerEncoder(num_layers=2, num_heads=2, mlp_dim=64)
    >>> y = enc(keras.ops.ones((2, 16, 32)))  # (2, 16, 32)
    """

    def __init__(self, num_layers, num_heads, mlp_dim, dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout_rate = dropout_rate
        self.blocks = [
            EncoderBlock(num_heads, mlp_dim, dropout_rate, name=f"block_{i}",
                         dtype=self.dtype_policy)
            for i in range(num_layers)
        ]
        self.final_norm = layer_norm("final_norm", self.dtype_policy)

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
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "dropout_rate": self.dropout_rate,
        }


@keras.saving.register_keras_serializable(package="uvim_keras")
@renamed_arguments(dropout="dropout_rate")
class DecoderBlock(keras.layers.Layer):
    """Pre-LN decoder block of the guiding-code LM.

    x + SelfAttn(LN1(x), causal) ; x + CrossAttn(LN2(x), encoded) ;
    x + MLP(LN3(x)). Attention projections have no biases (as big_vision's
    `vtt.EncoderDecoderBlock`); the MLP has. `call(x, encoded)`: x
    (B, L, width) the decoder's stream, encoded (B, S, width) the image
    tokens -> (B, L, width).

    `decode_step` runs one position with a key/value cache; it calls the same
    Keras layers as `call`, so quantized or LoRA-adapted projections decode
    as they train.

    Args:
      num_heads: int. Attention heads; the width must divide by it.
      mlp_dim: int. Hidden width of the MLP.
      dropout_rate: float. Dropout rate of the attention weights, the MLP's
        hidden activations and the attention residual branches, in [0, 1).
        Defaults to `0.0`. Formerly `dropout` (still accepted).
      causal: bool. True (default): position i attends to positions <= i
        only, as an autoregressive decoder needs. False: every position
        attends to every other (the non-autoregressive LM, `GuidingCodeLM(...,
        autoregressive=False)`); such a block has no `decode_step`.
      **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:
    >>> block = DecoderBlock(num_heads=2, mlp_dim=64)
    >>> y = block(keras.ops.ones((2, 4, 32)), keras.ops.ones((2, 16, 32)))
    >>> parallel = DecoderBlock(num_heads=2, mlp_dim=64, causal=False)
    """

    def __init__(self, num_heads, mlp_dim, dropout_rate=0.0, causal=True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(causal, (bool, np.bool_)):
            raise ValueError(f"causal={causal!r}: expected True or False.")
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.dropout_rate = dropout_rate
        self.causal = bool(causal)
        policy = self.dtype_policy
        self.norm_1 = layer_norm("norm_1", policy)
        self.self_attention = MultiHeadDotProductAttention(
            num_heads, use_bias=False, dropout_rate=dropout_rate, name="self_attention",
            dtype=policy,
        )
        self.norm_2 = layer_norm("norm_2", policy)
        self.cross_attention = MultiHeadDotProductAttention(
            num_heads, use_bias=False, dropout_rate=dropout_rate, name="cross_attention",
            dtype=policy,
        )
        self.norm_3 = layer_norm("norm_3", policy)
        self.mlp = MlpBlock(mlp_dim, dropout_rate=dropout_rate, name="mlp", dtype=policy)
        self.dropout = keras.layers.Dropout(dropout_rate, dtype=policy)

    def build(self, x_shape, encoded_shape=None):
        # Named after `call`'s arguments, so Keras builds the block on its first call.
        encoded_shape = x_shape if encoded_shape is None else encoded_shape
        for layer in (self.norm_1, self.norm_2, self.norm_3, self.mlp):
            layer.build(x_shape)
        self.self_attention.build(x_shape)
        self.cross_attention.build(x_shape, encoded_shape)
        self.built = True

    def call(self, x, encoded, training=None):
        mask = None
        if self.causal:
            pos = ops.arange(ops.shape(x)[1])
            mask = ops.expand_dims(pos[:, None] >= pos[None, :], 0)[:, None]
        y = self.self_attention(self.norm_1(x), attention_mask=mask, training=training)
        x = x + self.dropout(y, training=training)
        y = self.cross_attention(self.norm_2(x), encoded, training=training)
        x = x + self.dropout(y, training=training)
        return x + self.mlp(self.norm_3(x), training=training)

    # -- autoregressive decoding ------------------------------------------------
    # The decoding loop works head-major with batch and heads merged: caches
    # and the image's keys/values are (B * heads, S, head_dim). No step
    # transposes a cache (XLA:CPU does not hoist loop-invariant transposes
    # out of a while loop), and a 3-D cache is updated in place where a
    # (B, heads, S, head_dim) one is copied several times a step
    # (benchmarks/README.md). One position's projection,
    # (B, 1, heads, head_dim), becomes (B * heads, 1, head_dim) by a reshape.
    def prepare_decoding(self, encoded):
        """Once per decoding call, from the encoded image (B, S, W): its
        cross-attention keys and values, (B * heads, S, head_dim), and the
        MLP's `decoding_kernels()`."""
        k, v = self.cross_attention.project_kv(encoded)
        batch, length = ops.shape(k)[0], ops.shape(k)[1]

        def merged_heads(t):
            return ops.reshape(ops.transpose(t, (0, 2, 1, 3)), (-1, length, ops.shape(t)[3]))

        return {"cross_kv": (merged_heads(k), merged_heads(v)),
                "mlp_kernels": self.mlp.decoding_kernels(rows=batch)}

    def decode_step(self, x, index, cache_k, cache_v, prepared):
        """One autoregressive step.

        Args:
          x: (B, 1, W) the input at position `index`.
          index: scalar int, the position.
          cache_k, cache_v: (B * heads, L, head_dim) self-attention cache.
          prepared: `prepare_decoding(encoded)`, made once per call.
        Returns:
          (y, cache_k, cache_v) with the caches updated at `index`.
        """
        if not self.causal:
            raise ValueError(
                f"{self.name}: decode_step needs a causal block (causal=True); a block with "
                "causal=False decodes every position at once with `call`.")
        sa, ca = self.self_attention, self.cross_attention
        batch, heads, head_dim = ops.shape(x)[0], self.num_heads, sa.head_dim

        def merged_heads(t):  # (B, 1, h, d) -> (B * h, 1, d): a reshape, no transpose
            return ops.reshape(t, (-1, 1, head_dim))

        def position_major(t):  # the inverse
            return ops.reshape(t, (batch, 1, heads, head_dim))

        h = self.norm_1(x)
        k, v = sa.project_kv(h)
        start = [0, index, 0]
        cache_k = ops.slice_update(cache_k, start, ops.cast(merged_heads(k), cache_k.dtype))
        cache_v = ops.slice_update(cache_v, start, ops.cast(merged_heads(v), cache_v.dtype))
        visible = (ops.arange(ops.shape(cache_k)[1]) <= index)[None, None, :]
        y = _attend_heads(merged_heads(sa.project_query(h)), cache_k, cache_v, visible)
        x = x + sa.attention_output(position_major(y))
        q = merged_heads(ca.project_query(self.norm_2(x)))
        y = _attend_heads(q, *prepared["cross_kv"])
        x = x + ca.attention_output(position_major(y))
        return x + self.mlp.decode(self.norm_3(x), prepared["mlp_kernels"]), cache_k, cache_v

    def get_config(self):
        return {
            **super().get_config(),
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "dropout_rate": self.dropout_rate,
            "causal": self.causal,
        }


def _attend_heads(q, k, v, mask=None):
    """Attention of one query position, batch and heads merged: q (N, 1, d)
    over k, v (N, S, d) -> (N, 1, d); softmax in float32."""
    logits = ops.cast(ops.einsum("nqd,nsd->nqs", q, k), "float32")
    if mask is not None:
        logits = ops.where(mask, logits, ops.cast(-1e30, logits.dtype))
    weights = ops.cast(ops.softmax(logits, axis=-1), v.dtype)
    return ops.einsum("nqs,nsd->nqd", weights, v)
