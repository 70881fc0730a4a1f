"""The one place with backend-specific code: compiling inference functions,
per-example random numbers inside a compiled function, and the op swaps
that make Keras' ONNX export run in onnxruntime (`onnx_compatible_ops`).

`compile_stateless(layer, fn)` returns a callable equal to `fn(*args)` that is
compiled on the active backend:

* jax: `jax.jit`, with the layer's variables passed as arguments through a
  `keras.StatelessScope` (so weights are not baked in as constants and later
  weight updates are seen);
* tensorflow: `tf.function`, variables captured by reference; XLA-compiled
  (`jit_compile=True`) on a GPU and, on the CPU, for layers whose variables
  hold at most `TF_CPU_XLA_MAX_BYTES`: TensorFlow's XLA CPU backend decodes
  small models several times faster than TF's own kernels but large ones
  several times slower (benchmarks/README.md, "XLA for TensorFlow's decoding");
* torch: run eagerly under `torch.no_grad()` (`torch.compile` on CPU costs far
  more compile time than a UViM decode takes).

Arguments that change the traced program (e.g. sampling settings) must be
bound into `fn` by the caller; cache one compiled callable per setting
(`CompiledFunctions`). A callable compiles again by itself when the layer's
variables change (quantization, LoRA).

`uniform_per_seed(seeds, shape)` draws, for each int seed of a tensor, what
`keras.random.uniform(shape, seed=int(seed))` draws, also where the seeds are
traced values (Keras' own functions take a Python int seed only).
"""

import contextlib

import keras
import numpy as np
from keras import ops


#: On the CPU, TensorFlow compiles with XLA only layers whose variables hold
#: at most this many bytes (the measured crossover lies between LMs of 15
#: and 117 MiB of variables).
TF_CPU_XLA_MAX_BYTES = 16 * 2**20


class CompiledFunctions:
    """A cache of compiled functions by key, kept on a model.

    A plain object, not a dict: a dict attribute with tuple keys makes a
    model unsaveable as a TF SavedModel (`model.export`), whose object graph
    tracks dict attributes.
    """

    def __init__(self):
        self._functions = {}

    def get(self, key, make):
        """The function stored under `key`, made by `make()` on first use."""
        if key not in self._functions:
            self._functions[key] = make()
        return self._functions[key]


def compile_stateless(layer, fn):
    """`fn` compiled on the active backend (see the module docstring).

    The compiled program is made again whenever the layer's variables change
    (`quantize`, `enable_lora`, ... replace or add variables), so it never
    runs with weights the layer no longer has.
    """
    compiled = {}

    def call(*args):
        variables = list(layer.variables)
        signature = tuple(id(v) for v in variables)
        if signature not in compiled:
            compiled.clear()  # the old variables are gone for good
            compiled[signature] = _compile(variables, fn)
        return compiled[signature](*args)

    return call


def _compile(variables, fn):
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def pure(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn(*args)

        jitted = jax.jit(pure)
        return lambda *args: jitted([v.value for v in variables], *args)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, reduce_retracing=True, jit_compile=_tf_xla(variables))
    if backend == "torch":
        import torch

        def no_grad(*args):
            with torch.no_grad():
                return fn(*args)

        return no_grad
    return fn


def _tf_xla(variables):
    """Whether TensorFlow should XLA-compile a function of these variables."""
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        return True
    size = sum(int(np.prod(v.shape)) * v.value.dtype.size for v in variables)
    return size <= TF_CPU_XLA_MAX_BYTES


