"""A dense layer whose kernel is stored (units, input_dim)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="uvim_keras")
class Linear(keras.layers.Layer):
    """`y = x @ kernel.T + bias` with the kernel stored (units, input_dim).

    The same function and parameters as `keras.layers.Dense(units)` holding
    `kernel.T`; only the storage differs: (out, in), as `torch.nn.Linear`,
    where Keras' `Dense` and flax's `nn.Dense` store (in, out). The
    big_vision converter transposes (`uvim_keras.convert`).

    Why: the weight gradient of `x @ W` over a (B, T, in) activation
    contracts the token axes of both operands. With an (in, out) kernel, XLA:CPU
    (jax 0.10) folds the transposes into a dot whose left operand is
    column-major; YNNPACK refuses that and Eigen runs it at about half the
    speed. With the kernel (out, in) the gradient is `dy^T x`, already in the
    kernel's layout, and every MLP matmul of a train step runs through
    YNNPACK: a jax LM train step at the shared bench config is about 9%
    faster and a stage-I step about 6% (benchmarks/README.md, finding 9).
    The other backends compute the same `x @ kernel.T` (torch's native
    layout).

    For a loop of small matmuls (autoregressive decoding) transpose the kernel
    once, outside the loop: `kernel_in_out()`.

    Example:
    >>> layer = Linear(64)
    >>> y = layer(keras.ops.ones((2, 5, 32)))  # (2, 5, 64)
    >>> tuple(layer.kernel.shape)
    (64, 32)
    """

    def __init__(self, units, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if int(units) != units or units < 1:
            raise ValueError(f"units={units!r}: expected a positive integer.")
        self.units = int(units)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel = None
        self.bias = None

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                f"{self.name}: the last input dimension must be known, got shape {input_shape}."
            )
        self.kernel = self.add_weight(
            name="kernel", shape=(self.units, int(input_dim)),
            initializer=self._transposed_initializer)
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(self.units,), initializer=self.bias_initializer)
        self.built = True

    def _transposed_initializer(self, shape, dtype=None):
        # Drawn in Dense's (in, out) shape and transposed: the same initial
        # values as `Dense` for the same seed (fan-in/fan-out agree as well).
        return ops.transpose(self.kernel_initializer((shape[1], shape[0]), dtype=dtype))

    def kernel_in_out(self):
        """The kernel as an (input_dim, units) matrix (a transposed copy)."""
        return ops.transpose(self.kernel)

    def call(self, x):
        # On jax the kernel's gradient is transpose(transpose(dot(dy, x))),
        # which XLA simplifies to dot(dy, x), already (units, input_dim).
        # (Not `einsum("...i,oi->...o")`: TensorFlow's einsum gradient for it
        # is two orders of magnitude slower than matmul's.)
        y = ops.matmul(x, ops.transpose(self.kernel))
        return y + self.bias if self.use_bias else y

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }
