"""The FID Inception network in Keras 3: pytorch-fid's port of TF's 2015 graph.

FID is defined with the Inception-v3 graph of TensorFlow's
``inception-2015-12-05`` release (TF-GAN, TTUR), which pytorch-fid ships as
``pt_inception-2015-12-05-6726825d.pth``. It is torchvision's Inception-v3
layout (every conv without bias, then BatchNorm with eps = 0.001, then ReLU)
with pytorch-fid's changes (``FIDInceptionA/C/E_1/E_2``):

* the average pools of the A, C and first E blocks (``Mixed_5b-d``,
  ``Mixed_6b-e``, ``Mixed_7b``) leave the zero padding out of the average
  (``count_include_pad=False``, TF's SAME average pool);
* the last E block (``Mixed_7c``) max-pools its pool branch instead;
* a 1008-way classifier, which FID features do not use.

The input handling is pytorch-fid's ``InceptionV3(resize_input=True,
normalize_input=True)``: images in [0, 1] are resized to 299 x 299 with
``F.interpolate(mode="bilinear", align_corners=False)`` (no antialiasing,
`TorchBilinearResize`), mapped to [-1, 1], and the 2048-d features are the
global average pool after ``Mixed_7c``. Layers work in NHWC; every
Conv2D / BatchNormalization is named after its torch module, with "__" for
"." (``Mixed_5b__branch1x1__conv`` is ``Mixed_5b.branch1x1.conv``), which is
how `fid_inception_weights` maps the torch state dict onto the model.
"""

import keras
import numpy as np
from keras import layers
from keras import ops

INPUT_SIZE = 299
FEATURE_DIM = 2048
BATCHNORM_EPSILON = 1e-3


def bilinear_resize_matrix(in_size, out_size):
    """(out_size, in_size) weights of torch's bilinear, align_corners=False.

    Row ``i`` reads the source position ``max((i + 0.5) * in/out - 0.5, 0)``
    and interpolates linearly between its floor and the next pixel (clamped
    at the last one), as ``F.interpolate(..., mode="bilinear",
    align_corners=False)`` without antialiasing does, also when shrinking.
    The position is computed as torch's compiled kernels do, in float32
    with one rounding (a fused multiply-add): exactly torch's weights, where
    float64 positions would differ from them by up to ~3e-5 near pixel 300.

    Example:

    >>> bilinear_resize_matrix(2, 4)
    array([[1.  , 0.  ],
           [0.75, 0.25],
           [0.25, 0.75],
           [0.  , 1.  ]], dtype=float32)
    """
    in_size, out_size = int(in_size), int(out_size)
    if in_size < 1 or out_size < 1:
        raise ValueError(
            f"in_size, out_size: got {in_size}, {out_size}; expected "
            "positive sizes")
    f32 = np.float32
    if in_size == out_size:
        return np.eye(out_size, dtype=f32)
    scale = f32(in_size) / f32(out_size)
    centres = np.arange(out_size, dtype=f32) + f32(0.5)
    # scale * centre - 0.5 is exact in float64; one rounding = float32 FMA.
    source = (np.float64(scale) * centres.astype(np.float64) - 0.5).astype(f32)
    source = np.maximum(source, f32(0.0))
    low = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = np.clip(source - low.astype(f32), f32(0.0), f32(1.0))
    weights = np.zeros((out_size, in_size), f32)
    rows = np.arange(out_size)
    np.add.at(weights, (rows, low), f32(1.0) - frac)
    np.add.at(weights, (rows, high), frac)
    return weights