def uniform_per_seed(seeds, shape, minval=0.0, maxval=1.0):
    """(N, *shape) float32 uniform numbers; row i equals
    `keras.random.uniform(shape, minval, maxval, seed=int(seeds[i]))`.

    `seeds` is an int tensor (N,) of non-negative 31-bit seeds, possibly a
    traced value inside a compiled function (jax, tensorflow); torch runs
    eagerly and reads them. One exception: inside an XLA-compiled TensorFlow
    function, TF's Philox takes a traced seed differently, so the rows are
    another (still fixed, per-seed) stream than Keras' eager draw.
    """
    backend = keras.backend.backend()
    shape = tuple(shape)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def draw(seed):  # Keras' int seed s is the raw key [s, 0]
            key = jnp.stack([seed, jnp.zeros_like(seed)]).astype("uint32")
            return jax.random.uniform(key, shape, "float32", minval, maxval)

        return jax.vmap(draw)(ops.convert_to_tensor(seeds, "int32"))
    if backend == "tensorflow":
        import tensorflow as tf

        def draw(seed):  # as keras.random on tensorflow: [s, 0] mod (2^31 - 2), int32
            seed = tf.math.floormod(tf.cast(seed, "int64"), tf.int32.max - 1)
            pair = tf.cast(tf.stack([seed, tf.zeros_like(seed)]), "int32")
            # Philox, as Keras' eager draw on CPU: inside XLA "auto_select"
            # would pick another generator.
            return tf.random.stateless_uniform(shape, seed=pair, minval=minval, maxval=maxval,
                                               dtype="float32", alg="philox")

        seeds = tf.convert_to_tensor(seeds, "int32")
        return tf.map_fn(draw, seeds, fn_output_signature=tf.TensorSpec(shape, "float32"))
    values = ops.convert_to_numpy(seeds).astype("int64").reshape(-1)
    return ops.stack([keras.random.uniform(shape, minval, maxval, seed=int(s))
                      for s in values]) if len(values) else ops.zeros((0, *shape))


@contextlib.contextmanager
def onnx_compatible_ops():
    """Swaps two Keras backend ops, while exporting to ONNX, for equal ones
    whose ONNX form onnxruntime runs:

    * argmax of floats (jax, tensorflow): Keras tells -0.0 from 0.0 (-0.0
      counts as the smallest negative normal) with `signbit`, a bitcast:
      ONNX `BitCast`, which onnxruntime 1.32 does not implement. Here the sign
      of a zero is that of 1 / x; the results are the same.
    * take_along_axis (torch): `torch.take_along_dim` has no ONNX form in
      torch's TorchScript exporter (which Keras uses for a dynamic batch);
      `torch.gather` gives the same values where the shapes agree.
    """
    from keras.src import backend as keras_backend

    module = keras_backend.numpy
    replaced = {}
    name = keras.backend.backend()
    if name in ("jax", "tensorflow"):
        replaced["argmax"] = _argmax_without_bitcast(module.argmax, name)
    if name == "torch":
        replaced["take_along_axis"] = _take_along_axis_by_gather(module.take_along_axis)
    saved = {key: getattr(module, key) for key in replaced}
    try:
        for key, fn in replaced.items():
            setattr(module, key, fn)
        yield
    finally:
        for key, fn in saved.items():
            setattr(module, key, fn)


def _argmax_without_bitcast(original, backend):
    def argmax(x, axis=None, keepdims=False):
        x = ops.convert_to_tensor(x)
        dtype = keras.backend.standardize_dtype(x.dtype)
        if "float" not in dtype or len(x.shape) == 0:
            return original(x, axis=axis, keepdims=keepdims)
        if dtype != "float64":
            x = ops.cast(x, "float32")
        # -0.0 -> -tiny, as Keras' argmax does (1 / -0.0 = -inf).
        negative_zero = ops.logical_and(ops.equal(x, 0.0), ops.less(1.0 / x, 0.0))
        x = ops.where(negative_zero, -np.finfo(keras.backend.standardize_dtype(x.dtype)).tiny, x)
        if backend == "jax":
            import jax.numpy as jnp

            return jnp.argmax(x, axis=axis, keepdims=keepdims)
        import tensorflow as tf

        flat = tf.reshape(x, [-1]) if axis is None else x
        y = tf.argmax(flat, axis=0 if axis is None else axis, output_type="int32")
        if keepdims:
            y = tf.reshape(y, [1] * len(x.shape)) if axis is None else tf.expand_dims(y, axis)
        return y

    return argmax


def _take_along_axis_by_gather(original):
    import torch

    def take_along_axis(x, indices, axis=None):
        x, indices = ops.convert_to_tensor(x), ops.convert_to_tensor(indices)
        if axis is None or x.ndim != indices.ndim:
            return original(x, indices, axis=axis)
        axis = axis % x.ndim
        indices = indices.long()
        indices = torch.where(indices < 0, indices + x.shape[axis], indices)
        # As take_along_dim, where only the indices need broadcasting.
        indices = indices.expand(*[-1 if i == axis else n for i, n in enumerate(x.shape)])
        return torch.gather(x, axis, indices)

    return take_along_axis