@keras.saving.register_keras_serializable(package="uvim_keras")
class TorchBilinearResize(layers.Layer):
    """Bilinear resize of NHWC images exactly as pytorch-fid resizes.

    Computes ``F.interpolate(x, size, mode="bilinear", align_corners=False)``
    (half-pixel centres, no antialiasing when shrinking) as two
    interpolation-matrix products (`bilinear_resize_matrix`), so the result
    is the same on every backend. Input height and width must be known
    when the layer is called (they are in eager calls and under jit).

    Example:

    >>> import numpy as np
    >>> resize = TorchBilinearResize((4, 4))
    >>> tuple(resize(np.ones((1, 2, 3, 1), "float32")).shape)
    (1, 4, 4, 1)

    Args:
        size: (height, width) of the output.
    """

    def __init__(self, size=(INPUT_SIZE, INPUT_SIZE), **kwargs):
        super().__init__(**kwargs)
        size = tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(
                f"size: got {size}; expected (height, width), both positive")
        self.size = size

    def call(self, images):
        height, width = images.shape[1], images.shape[2]
        if height is None or width is None:
            raise ValueError(
                f"images: got shape {tuple(images.shape)}; expected a known "
                "height and width when TorchBilinearResize is called")
        x = images
        if height != self.size[0]:
            rows = ops.convert_to_tensor(
                bilinear_resize_matrix(height, self.size[0]),
                dtype=self.compute_dtype)
            x = ops.einsum("oh,bhwc->bowc", rows, x)
        if width != self.size[1]:
            cols = ops.convert_to_tensor(
                bilinear_resize_matrix(width, self.size[1]),
                dtype=self.compute_dtype)
            x = ops.einsum("ow,bhwc->bhoc", cols, x)
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "size": list(self.size)}


def keras_name(torch_name):
    """Keras layer name of a torch module ("." is "__": torch's backend
    refuses dots in names)."""
    return torch_name.replace(".", "__")


def _conv_bn(x, filters, kernel_size, name, strides=1, padding="valid"):
    """torchvision's BasicConv2d: conv (no bias), BatchNorm(eps 1e-3), ReLU.

    Stride-1 convs with torch padding ``(k - 1) // 2`` are Keras "same".
    The weights are loaded afterwards, so they start at zero (cheap to
    build: no random initialisation).
    """
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding=padding,
                      use_bias=False, kernel_initializer="zeros",
                      dtype="float32", name=keras_name(f"{name}.conv"))(x)
    x = layers.BatchNormalization(epsilon=BATCHNORM_EPSILON, dtype="float32",
                                  name=keras_name(f"{name}.bn"))(x)
    return layers.ReLU(dtype="float32", name=keras_name(f"{name}.relu"))(x)


def _average_pool(x, name):
    # Keras' SAME average pool leaves the padding out of the count on every
    # backend: torch's count_include_pad=False (checked in the tests).
    return layers.AveragePooling2D(3, strides=1, padding="same",
                                   dtype="float32", name=keras_name(name))(x)


def _concat(branches, name):
    return layers.Concatenate(axis=-1, dtype="float32",
                              name=keras_name(name))(branches)


def _block_a(x, pool_features, name):
    b1 = _conv_bn(x, 64, 1, f"{name}.branch1x1")
    b5 = _conv_bn(x, 48, 1, f"{name}.branch5x5_1")
    b5 = _conv_bn(b5, 64, 5, f"{name}.branch5x5_2", padding="same")
    b3 = _conv_bn(x, 64, 1, f"{name}.branch3x3dbl_1")
    b3 = _conv_bn(b3, 96, 3, f"{name}.branch3x3dbl_2", padding="same")
    b3 = _conv_bn(b3, 96, 3, f"{name}.branch3x3dbl_3", padding="same")
    bp = _average_pool(x, f"{name}.avg_pool")
    bp = _conv_bn(bp, pool_features, 1, f"{name}.branch_pool")
    return _concat([b1, b5, b3, bp], name)


def _block_b(x, name):
    b3 = _conv_bn(x, 384, 3, f"{name}.branch3x3", strides=2)
    bd = _conv_bn(x, 64, 1, f"{name}.branch3x3dbl_1")
    bd = _conv_bn(bd, 96, 3, f"{name}.branch3x3dbl_2", padding="same")
    bd = _conv_bn(bd, 96, 3, f"{name}.branch3x3dbl_3", strides=2)
    bp = layers.MaxPooling2D(3, strides=2, dtype="float32",
                             name=keras_name(f"{name}.max_pool"))(x)
    return _concat([b3, bd, bp], name)


def _block_c(x, channels_7x7, name):
    c7 = channels_7x7
    b1 = _conv_bn(x, 192, 1, f"{name}.branch1x1")
    b7 = _conv_bn(x, c7, 1, f"{name}.branch7x7_1")
    b7 = _conv_bn(b7, c7, (1, 7), f"{name}.branch7x7_2", padding="same")
    b7 = _conv_bn(b7, 192, (7, 1), f"{name}.branch7x7_3", padding="same")
    bd = _conv_bn(x, c7, 1, f"{name}.branch7x7dbl_1")
    bd = _conv_bn(bd, c7, (7, 1), f"{name}.branch7x7dbl_2", padding="same")
    bd = _conv_bn(bd, c7, (1, 7), f"{name}.branch7x7dbl_3", padding="same")
    bd = _conv_bn(bd, c7, (7, 1), f"{name}.branch7x7dbl_4", padding="same")
    bd = _conv_bn(bd, 192, (1, 7), f"{name}.branch7x7dbl_5", padding="same")
    bp = _average_pool(x, f"{name}.avg_pool")
    bp = _conv_bn(bp, 192, 1, f"{name}.branch_pool")
    return _concat([b1, b7, bd, bp], name)


def _block_d(x, name):
    b3 = _conv_bn(x, 192, 1, f"{name}.branch3x3_1")
    b3 = _conv_bn(b3, 320, 3, f"{name}.branch3x3_2", strides=2)
    b7 = _conv_bn(x, 192, 1, f"{name}.branch7x7x3_1")
    b7 = _conv_bn(b7, 192, (1, 7), f"{name}.branch7x7x3_2", padding="same")
    b7 = _conv_bn(b7, 192, (7, 1), f"{name}.branch7x7x3_3", padding="same")
    b7 = _conv_bn(b7, 192, 3, f"{name}.branch7x7x3_4", strides=2)
    bp = layers.MaxPooling2D(3, strides=2, dtype="float32",
                             name=keras_name(f"{name}.max_pool"))(x)
    return _concat([b3, b7, bp], name)


def _split_3x3(x, prefix):
    """The (1, 3) and (3, 1) halves of an E block branch, concatenated."""
    a = _conv_bn(x, 384, (1, 3), f"{prefix}a", padding="same")
    b = _conv_bn(x, 384, (3, 1), f"{prefix}b", padding="same")
    return _concat([a, b], f"{prefix}.concat")


def _block_e(x, pool, name):
    """E block; `pool` "avg" (FIDInceptionE_1) or "max" (FIDInceptionE_2)."""
    b1 = _conv_bn(x, 320, 1, f"{name}.branch1x1")
    b3 = _conv_bn(x, 384, 1, f"{name}.branch3x3_1")
    b3 = _split_3x3(b3, f"{name}.branch3x3_2")
    bd = _conv_bn(x, 448, 1, f"{name}.branch3x3dbl_1")
    bd = _conv_bn(bd, 384, 3, f"{name}.branch3x3dbl_2", padding="same")
    bd = _split_3x3(bd, f"{name}.branch3x3dbl_3")
    if pool == "avg":
        bp = _average_pool(x, f"{name}.avg_pool")
    else:
        bp = layers.MaxPooling2D(3, strides=1, padding="same",
                                 dtype="float32",
                                 name=keras_name(f"{name}.max_pool"))(x)
    bp = _conv_bn(bp, 192, 1, f"{name}.branch_pool")
    return _concat([b1, b3, bd, bp], name)


def fid_inception_v3(resize_input=True, normalize_input=True,
                     name="fid_inception_v3"):
    """The FID Inception network (random weights) as a Keras Functional model.

    Maps NHWC RGB images to the (B, 2048) pool features FID is computed
    from. Load pytorch-fid's weights with
    `fid_inception_weights.load_fid_inception` (or build and load in one step
    with `FIDInceptionFeatureExtractor`).

    Example:

    >>> model = fid_inception_v3()                        # doctest: +SKIP
    >>> model(np.zeros((2, 64, 64, 3), "float32")).shape  # doctest: +SKIP
    (2, 2048)

    Args:
        resize_input: resize any input to 299 x 299 as pytorch-fid does
            (`TorchBilinearResize`). With False, inputs are used as they are
            (at least 75 x 75).
        normalize_input: map inputs from [0, 1] to [-1, 1] (``2 x - 1``);
            with False, inputs must already be in [-1, 1].
        name: model name.

    Returns:
        A `keras.Model` with input (B, H, W, 3) float32 and output (B, 2048).
    """
    inputs = keras.Input((None, None, 3), dtype="float32", name="images")
    x = inputs
    if resize_input:
        x = TorchBilinearResize((INPUT_SIZE, INPUT_SIZE), dtype="float32",
                                name="resize")(x)
    if normalize_input:
        x = layers.Rescaling(2.0, offset=-1.0, dtype="float32",
                             name="normalize")(x)
    x = _conv_bn(x, 32, 3, "Conv2d_1a_3x3", strides=2)
    x = _conv_bn(x, 32, 3, "Conv2d_2a_3x3")
    x = _conv_bn(x, 64, 3, "Conv2d_2b_3x3", padding="same")
    x = layers.MaxPooling2D(3, strides=2, dtype="float32", name="maxpool1")(x)
    x = _conv_bn(x, 80, 1, "Conv2d_3b_1x1")
    x = _conv_bn(x, 192, 3, "Conv2d_4a_3x3")
    x = layers.MaxPooling2D(3, strides=2, dtype="float32", name="maxpool2")(x)
    x = _block_a(x, 32, "Mixed_5b")
    x = _block_a(x, 64, "Mixed_5c")
    x = _block_a(x, 64, "Mixed_5d")
    x = _block_b(x, "Mixed_6a")
    for block, channels_7x7 in (("Mixed_6b", 128), ("Mixed_6c", 160),
                                ("Mixed_6d", 160), ("Mixed_6e", 192)):
        x = _block_c(x, channels_7x7, block)
    x = _block_d(x, "Mixed_7a")
    x = _block_e(x, "avg", "Mixed_7b")
    x = _block_e(x, "max", "Mixed_7c")
    features = layers.GlobalAveragePooling2D(dtype="float32",
                                             name="avgpool")(x)
    return keras.Model(inputs, features, name=name)


BATCHNORM_FIELDS = ("weight", "bias", "running_mean", "running_var")


def torch_modules(model):
    """{torch module name: Keras layer} of the Conv2D / BatchNormalization
    layers of `model`, e.g. ``"Mixed_5b.branch1x1.conv"``."""
    return {layer.name.replace("__", "."): layer for layer in model.layers
            if isinstance(layer, (layers.Conv2D, layers.BatchNormalization))}


def torch_state_dict_shapes(model):
    """{torch state-dict key: torch shape} of every weight of `model`.

    Conv kernels are (out, in, kh, kw) in torch and (kh, kw, in, out) in
    Keras; a BatchNorm has weight, bias, running_mean and running_var.

    Example:

    >>> shapes = torch_state_dict_shapes(fid_inception_v3())  # doctest: +SKIP
    >>> shapes["Conv2d_1a_3x3.conv.weight"]                   # doctest: +SKIP
    (32, 3, 3, 3)
    """
    shapes = {}
    for module, layer in torch_modules(model).items():
        if isinstance(layer, layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            shapes[f"{module}.weight"] = (cout, cin, kh, kw)
        else:
            for field in BATCHNORM_FIELDS:
                shapes[f"{module}.{field}"] = tuple(layer.gamma.shape)
    return shapes
